"""Small builders shared by the zoo's T5 / UMT5 / CLIP families (SD3, Chroma, PixArt, AuraFlow,
LTX, CogVideoX, Mochi, SkyReels-V2, Allegro), on top of :mod:`ray_dit.demo.tiny_components`.

Not a family module (the leading underscore keeps :func:`ray_dit.demo.zoo.specs` away from it).
"""

from __future__ import annotations

from typing import Any

from ray_dit.demo.tiny_components import clip_config, t5_text_encoder, t5_tokenizer
from ray_dit.engine.registry import ModelDefaults

TEXT_LENGTH = 32  # tokens the tiny T5 encoders are called with (a request cannot change it)


def clip_with_projection(tok: Any, width: int, layers: int, heads: int, projection: int) -> Any:
    """A CLIP text tower with its pooled projection (SD3's CLIP-L and CLIP-G class), 77 positions."""
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(clip_config(tok, width, layers, heads, 77, projection))


def t5_pair(width: int = 32, umt5: bool = False, **extra: Any) -> tuple[Any, Any]:
    """A tokenizer and a 2-layer T5 (or UMT5) encoder of ``width`` with 4 heads."""
    tok = t5_tokenizer()
    return tok, t5_text_encoder(tok, width=width, layers=2, heads=4, umt5=umt5, **extra)


def image_defaults(size: int, steps: int) -> ModelDefaults:
    return ModelDefaults(width=size, height=size, steps=steps, max_sequence_length=TEXT_LENGTH)


def video_defaults(size: int, steps: int, frames: int, fps: int = 8) -> ModelDefaults:
    return ModelDefaults(
        width=size,
        height=size,
        steps=steps,
        num_frames=frames,
        fps=fps,
        max_sequence_length=TEXT_LENGTH,
    )
