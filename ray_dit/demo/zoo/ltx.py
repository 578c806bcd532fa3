"""LTX-Video, tiny: ``LTXPipeline`` with an ``LTXVideoTransformer3DModel`` (2 blocks, 2 heads of 16,
cross-attention to T5, 3D RoPE), a ``T5EncoderModel`` (width 32, 2 layers) and an
``AutoencoderKLLTXVideo`` (8 latent channels, 8x spatial and 4x temporal compression: a 2x2
patchify and two space-time downsamplings, channels of 8), all random.

Stands for Lightricks/LTX-Video (2B / 13B; 28-48 blocks of width 2048-4096, T5-XXL, a 128-channel
VAE with 32x spatial and 8x temporal compression).
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import freeze
from ray_dit.demo.zoo._t5_family import t5_pair, video_defaults
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 304


def _vae() -> Any:
    from diffusers import AutoencoderKLLTXVideo

    scaling = (True, True, False, False)
    return AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=scaling,
        decoder_spatio_temporal_scaling=scaling,
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        patch_size=2,
        patch_size_t=1,
    )


def build() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    torch.manual_seed(SEED)
    tok, t5 = t5_pair(width=32)
    vae = _vae()
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        num_layers=2,
        caption_channels=32,
    )
    freeze(t5, vae, transformer)
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True,  # LTX-Video's schedule: shift by the token count, end at 0.1
            base_shift=0.95,
            max_shift=2.05,
            base_image_seq_len=1024,
            max_image_seq_len=4096,
            shift_terminal=0.1,
        ),
        vae=vae,
        text_encoder=t5,
        tokenizer=tok,
        transformer=transformer,
    )


SPECS = (
    ModelSpec(
        "demo:ltx-video-tiny",
        build,
        video_defaults(64, 8, frames=9),
        "LTX-Video (DiT with T5 cross-attention, causal video VAE) text to video, random weights",
        family="ltx-video",
        task="video",
    ),
)
