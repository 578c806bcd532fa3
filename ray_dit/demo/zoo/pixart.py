"""PixArt-Σ, tiny: ``PixArtSigmaPipeline`` with a ``PixArtTransformer2DModel`` (2 blocks of
self-attention + cross-attention to T5, adaLN-single, 2 heads of 16, learned sigma: 8 output
channels), a ``T5EncoderModel`` (width 32, 2 layers), the SDXL-style ``AutoencoderKL`` (4 latent
channels, 8x downsampling, channels 8-16) and DPM-Solver++, all random.

Stands for PixArt-alpha/PixArt-Sigma-XL-2-1024-MS (0.6B; 28 blocks of width 1152, T5-XXL).
The transformer's sample size is 32 latents (256 px) because the pipeline's resolution binning,
on by default, only knows PixArt's real sizes: every request is denoised at the nearest 256-px
bin size and resized back to the size asked for.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import autoencoder_kl, freeze
from ray_dit.demo.zoo._t5_family import image_defaults, t5_pair
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 302


def build() -> Any:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(SEED)
    tok, t5 = t5_pair(width=32)
    vae = autoencoder_kl((8, 16, 16, 16), groups=8, latent=4, sample_size=256, scaling_factor=0.13025)
    transformer = PixArtTransformer2DModel(
        sample_size=32,  # the 256-px bins of resolution binning (see the module docstring)
        patch_size=2,
        in_channels=4,
        out_channels=8,  # noise and variance: the pipeline keeps the first half
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=32,
        norm_num_groups=8,
    )
    freeze(t5, vae, transformer)
    return PixArtSigmaPipeline(
        tokenizer=tok,
        text_encoder=t5,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )


SPECS = (
    ModelSpec(
        "demo:pixart-sigma-tiny",
        build,
        image_defaults(64, 8),
        "PixArt-Σ (DiT with T5 cross-attention) text to image, random weights",
        family="pixart",
        task="image",
    ),
)
