"""LTX-Video image to video, tiny: ``LTXImageToVideoPipeline`` on demo:ltx-video-tiny's components,
an ``LTXVideoTransformer3DModel`` (2 blocks, 2 heads of 16, T5 cross-attention, 3D RoPE), a
``T5EncoderModel`` (width 32, 2 layers) and an ``AutoencoderKLLTXVideo`` (8 latent channels, 8x
spatial and 4x temporal compression), all random. The input image is resized to the request's
``height`` x ``width``, encoded by the VAE into the first latent frame and kept there by a
conditioning mask (its tokens get timestep 0), so the transformer is the text-to-video one.

Stands for Lightricks/LTX-Video image to video (2B / 13B; 28-48 blocks of width 2048-4096, T5-XXL,
a 128-channel VAE with 32x spatial and 8x temporal compression).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ray_dit.demo.zoo import ltx
from ray_dit.demo.zoo._t5_family import video_defaults
from ray_dit.engine.registry import ModelSpec


def build() -> Any:
    """demo:ltx-video-tiny's components (its fixed weight seed, already frozen) in the I2V pipeline."""
    from diffusers import LTXImageToVideoPipeline

    return LTXImageToVideoPipeline(**ltx.build().components)


SPECS = (
    ModelSpec(
        "demo:ltx-video-i2v-tiny",
        build,
        dataclasses.replace(video_defaults(64, 8, frames=9), needs_image=True),
        "LTX-Video image to video (the image is the first latent frame, kept by a mask), random weights",
        family="ltx-video",
        task="image-to-video",
    ),
)
