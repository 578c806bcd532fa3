"""Wan 2.1 image to video, tiny: ``WanImageToVideoPipeline`` with a ``WanTransformer3DModel`` of 36
input channels (16 noise + 16 image-conditioning latents + 4 mask channels), 2 blocks of 2 heads of
12 with Wan 2.1 I2V's image cross-attention (``image_dim``, ``added_kv_proj_dim``), a
``CLIPVisionModel`` image encoder (width 16, 2 layers, 32 px in 8 px patches: 17 tokens) with a
``CLIPImageProcessorPil`` built in memory, on demo:wan-tiny's ``UMT5EncoderModel`` (width 32, 2
layers), ``AutoencoderKLWan`` (16 latent channels, 8x spatial and 4x temporal compression) and
scheduler, all random. The input image is resized to the request's ``height`` x ``width`` for the
VAE (first latent frame, the rest masked out) and to 32 px for the CLIP encoder.

Stands for Wan-AI/Wan2.1-I2V-14B-480P / -720P (40 blocks of width 5120, UMT5-XXL, CLIP ViT-H/14 of
width 1280). Its image cross-attention splits the context at a fixed 512 text tokens, so the text
length is 512 here too (the tiny UMT5 has relative positions: any length is cheap).
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.random_models import WAN_TRANSFORMER, build_wan_tiny
from ray_dit.demo.tiny_components import freeze
from ray_dit.engine.registry import ModelDefaults, ModelSpec

SEED = 20261130 + 403
TEXT_LENGTH = 512  # WanAttnProcessor takes the context's last 512 tokens as text
CLIP_WIDTH = 16


def _image_encoder() -> tuple[Any, Any]:
    """A CLIP vision tower (the pipeline reads its second-to-last hidden states) and its processor."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=CLIP_WIDTH,
            intermediate_size=2 * CLIP_WIDTH,
            projection_dim=CLIP_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            attention_dropout=0.0,
            dropout=0.0,
        )
    )
    return encoder, CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=32)


def build() -> Any:
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    base = build_wan_tiny()  # seeds its own weights; its transformer is replaced
    torch.manual_seed(SEED)
    image_encoder, image_processor = _image_encoder()
    transformer = WanTransformer3DModel(
        **{**WAN_TRANSFORMER, "in_channels": 36},  # noise + image latents + mask
        image_dim=CLIP_WIDTH,
        added_kv_proj_dim=24,  # the transformer's width, as in the 14B model
    )
    freeze(image_encoder, transformer)
    return WanImageToVideoPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=base.vae,
        scheduler=base.scheduler,
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
    )


SPECS = (
    ModelSpec(
        "demo:wan-i2v-tiny",
        build,
        ModelDefaults(width=64, height=64, steps=8, num_frames=9, fps=8, max_sequence_length=TEXT_LENGTH),
        "Wan 2.1 image to video (VAE image latents + CLIP image cross-attention), random weights",
        family="wan",
        task="image-to-video",
    ),
)
