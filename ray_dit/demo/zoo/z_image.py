"""Z-Image: ``ZImagePipeline`` with ``ZImageTransformer2DModel`` (a single-stream DiT: noise and
caption refiners, then joint layers), FLUX's ``AutoencoderKL`` and a Qwen3 text encoder
(``Qwen3Model``, its second-to-last hidden state after Qwen3's chat template).

Stands for Tongyi-MAI/Z-Image (6B single-stream DiT, Qwen3-4B; Z-Image-Turbo is the same
architecture distilled to run without CFG). Tiny: a 32-wide transformer (2 heads of 16) with 2
joint layers and 1 layer per refiner, a 2-layer 32-wide Qwen3, a 4-level 8x VAE of 8-16 channels
with 16 latent channels, and a Qwen2 tokenizer made in memory (``_qwen_text``).
The pipeline runs CFG (``guidance_scale`` > 0, default 5) by batching both branches into one
transformer call per step.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import autoencoder_kl, freeze
from ray_dit.demo.zoo._qwen_text import qwen3, qwen_tokenizer
from ray_dit.engine.registry import ModelDefaults, ModelSpec

WEIGHT_SEED = 20261130 + 12
TEXT_WIDTH = 32


def build() -> Any:
    """A Z-Image text-to-image pipeline with random weights (float32, CPU)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(WEIGHT_SEED)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=TEXT_WIDTH,
        axes_dims=[4, 6, 6],
        axes_lens=[256, 64, 64],
    )
    vae = autoencoder_kl(
        (8, 16, 16, 16), groups=8, latent=16, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159
    )
    text_encoder = qwen3(width=TEXT_WIDTH, layers=2, heads=2)
    freeze(transformer, vae, text_encoder)
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=qwen_tokenizer(),
        transformer=transformer,
    )


SPECS = (
    ModelSpec(
        "demo:z-image-tiny",
        build,
        ModelDefaults(width=64, height=64, steps=8, max_sequence_length=32),
        "Z-Image text to image (single-stream DiT, Qwen3), random weights",
        family="z-image",
        task="image",
    ),
)
