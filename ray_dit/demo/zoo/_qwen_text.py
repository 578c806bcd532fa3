"""Qwen text stacks built in memory: a byte-level BPE Qwen2 tokenizer and tiny Qwen2.5-VL / Qwen3
encoders, for the families that encode prompts with Qwen (Qwen-Image, Z-Image, FLUX.2 [klein],
HunyuanVideo 1.5).

The tokenizer is Qwen's real class (``Qwen2Tokenizer``: Qwen's pre-tokenizer regex, GPT-2 byte
symbols, BPE) over a vocabulary made here: the 256 byte symbols, Qwen's chat special tokens, and
merges that make every pre-token of the ``texts`` a caller names (a pipeline's system prompt) one
token, as Qwen's own vocabulary does for plain English. That keeps the pipelines' fixed template
offsets (the count of template tokens they drop from the encoder output) true for this tokenizer;
:func:`template_tokens` counts them so a build can check. Anything else falls back to bytes.
:func:`byte_bpe` is the vocabulary builder on its own (FLUX.2 [dev]'s Mistral tokenizer uses it).

Special tokens follow the 256 byte symbols, so their ids are fixed and the encoders (whose
embeddings are padded to :data:`VOCAB_SIZE` rows) can be built before the tokenizer, which may need
text that only the constructed pipeline holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from typing import Any

ENDOFTEXT = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
#: Qwen's chat and vision markers (the vision ones let a Qwen2.5-VL config name real ids).
SPECIAL_TOKENS = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
)
#: Embedding rows of the tiny encoders: more than any tokenizer here uses (Qwen pads its vocabulary
#: too), so an encoder can be built before the pipeline whose template text the tokenizer needs.
VOCAB_SIZE = 1024
#: The chat scaffold every tokenizer here learns: role names, newlines, Qwen3's think block.
SCAFFOLD = "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
#: ChatML as the Qwen models write it: system/user/assistant turns, then the assistant header; an
#: explicit ``enable_thinking=False`` adds Qwen3's empty think block (what FLUX.2 [klein] asks for).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def _pre_tokenizer() -> Any:
    """Qwen2's own pre-tokenizer (regex split, then bytes as GPT-2 symbols)."""
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(vocab={ENDOFTEXT: 0}, merges=[]).backend_tokenizer.pre_tokenizer


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding as the tokenizers library does it: merge the best-ranked pair until none."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(pairwise(symbols))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def _pieces(texts: Iterable[str], pre: Any, specials: Iterable[str]) -> list[str]:
    """The pre-tokens (in byte symbols) of ``texts``, special tokens left out, in order."""
    found: dict[str, None] = {}
    for text in texts:
        for special in specials:
            text = text.replace(special, "\n")
        found.update((piece, None) for piece, _ in pre.pre_tokenize_str(text))
    return list(found)


def byte_bpe(
    texts: Iterable[str], pre_tokenizer: Any, specials: tuple[str, ...]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merges: the 256 GPT-2 byte symbols, then ``specials``, then
    the tokens of merge chains that make each pre-token of ``texts`` one token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {symbol: index for index, symbol in enumerate([*bytes_to_unicode().values(), *specials])}
    ranks: dict[tuple[str, str], int] = {}
    for piece in _pieces(texts, pre_tokenizer, specials):
        tokens = _bpe(list(piece), ranks)
        while len(tokens) > 1:  # a new merge ranks last, so it never changes an earlier piece
            ranks[tokens[0], tokens[1]] = len(ranks)
            vocab.setdefault(tokens[0] + tokens[1], len(vocab))
            tokens = _bpe(list(piece), ranks)
    if len(vocab) > VOCAB_SIZE:
        raise ValueError(f"{len(vocab)} tokens do not fit the encoders' {VOCAB_SIZE} embeddings")
    return vocab, list(ranks)


def qwen_tokenizer(texts: Iterable[str] = (), max_length: int = 1024) -> Any:
    """A ``Qwen2Tokenizer`` in which every pre-token of ``texts`` is one token (see the module doc)."""
    from transformers import Qwen2Tokenizer

    vocab, merges = byte_bpe([SCAFFOLD, *texts], _pre_tokenizer(), SPECIAL_TOKENS)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
    )


def template_tokens(tok: Any, text: str) -> int:
    """How many tokens ``text`` is (to check a pipeline's template drop index against)."""
    return len(tok(text, add_special_tokens=False).input_ids)


def special_id(token: str) -> int:
    """The id of one of :data:`SPECIAL_TOKENS`: they follow the 256 byte symbols in every vocabulary."""
    return 256 + SPECIAL_TOKENS.index(token)


def _text_fields(width: int, layers: int, heads: int) -> dict[str, Any]:
    """Shared decoder fields: a padded vocabulary (as Qwen's is), no dropout, the special ids."""
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        attention_dropout=0.0,
        pad_token_id=special_id(ENDOFTEXT),
        bos_token_id=None,
        eos_token_id=special_id(IM_END),
    )


def _rope(**extra: Any) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": 1000000.0, **extra}


def _mrope(width: int, heads: int) -> dict[str, Any]:
    """Qwen2.5-VL's multimodal RoPE: each head's frequencies split over (time, height, width) in
    the proportions of the real 16/24/24 of 64."""
    half = width // heads // 2
    spatial = (half - half // 4) // 2
    return _rope(mrope_section=[half - 2 * spatial, spatial, spatial])


def qwen25_vl_text_config(width: int, layers: int, heads: int) -> Any:
    from transformers import Qwen2_5_VLTextConfig

    fields = _text_fields(width, layers, heads)
    return Qwen2_5_VLTextConfig(**fields, rope_parameters=_mrope(width, heads))


def qwen25_vl_text_model(width: int, layers: int, heads: int) -> Any:
    """The language model of Qwen2.5-VL alone (``Qwen2_5_VLTextModel``, HunyuanVideo 1.5's encoder)."""
    from transformers import Qwen2_5_VLTextModel

    return Qwen2_5_VLTextModel(qwen25_vl_text_config(width, layers, heads))


def qwen25_vl(width: int, layers: int, heads: int, vision_width: int = 16) -> Any:
    """A whole ``Qwen2_5_VLForConditionalGeneration`` (Qwen-Image's encoder): a 1-block vision tower
    that text-to-image never runs, and the language model that encodes the prompt."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=qwen25_vl_text_config(width, layers, heads).to_dict(),
        vision_config=dict(
            depth=1,
            hidden_size=vision_width,
            intermediate_size=2 * vision_width,
            num_heads=2,
            out_hidden_size=width,
            fullatt_block_indexes=[0],
        ),
        image_token_id=special_id("<|image_pad|>"),
        video_token_id=special_id("<|video_pad|>"),
        vision_start_token_id=special_id("<|vision_start|>"),
        vision_end_token_id=special_id("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def qwen3(width: int, layers: int, heads: int, causal_lm: bool = False) -> Any:
    """A Qwen3 decoder (``Qwen3Model``, or ``Qwen3ForCausalLM`` with its LM head)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(
        **_text_fields(width, layers, heads), head_dim=width // heads, rope_parameters=_rope()
    )
    return (Qwen3ForCausalLM if causal_lm else Qwen3Model)(config)
