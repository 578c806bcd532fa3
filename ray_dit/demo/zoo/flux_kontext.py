"""FLUX.1 Kontext, tiny: ``FluxKontextPipeline`` (image editing: an input image plus an instruction)
on demo:flux-tiny's components, a ``FluxTransformer2DModel`` (2 double-stream + 2 single-stream
blocks, 2 heads of 16, guidance embedding), a ``CLIPTextModel`` and a ``T5EncoderModel`` (width 32,
2 layers) and an ``AutoencoderKL`` (16 latent channels, 8x downsampling, channels 8-16), all random.
The transformer is FLUX.1's own: Kontext appends the input image's packed latents to the noise
tokens (positions offset by one on the first RoPE axis), so no channel is added.

Stands for black-forest-labs/FLUX.1-Kontext-dev (19 double + 38 single blocks of width 3072,
CLIP-L, T5-XXL, guidance distilled: ``guidance_scale`` is an embedding, true CFG needs
``true_cfg_scale > 1`` and a negative prompt).

Sizes: the pipeline takes ``height`` and ``width`` only for their aspect ratio and generates
``max_area`` pixels (1024**2 by default), and by default (``_auto_resize``) resizes the input image
to the Kontext training resolution nearest its aspect ratio (about 1 MP). A 64x64 edit at tiny cost
needs both ``max_area=height * width`` and ``_auto_resize=False`` (the image then keeps its own size,
floored to a multiple of 16): a call with neither generates 1024x1024 from a 1024x1024 input.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ray_dit.demo.random_models import build_flux_tiny
from ray_dit.demo.zoo._t5_family import image_defaults
from ray_dit.engine.registry import ModelSpec


def build() -> Any:
    """demo:flux-tiny's components (its fixed weight seed, already frozen) in the Kontext pipeline."""
    from diffusers import FluxKontextPipeline

    return FluxKontextPipeline(**build_flux_tiny().components)


SPECS = (
    ModelSpec(
        "demo:flux-kontext-tiny",
        build,
        dataclasses.replace(image_defaults(64, 8), call_options={"_auto_resize": False}),
        "FLUX.1 Kontext image editing (input image tokens appended to the FLUX sequence), random weights",
        family="flux",
        task="edit",
    ),
)
