"""The ``demo:shapes`` pipeline: a FLUX-architecture model trained on the shapes world.

The architecture is FluxPipeline's (CLIP + T5 text encoders, AutoencoderKL, FluxTransformer2D,
flow-matching Euler), shrunk to train on a 2-core CPU in under an hour (``make demo-model``).
Tokenizers have one token per caption word, built in memory like the random demo pipelines'; the
trained weights ship inside the package, so loading needs no network and no training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ray_dit.demo.shapes_world import IMAGE_SIZE, vocabulary

WEIGHTS_DIR = Path(__file__).parent / "weights" / "shapes"
CLIP_LENGTH = 16  # BOS + 8 words + EOS fits with room to spare
T5_LENGTH = 12  # FluxPipeline's max_sequence_length for this model
NUM_STEPS = 28


@dataclass(frozen=True)
class ShapesArch:
    """Sizes of every component (the training script may override them)."""

    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)  # 4 blocks: 8x downsampling
    # GroupNorm removes each group's mean: with 1-2 channels per group a flat color region's
    # absolute color is normalised away, so keep >= 4 channels per group.
    vae_groups: int = 4
    latent_channels: int = 16
    heads: int = 4
    head_dim: int = 32
    double_blocks: int = 2
    single_blocks: int = 4
    rope_axes: tuple[int, int, int] = (8, 12, 12)
    scheduler_shift: float = 2.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _byte_symbols() -> list[str]:
    from ray_dit.engine.demo_models import _byte_symbols as symbols

    return symbols()


def make_clip_tokenizer(words: list[str] | None = None, max_length: int = CLIP_LENGTH) -> Any:
    """Byte-level CLIP BPE plus merge chains that make each caption word one token."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for s in _byte_symbols():
        vocab.setdefault(s, len(vocab))
    for s in _byte_symbols():
        vocab.setdefault(s + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words if words is not None else vocabulary():
        parts = [*word[:-1], word[-1] + "</w>"]
        current = parts[0]
        for part in parts[1:]:
            merged = current + part
            vocab.setdefault(merged, len(vocab))
            if (current, part) not in merges:
                merges.append((current, part))
            current = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def make_t5_tokenizer(words: list[str] | None = None) -> Any:
    """A unigram T5 tokenizer: characters for anything, one high-scoring piece per caption word.

    It lowercases (CLIP's tokenizer does too), so "A Red Circle" reads like "a red circle".
    """
    from transformers import T5Tokenizer

    scores: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -2.0}
    for c in range(32, 127):
        scores.setdefault(chr(c), -5.0)
    for c in range(33, 127):
        scores.setdefault("▁" + chr(c), -4.0)
    for word in words if words is not None else vocabulary():
        scores["▁" + word] = -1.0
    tok = T5Tokenizer(vocab=list(scores.items()), extra_ids=0)
    _lowercase(tok)
    return tok


def _lowercase(tok: Any) -> None:
    """T5Tokenizer rebuilds its backend from the vocabulary on load, dropping a saved normalizer."""
    from tokenizers import normalizers

    tok.backend_tokenizer.normalizer = normalizers.Lowercase()


def build_untrained(arch: ShapesArch | None = None, seed: int = 0) -> Any:
    """A FluxPipeline with freshly initialised weights of the ``arch`` sizes (in training mode)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    arch = arch or ShapesArch()
    torch.manual_seed(seed)
    clip_tok = make_clip_tokenizer()
    t5_tok = make_t5_tokenizer()
    d = arch.text_dim
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=d,
            intermediate_size=2 * d,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=arch.text_heads,
            max_position_embeddings=CLIP_LENGTH,
            projection_dim=d,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
            attention_dropout=0.0,
            dropout=0.0,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=d,
            d_kv=d // arch.text_heads,
            d_ff=2 * d,
            num_layers=arch.text_layers,
            num_heads=arch.text_heads,
            relative_attention_num_buckets=16,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
        )
    )
    n = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        norm_num_groups=arch.vae_groups,
        latent_channels=arch.latent_channels,
        sample_size=IMAGE_SIZE,
        shift_factor=0.0,
        scaling_factor=1.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * arch.latent_channels,
        num_layers=arch.double_blocks,
        num_single_layers=arch.single_blocks,
        attention_head_dim=arch.head_dim,
        num_attention_heads=arch.heads,
        joint_attention_dim=d,
        pooled_projection_dim=d,
        guidance_embeds=False,
        axes_dims_rope=arch.rope_axes,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=arch.scheduler_shift, use_dynamic_shifting=False)
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-component progress bars for a 13 MB model that loads in a blink (they clutter
    server logs and test output); the libraries' own settings are restored afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in states:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()


def load_shapes(path: str | Path | None = None) -> Any:
    """The shipped ``demo:shapes`` pipeline, offline, every module in eval mode."""
    from diffusers import FluxPipeline

    directory = Path(path) if path is not None else WEIGHTS_DIR
    if not (directory / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{directory}: no trained demo:shapes weights here; run `make demo-model` to train them"
        )
    from ray_dit.engine.loader import dtype_kwarg

    with _quiet_loading():
        pipe = FluxPipeline.from_pretrained(
            str(directory), local_files_only=True, **dtype_kwarg(torch.float32)
        )
    _lowercase(pipe.tokenizer_2)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            component.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
