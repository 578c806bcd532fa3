"""Lumina 2: ``Lumina2Pipeline`` with ``Lumina2Transformer2DModel`` (a unified single-stream DiT
with noise and context refiners), a Gemma 2 text encoder (``Gemma2Model`` + ``GemmaTokenizerFast``)
and FLUX's ``AutoencoderKL`` (16 latent channels, 8x).

Stands for Alpha-VLLM/Lumina-Image-2.0. Made tiny: a transformer of width 32 with 2 main layers
and 1 layer per refiner (grouped-query attention, 2 query heads on 1 key/value head, as the real
24-on-8), a 2-layer Gemma 2 of width 32, and a 4-stage VAE of 8-16 channels. The pipeline puts its
system prompt and ``<Prompt Start>`` before every prompt; the tokenizer knows those words, so the
prefix is about 30 tokens of the 64 the text is padded to.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import autoencoder_kl, freeze
from ray_dit.demo.zoo._llm_text import gemma2_text_encoder, gemma_tokenizer, words_of
from ray_dit.engine.registry import ModelDefaults, ModelSpec

TEXT_LENGTH = 64  # the system prompt takes about half


def build() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    torch.manual_seed(20261130 + 12)
    transformer = Lumina2Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        hidden_size=32,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        axes_dim_rope=(4, 6, 6),
        cap_feat_dim=32,
    )
    vae = autoencoder_kl(
        (8, 16, 16, 16), groups=8, latent=16, sample_size=64, shift_factor=0.1159, scaling_factor=0.3611
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=6.0)
    # The system prompt is the pipeline's own attribute: build the pipeline, then its tokenizer.
    pipe = Lumina2Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=None, tokenizer=None
    )
    tokenizer = gemma_tokenizer(words_of(pipe.system_prompt, "<Prompt Start>"), max_length=1024)
    tokenizer.padding_side = "right"  # what the pipeline's constructor sets
    text_encoder = gemma2_text_encoder(tokenizer, width=32, layers=2, heads=2)
    freeze(text_encoder, vae, transformer)
    pipe.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)
    return pipe


SPECS = (
    ModelSpec(
        "demo:lumina2-tiny",
        build,
        ModelDefaults(width=64, height=64, steps=8, max_sequence_length=TEXT_LENGTH),
        "Lumina Image 2.0 text to image (Gemma 2), random weights",
        family="lumina2",
        task="image",
    ),
)
