"""Allegro, tiny: ``AllegroPipeline`` with an ``AllegroTransformer3DModel`` (2 blocks of
self-attention with 3D RoPE and cross-attention to T5, adaLN-single, 2 heads of 12), a
``T5EncoderModel`` (width 32, 2 layers), an ``AutoencoderKLAllegro`` (4 latent channels, 8x
spatial and 4x temporal compression, channels of 8) and Euler-ancestral, all random.

Stands for rhymes-ai/Allegro (2.8B; 32 blocks of width 2304, T5-XXL). Its VAE decodes only in
tiles of 24 frames by ``sample_size`` pixels, with overlaps of 8 frames and 120 x 80 pixels fixed
in diffusers, so this build is larger than the zoo's others: tiles of 128 px (the smallest with a
positive stride), and at least 21 frames (6 latent frames, one tile) of at least 128 x 128.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import freeze
from ray_dit.demo.zoo._t5_family import t5_pair, video_defaults
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 308


def build() -> Any:
    from diffusers import (
        AllegroPipeline,
        AllegroTransformer3DModel,
        AutoencoderKLAllegro,
        EulerAncestralDiscreteScheduler,
    )

    torch.manual_seed(SEED)
    tok, t5 = t5_pair(width=32)
    vae = AutoencoderKLAllegro(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        sample_size=128,  # the decoding tile (see the module docstring)
    )
    vae.enable_tiling()  # AutoencoderKLAllegro has no untiled decode
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=12,  # 3D RoPE: 4 + 4 + 4
        in_channels=4,
        out_channels=4,
        num_layers=2,
        cross_attention_dim=24,
        caption_channels=32,
        sample_height=16,  # latents: 128 px, 6 latent frames
        sample_width=16,
        sample_frames=6,
    )
    freeze(t5, vae, transformer)
    return AllegroPipeline(
        tokenizer=tok,
        text_encoder=t5,
        vae=vae,
        transformer=transformer,
        scheduler=EulerAncestralDiscreteScheduler(beta_schedule="linear", beta_end=0.02),
    )


SPECS = (
    ModelSpec(
        "demo:allegro-tiny",
        build,
        video_defaults(128, 8, frames=21),
        "Allegro (3D-RoPE DiT with T5 cross-attention, tiled video VAE) text to video, random weights",
        family="allegro",
        task="video",
    ),
)
