"""CogView4: ``CogView4Pipeline`` with ``CogView4Transformer2DModel``, a GLM-4 text encoder
(``GlmModel``; a byte-level BPE tokenizer in ``PreTrainedTokenizerFast`` that starts every text
with ``[gMASK]<sop>``, as GLM-4's does) and ``AutoencoderKL`` (16 latent channels, 8x).

Stands for THUDM/CogView4-6B. Made tiny: a 2-block transformer of width 32 (2 heads of 16), a
2-layer GLM of width 32, a 4-stage VAE of 8-16 channels. The pipeline pads the text on the left
to a multiple of 16 tokens and runs classifier-free guidance as a second transformer call.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import autoencoder_kl, freeze
from ray_dit.demo.zoo._llm_text import glm_text_encoder, glm_tokenizer, words_of
from ray_dit.engine.registry import ModelDefaults, ModelSpec

TEXT_LENGTH = 64


def build() -> Any:
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(20261130 + 13)
    tokenizer = glm_tokenizer(words_of())
    text_encoder = glm_text_encoder(tokenizer, width=32, layers=2, heads=2)
    vae = autoencoder_kl((8, 16, 16, 16), groups=8, latent=16, sample_size=64, scaling_factor=1.0)
    transformer = CogView4Transformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        text_embed_dim=32,
        time_embed_dim=16,
        condition_dim=8,
        sample_size=8,
        rope_axes_dim=(64, 64),
    )
    freeze(text_encoder, vae, transformer)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25,
        max_shift=0.75,
        base_image_seq_len=256,
        use_dynamic_shifting=True,
        time_shift_type="linear",
    )
    return CogView4Pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


SPECS = (
    ModelSpec(
        "demo:cogview4-tiny",
        build,
        ModelDefaults(width=64, height=64, steps=8, max_sequence_length=TEXT_LENGTH),
        "CogView4 text to image (GLM-4), random weights",
        family="cogview4",
        task="image",
    ),
)
