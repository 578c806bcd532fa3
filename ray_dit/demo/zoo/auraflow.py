"""AuraFlow, tiny: ``AuraFlowPipeline`` with an ``AuraFlowTransformer2DModel`` (1 MMDiT joint block
and 2 single DiT blocks, 2 heads of 16, a learned position table of 8x8 patches), a
``UMT5EncoderModel`` (width 32, 2 layers), an ``AutoencoderKL`` with 4 latent channels (8x
downsampling, channels 8-16) and flow matching, all random.

Stands for fal/AuraFlow-v0.3 (6.8B; 4 joint + 32 single blocks of width 3072, UMT5-XL from
Pile-T5). cache-dit caches its single blocks only: 2 here.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import autoencoder_kl, freeze
from ray_dit.demo.zoo._t5_family import image_defaults, t5_pair
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 303


def build() -> Any:
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(SEED)
    tok, umt5 = t5_pair(width=32, umt5=True)
    vae = autoencoder_kl((8, 16, 16, 16), groups=8, latent=4, sample_size=64, scaling_factor=0.13025)
    transformer = AuraFlowTransformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_mmdit_layers=1,
        num_single_dit_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=32,
        pos_embed_max_size=64,  # patches: up to 8x8 (128 px)
    )
    freeze(umt5, vae, transformer)
    return AuraFlowPipeline(
        tokenizer=tok,
        text_encoder=umt5,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


SPECS = (
    ModelSpec(
        "demo:auraflow-tiny",
        build,
        image_defaults(64, 8),
        "AuraFlow (MMDiT + single DiT blocks, UMT5) text to image, random weights",
        family="auraflow",
        task="image",
    ),
)
