"""CogVideoX, tiny: ``CogVideoXPipeline`` with a ``CogVideoXTransformer3DModel`` (2 expert-adaLN
blocks over the joint text + video sequence, 2 heads of 16, 3D RoPE as in the 5B model), a
``T5EncoderModel`` (width 32, 2 layers), an ``AutoencoderKLCogVideoX`` (4 latent channels, 8x
spatial and 4x temporal compression, channels of 8) and CogVideoX's DPM scheduler (v-prediction,
zero terminal SNR), all random.

Stands for THUDM/CogVideoX-5b (42 blocks of width 3072, T5-XXL, a 16-channel VAE); CogVideoX-2b
differs in sin-cos positions instead of RoPE.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import freeze
from ray_dit.demo.zoo._t5_family import TEXT_LENGTH, t5_pair, video_defaults
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 305


def build() -> Any:
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(SEED)
    tok, t5 = t5_pair(width=32)
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        sample_height=64,
        sample_width=64,
        scaling_factor=0.7,
    )
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=32,
        text_embed_dim=32,
        num_layers=2,
        sample_width=8,  # latents: 64 px
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LENGTH,
        use_rotary_positional_embeddings=True,
    )
    scheduler = CogVideoXDPMScheduler(
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=1.0,
        timestep_spacing="trailing",
    )
    freeze(t5, vae, transformer)
    return CogVideoXPipeline(
        tokenizer=tok, text_encoder=t5, vae=vae, transformer=transformer, scheduler=scheduler
    )


SPECS = (
    ModelSpec(
        "demo:cogvideox-tiny",
        build,
        video_defaults(64, 8, frames=9),
        "CogVideoX (expert-adaLN DiT over text + video, 3D VAE) text to video, random weights",
        family="cogvideox",
        task="video",
    ),
)
