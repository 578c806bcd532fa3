"""Mochi, tiny: ``MochiPipeline`` with a ``MochiTransformer3DModel`` (asymmetric-DiT: 2 blocks, 2
heads of 16, a T5-pooled caption embedding, RMS q/k norm, SwiGLU), a ``T5EncoderModel`` (width 32,
2 layers) and an ``AutoencoderKLMochi`` (12 latent channels, 8x spatial and 6x temporal
compression, channels of 32: Mochi's group norm takes 32 groups), all random.

Stands for genmo/mochi-1-preview (10B; 48 blocks of width 3072, T5-XXL). Mochi's VAE compresses
time by 6, so its frame counts are 6k+1; the default 13 is also the engine's 4k+1.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import freeze
from ray_dit.demo.zoo._t5_family import TEXT_LENGTH, t5_pair, video_defaults
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 306


def build() -> Any:
    from diffusers import (
        AutoencoderKLMochi,
        FlowMatchEulerDiscreteScheduler,
        MochiPipeline,
        MochiTransformer3DModel,
    )

    torch.manual_seed(SEED)
    tok, t5 = t5_pair(width=32)
    vae = AutoencoderKLMochi(
        latent_channels=12,
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
    )
    transformer = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        pooled_projection_dim=16,
        in_channels=12,
        qk_norm="rms_norm",
        text_embed_dim=32,
        time_embed_dim=16,
        activation_fn="swiglu",
        max_sequence_length=TEXT_LENGTH,
    )
    freeze(t5, vae, transformer)
    return MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True),
        vae=vae,
        text_encoder=t5,
        tokenizer=tok,
        transformer=transformer,
    )


SPECS = (
    ModelSpec(
        "demo:mochi-tiny",
        build,
        video_defaults(48, 8, frames=13),
        "Mochi 1 (asymmetric DiT, T5, 6x-temporal video VAE) text to video, random weights",
        family="mochi",
        task="video",
    ),
)
