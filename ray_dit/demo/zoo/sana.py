"""Sana: ``SanaPipeline`` with ``SanaTransformer2DModel`` (linear-attention DiT), a Gemma 2 text
encoder (``Gemma2Model`` + ``GemmaTokenizerFast``) and the deep-compression ``AutoencoderDC``.

Stands for Efficient-Large-Model/Sana_1600M_512px_diffusers (and the 600M / 1024px variants):
the transformer's ``sample_size`` is 16, so the pipeline's resolution binning renders every
request at a 512 px bin, then resizes and crops to the requested size, exactly as the real 512 px
model does. Made tiny: a 2-block transformer of width 32, a 2-layer Gemma 2 of width 32, and a
6-stage DC-AE (32x compression, as the real f32c32 one) with 8-32 channels, so a 512 px decode
stays cheap. The tokenizer knows the words of Sana's default complex human instruction (the
system prompt prepended to every prompt), so it costs about a token a word.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ray_dit.demo.tiny_components import freeze
from ray_dit.demo.zoo._llm_text import gemma2_text_encoder, gemma_tokenizer, words_of
from ray_dit.engine.registry import ModelDefaults, ModelSpec

TEXT_LENGTH = 32


def _dc_autoencoder() -> Any:
    """The f32c32 layout: 3 ResBlock stages, then 3 EfficientViT (linear attention) stages."""
    from diffusers import AutoencoderDC

    block_types = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    channels = (8, 8, 16, 16, 32, 32)
    multiscales = ((), (), (), (5,), (5,), (5,))
    return AutoencoderDC(
        in_channels=3,
        latent_channels=8,
        attention_head_dim=8,
        encoder_block_types=block_types,
        decoder_block_types=block_types,
        encoder_block_out_channels=channels,
        decoder_block_out_channels=channels,
        encoder_layers_per_block=(1,) * 6,
        decoder_layers_per_block=(1,) * 6,
        encoder_qkv_multiscales=multiscales,
        decoder_qkv_multiscales=multiscales,
        upsample_block_type="interpolate",
        downsample_block_type="Conv",
        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3,
        decoder_act_fns=("relu",) * 3 + ("silu",) * 3,
        scaling_factor=0.41407,
    )


def build() -> Any:
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(20261130 + 11)
    instruction = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    tokenizer = gemma_tokenizer(words_of(*instruction), max_length=1024)
    text_encoder = gemma2_text_encoder(tokenizer, width=32, layers=2, heads=2)
    vae = _dc_autoencoder()
    transformer = SanaTransformer2DModel(
        in_channels=8,
        out_channels=8,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=32,
        sample_size=16,
        patch_size=1,
    )
    freeze(text_encoder, vae, transformer)
    scheduler = DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


SPECS = (
    ModelSpec(
        "demo:sana-tiny",
        build,
        ModelDefaults(width=64, height=64, steps=8, max_sequence_length=TEXT_LENGTH),
        "Sana text to image (Gemma 2, DC-AE; rendered at a 512 px bin), random weights",
        family="sana",
        task="image",
    ),
)
