"""SkyReels-V2, tiny: ``SkyReelsV2Pipeline`` (text to video) with a ``SkyReelsV2Transformer3DModel``
(Wan-style: 2 blocks of self-attention with 3D RoPE and cross-attention to the text, 2 heads of
16), a ``UMT5EncoderModel`` (width 32, 2 layers), Wan's ``AutoencoderKLWan`` (16 latent channels,
8x spatial and 4x temporal compression, base width 3) and UniPC with flow sigmas, all random.

Stands for Skywork/SkyReels-V2-T2V-14B-540P (and 1.3B; 30-40 blocks of width 1536-5120, UMT5-XXL).
Its pipeline runs classifier-free guidance as two transformer calls per step, and it needs the
``ftfy`` package: diffusers 0.42's SkyReels-V2 pipeline cleans every prompt with ``ftfy.fix_text``
without checking that ftfy is installed (Wan's checks), so without it a call fails with a NameError.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from ray_dit.demo.random_models import WAN_TRANSFORMER
from ray_dit.demo.tiny_components import freeze
from ray_dit.demo.zoo._t5_family import t5_pair, video_defaults
from ray_dit.engine.registry import ModelSpec

SEED = 20261130 + 307


def build() -> Any:
    from diffusers import (
        AutoencoderKLWan,
        SkyReelsV2Pipeline,
        SkyReelsV2Transformer3DModel,
        UniPCMultistepScheduler,
    )

    if importlib.util.find_spec("ftfy") is None:
        raise ImportError(
            "demo:skyreels-v2-tiny needs ftfy (pip install ftfy): SkyReelsV2Pipeline cleans prompts with it"
        )
    torch.manual_seed(SEED)
    tok, umt5 = t5_pair(width=32, umt5=True)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = SkyReelsV2Transformer3DModel(**{**WAN_TRANSFORMER, "attention_head_dim": 16})
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0
    )
    freeze(umt5, vae, transformer)
    return SkyReelsV2Pipeline(
        tokenizer=tok, text_encoder=umt5, transformer=transformer, vae=vae, scheduler=scheduler
    )


SPECS = (
    ModelSpec(
        "demo:skyreels-v2-tiny",
        build,
        video_defaults(64, 8, frames=9),
        "SkyReels-V2 (Wan-architecture DiT, UMT5) text to video, random weights",
        family="skyreels-v2",
        task="video",
    ),
)
