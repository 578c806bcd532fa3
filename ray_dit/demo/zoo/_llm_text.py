"""Decoder-LLM text encoders (Gemma 2, GLM, Llama) and their tokenizers, built in memory.

The DiT families that read prompts with a chat LLM (Sana and Lumina 2: Gemma 2; CogView4: GLM-4;
HunyuanVideo and HiDream: Llama 3) wrap the prompt in a system prompt or chat template before
tokenizing. The tokenizers here are BPE models over a tiny vocabulary: printable ASCII, byte
fallback (or byte-level symbols) for everything else, and merges that make each word of the
template texts (plus a few common prompt words) one token, with or without a space before it, so
a long template costs about a token a word.
Weights are random: the caller seeds torch first. No vocab files, no sentencepiece, no hub.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from typing import Any

# fmt: off
PROMPT_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "at", "red", "green", "blue", "yellow", "white",
    "black", "circle", "square", "triangle", "cat", "dog", "photo", "painting", "picture", "video",
    "sky", "sea", "tree", "house", "small", "large",
)
# fmt: on


def words_of(*texts: str, specials: Iterable[str] = ()) -> list[str]:
    """The distinct words (runs of letters/digits) of ``texts``, in order of first appearance, then
    a few common prompt words; the text of ``specials`` (atomic tokens) is left out."""
    found: dict[str, None] = {}
    for text in texts:
        for special in specials:
            text = text.replace(special, " ")
        found |= dict.fromkeys(re.findall(r"[A-Za-z0-9]+", text))
    return list(found | dict.fromkeys(PROMPT_WORDS))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """What BPE makes of ``symbols`` under ``ranks``: join the best-ranked adjacent pair until none is left."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(itertools.pairwise(symbols))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def _merge_chains(pieces: Iterable[list[str]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merges that make each piece one token (added to ``vocab``): each piece is split by the merges
    so far, then its parts are joined left to right. The joins rank after every earlier merge, so
    they fire only once those are done, and no later piece's merges can cut an earlier piece."""
    ranks: dict[tuple[str, str], int] = {}
    for symbols in pieces:
        current, *rest = _bpe(symbols, ranks)
        for part in rest:
            ranks.setdefault((current, part), len(ranks))
            current += part
            vocab.setdefault(current, len(vocab))
    return list(ranks)


def _pieces(words: Iterable[str], space: str) -> list[list[str]]:
    """Each word's symbols after a space, and alone (a text's first word, a word after a newline
    or a special token)."""
    words = [word for word in words if word]
    return [[space, *word] for word in words] + [list(word) for word in words if len(word) > 1]


def spm_bpe_vocab(
    words: Iterable[str], specials: Iterable[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A SentencePiece-style BPE vocabulary (``▁`` marks a space, bytes as ``<0xNN>`` fallback):
    specials first, then the 256 byte pieces, printable ASCII, and ``word`` / ``▁word`` per word."""
    vocab = {token: index for index, token in enumerate(specials)}
    for code in range(256):
        vocab.setdefault(f"<0x{code:02X}>", len(vocab))
    for symbol in ["▁", *(chr(code) for code in range(33, 127))]:
        vocab.setdefault(symbol, len(vocab))
    return vocab, _merge_chains(_pieces(words, "▁"), vocab)


def gemma_tokenizer(words: Iterable[str], max_length: int) -> Any:
    """Gemma's tokenizer class (BPE, spaces as ``▁``, byte fallback, ``<bos>`` first)."""
    from transformers import GemmaTokenizerFast

    specials = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
    vocab, merges = spm_bpe_vocab(words, specials)
    return GemmaTokenizerFast(vocab=vocab, merges=merges, model_max_length=max_length, add_bos_token=True)


def llama_tokenizer(words: Iterable[str], specials: Iterable[str] = (), max_length: int = 256) -> Any:
    """Llama's tokenizer class (``▁`` BPE, byte fallback) with Llama 3's begin/end-of-text tokens;
    ``specials`` (chat-template markers such as ``<|eot_id|>``) are atomic special tokens.
    Pads on the right, as HunyuanVideo's crop of the template prefix needs."""
    from transformers import LlamaTokenizerFast

    markers = list(specials)
    base = ("<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<pad>")
    vocab, merges = spm_bpe_vocab(words, (*base, *markers))
    tok = LlamaTokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<pad>",
        model_max_length=max_length,
        padding_side="right",
        add_bos_token=True,
    )
    if markers:
        tok.add_special_tokens({"additional_special_tokens": markers})
    return tok


def glm_tokenizer(words: Iterable[str], max_length: int = 1024) -> Any:
    """A GLM-4 style tokenizer: byte-level BPE (GPT-2 byte symbols, ``Ġ`` for a leading space),
    every sequence prefixed with ``[gMASK]<sop>``, ``<|endoftext|>`` as padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_symbol = bytes_to_unicode()
    specials = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>")
    vocab = {token: index for index, token in enumerate(specials)}
    for symbol in byte_symbol.values():
        vocab.setdefault(symbol, len(vocab))
    merges = _merge_chains(_pieces(words, byte_symbol[ord(" ")]), vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    prefix = [("[gMASK]", vocab["[gMASK]"]), ("<sop>", vocab["<sop>"])]
    backend.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B", special_tokens=prefix
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(specials[1:]),
        model_max_length=max_length,
        padding_side="left",
    )


def _decoder_sizes(tok: Any, width: int, layers: int, heads: int) -> dict[str, Any]:
    """Config fields every decoder LLM here shares; no dropout so a seed gives one embedding."""
    return dict(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=width // heads,
        max_position_embeddings=1024,
        attention_dropout=0.0,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def gemma2_text_encoder(tok: Any, width: int, layers: int, heads: int) -> Any:
    """Gemma 2 (Sana, Lumina 2): eager attention, the one Gemma 2's logit soft-capping runs under."""
    from transformers import Gemma2Config, Gemma2Model

    sizes = _decoder_sizes(tok, width, layers, heads)
    config = Gemma2Config(**sizes, query_pre_attn_scalar=sizes["head_dim"], sliding_window=256)
    config._attn_implementation = "eager"
    return Gemma2Model(config)


def glm_text_encoder(tok: Any, width: int, layers: int, heads: int) -> Any:
    """GLM-4's decoder (CogView4), partial rotary embeddings as in the real one."""
    from transformers import GlmConfig, GlmModel

    return GlmModel(GlmConfig(**_decoder_sizes(tok, width, layers, heads), partial_rotary_factor=0.5))


def llama_text_encoder(tok: Any, width: int, layers: int, heads: int, causal_lm: bool = False) -> Any:
    """A Llama decoder: ``LlamaModel`` (HunyuanVideo's LLaVA-Llama-3) or, with ``causal_lm``,
    ``LlamaForCausalLM`` in eager attention (HiDream's Llama 3.1, asked for attention maps)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    config = LlamaConfig(**_decoder_sizes(tok, width, layers, heads))
    if not causal_lm:
        return LlamaModel(config)
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config)
