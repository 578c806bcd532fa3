"""Stable Diffusion 3.5, tiny: ``StableDiffusion3Pipeline`` with an ``SD3Transformer2DModel``
(MMDiT; 2 joint blocks, 2 heads of 16, RMS q/k norm and one MMDiT-X dual-attention block as in
SD3.5 Medium), two ``CLIPTextModelWithProjection`` towers standing in for CLIP-L and CLIP-G (widths
32 and 32, 2 layers, 77 positions), a ``T5EncoderModel`` (width 64, 2 layers) and an ``AutoencoderKL``
with SD3's 16 latent channels (8x downsampling, channels 8-16), all random.

Stands for stabilityai/stable-diffusion-3.5-medium / -large (and SD3 Medium): the real model has
24-38 blocks of width 1536-2432, CLIP-L/G of width 768/1280 and T5-XXL of width 4096.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import autoencoder_kl, clip_tokenizer, freeze
from ray_dit.demo.zoo._t5_family import clip_with_projection, image_defaults, t5_pair
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 300


def build() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(SEED)
    clip_l_tok, clip_g_tok = clip_tokenizer(), clip_tokenizer()
    clip_l = clip_with_projection(clip_l_tok, width=32, layers=2, heads=4, projection=32)
    clip_g = clip_with_projection(clip_g_tok, width=32, layers=2, heads=4, projection=32)
    t5_tok, t5 = t5_pair(width=64)  # its width is the joint width: CLIP's 32 + 32 are padded to it
    vae = autoencoder_kl(
        (8, 16, 16, 16), groups=8, latent=16, sample_size=64, shift_factor=0.0609, scaling_factor=1.5305
    )
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,  # CLIP-L's and CLIP-G's pooled projections side by side
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    freeze(clip_l, clip_g, t5, vae, transformer)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=clip_l_tok,
        text_encoder_2=clip_g,
        tokenizer_2=clip_g_tok,
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
    )


SPECS = (
    ModelSpec(
        "demo:sd3-tiny",
        build,
        image_defaults(64, 8),
        "Stable Diffusion 3.5 (MMDiT, CLIP-L + CLIP-G + T5) text to image, random weights",
        family="sd3",
        task="image",
    ),
)
