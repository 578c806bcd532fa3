"""Tokenizers, text encoders and VAEs built in memory, shared by every demo model.

Nothing here touches the network: tokenizers come from a byte-level vocabulary (no vocab files,
no sentencepiece, no hub), and models are built from configs with random weights (the caller
seeds torch first, so the same model id gives the same weights on every machine).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def clip_tokenizer(words: Iterable[str] = (), max_length: int = 77) -> Any:
    """Byte-level CLIP BPE; each of ``words`` also gets a merge chain that makes it one token."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's 256 byte stand-ins

    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols)]
    vocab = {token: index for index, token in enumerate(tokens)}
    merges: dict[tuple[str, str], None] = {}  # in order, without repeats
    for word in words:
        current, *rest = [*word[:-1], word[-1] + "</w>"]
        for part in rest:
            merges[current, part] = None
            current += part
            vocab.setdefault(current, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(merges), model_max_length=max_length)


def t5_tokenizer(words: Iterable[str] = (), lowercase: bool = False) -> Any:
    """A unigram T5 tokenizer: characters for anything, one high-scoring piece per word of ``words``."""
    from transformers import T5Tokenizer

    scores: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -2.0}
    scores |= {chr(code): -5.0 for code in range(32, 127)}
    scores |= {"▁" + chr(code): -4.0 for code in range(33, 127)}
    scores |= {"▁" + word: -1.0 for word in words}
    tok = T5Tokenizer(vocab=list(scores.items()), extra_ids=0)
    if lowercase:
        set_lowercase(tok)
    return tok


def set_lowercase(tok: Any) -> None:
    """Lowercase before tokenizing. T5Tokenizer rebuilds its backend from the vocabulary on load,
    dropping a saved normalizer, so a loaded tokenizer needs this again."""
    from tokenizers import normalizers

    tok.backend_tokenizer.normalizer = normalizers.Lowercase()


def clip_config(
    tok: Any, width: int, layers: int, heads: int, max_positions: int, projection: int | None = None
) -> Any:
    """A tiny CLIP text config for ``tok``; dropout 0 so a seed gives one image."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        projection_dim=projection or width,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attention_dropout=0.0,
        dropout=0.0,
    )


def clip_text_encoder(tok: Any, width: int, layers: int, heads: int, max_positions: int) -> Any:
    from transformers import CLIPTextModel

    return CLIPTextModel(clip_config(tok, width, layers, heads, max_positions))


def t5_text_encoder(tok: Any, width: int, layers: int, heads: int, umt5: bool = False, **extra: Any) -> Any:
    """A T5 (or, for Wan, UMT5) encoder; dropout is 0 so a seed gives one image."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    return model_class(
        config_class(
            vocab_size=len(tok),
            d_model=width,
            d_kv=width // heads,
            d_ff=2 * width,
            num_layers=layers,
            num_heads=heads,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **extra,
        )
    )


def autoencoder_kl(
    channels: tuple[int, ...], groups: int, latent: int, sample_size: int, **scaling: float
) -> Any:
    """FLUX's VAE class, one down/up block per entry of ``channels`` (2**(n-1) x downsampling)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        norm_num_groups=groups,
        latent_channels=latent,
        sample_size=sample_size,
        use_quant_conv=False,
        use_post_quant_conv=False,
        **scaling,
    )


def freeze(*modules: torch.nn.Module | None) -> None:
    """Eval mode and no gradients: fresh modules train, and dropout would make a seed random."""
    for module in modules:
        if module is not None:
            module.eval()
            module.requires_grad_(False)
