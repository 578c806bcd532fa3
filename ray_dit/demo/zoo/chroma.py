"""Chroma, tiny: ``ChromaPipeline`` with a ``ChromaTransformer2DModel`` (FLUX-like: 2 double-stream
and 2 single-stream blocks, 2 heads of 16, a 1-layer modulation approximator of width 32 in place
of FLUX's per-block modulation), a ``T5EncoderModel`` (width 32, 2 layers; Chroma has no CLIP) and
FLUX's ``AutoencoderKL`` (16 latent channels, 8x downsampling, channels 8-16), all random.

Stands for lodestones/Chroma1-HD (8.9B; 19 double + 38 single blocks of width 3072, T5-XXL). Chroma
runs classifier-free guidance as two transformer calls per step when ``guidance_scale > 1``.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import autoencoder_kl, freeze
from ray_dit.demo.zoo._t5_family import image_defaults, t5_pair
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 301


def build() -> Any:
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(SEED)
    tok, t5 = t5_pair(width=32)
    vae = autoencoder_kl(
        (8, 16, 16, 16), groups=8, latent=16, sample_size=64, shift_factor=0.1159, scaling_factor=0.3611
    )
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )
    freeze(t5, vae, transformer)
    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=vae,
        text_encoder=t5,
        tokenizer=tok,
        transformer=transformer,
    )


SPECS = (
    ModelSpec(
        "demo:chroma-tiny",
        build,
        image_defaults(64, 8),
        "Chroma (FLUX-derived, T5 only, real CFG) text to image, random weights",
        family="chroma",
        task="image",
    ),
)
