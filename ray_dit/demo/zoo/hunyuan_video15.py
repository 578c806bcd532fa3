"""HunyuanVideo 1.5: ``HunyuanVideo15Pipeline`` with ``HunyuanVideo15Transformer3DModel`` (a
single-stream video DiT with a token refiner), ``AutoencoderKLHunyuanVideo15`` (16x spatial, 4x
temporal), a Qwen2.5-VL language model as the prompt encoder (``Qwen2_5_VLTextModel``, the hidden
state two layers from the top, after a system-prompt chat template) and ByT5 (``T5EncoderModel``
with ``ByT5Tokenizer``) for quoted glyph text; CFG comes from a ``ClassifierFreeGuidance`` guider.

Stands for hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v (8.3B DiT, Qwen2.5-VL-7B,
ByT5-small). Tiny: 2 blocks of 2x16 heads and 1 refiner layer, a 3-layer 32-wide Qwen2.5-VL, a
1-layer 32-wide ByT5, a 5-level VAE of 8-16 channels with 8 latent channels, and a Qwen2 tokenizer
made in memory (``_qwen_text``) whose system prompt is the 108 tokens the pipeline crops. The
pipeline pads prompts to fixed lengths (1000 Qwen, 256 ByT5 tokens) and adds 729 image tokens;
this build shortens those pipeline attributes to what a tiny model needs.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import freeze, t5_text_encoder
from ray_dit.demo.zoo._qwen_text import qwen25_vl_text_model, qwen_tokenizer, template_tokens
from ray_dit.engine.registry import ModelDefaults, ModelSpec

WEIGHT_SEED = 20261130 + 14
TEXT_WIDTH = 32
TEXT_LENGTH = 32  # Qwen tokens after the system prompt (the real pipeline: 1000)
GLYPH_LENGTH = 16  # ByT5 bytes (the real pipeline: 256)
IMAGE_TOKENS = 16  # the (all-zero, masked) image-conditioning tokens of text to video (real: 729)
LATENT_CHANNELS = 8


def _transformer() -> Any:
    from diffusers import HunyuanVideo15Transformer3DModel

    return HunyuanVideo15Transformer3DModel(
        in_channels=2 * LATENT_CHANNELS + 1,  # noise, condition latents, condition mask
        out_channels=LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        text_embed_dim=TEXT_WIDTH,
        text_embed_2_dim=TEXT_WIDTH,
        image_embed_dim=16,
        rope_axes_dim=(4, 6, 6),
        target_size=64,
        task_type="t2v",
    )


def _prompt_template_checked(pipe: Any) -> Any:
    """The Qwen tokenizer for ``pipe``'s system prompt, checked to be the length the pipeline crops."""
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

    tokenizer = qwen_tokenizer([pipe.system_message])
    chat = tokenizer.apply_chat_template(
        format_text_input(["\0"], pipe.system_message)[0], tokenize=False, add_generation_prompt=True
    )
    prefix = template_tokens(tokenizer, chat.split("\0")[0])
    if prefix != pipe.prompt_template_encode_start_idx:  # the crop would cut into the prompt
        raise RuntimeError(
            f"system prompt is {prefix} tokens, the pipeline crops {pipe.prompt_template_encode_start_idx}"
        )
    return tokenizer


def build() -> Any:
    """A HunyuanVideo 1.5 text-to-video pipeline with random weights (float32, CPU)."""
    from diffusers import AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer

    torch.manual_seed(WEIGHT_SEED)
    transformer = _transformer()
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(8, 16, 16, 16, 16),
        layers_per_block=1,
        spatial_compression_ratio=16,
        temporal_compression_ratio=4,
    )
    text_encoder = qwen25_vl_text_model(width=TEXT_WIDTH, layers=3, heads=2)
    glyph_tokenizer = ByT5Tokenizer()
    glyph_encoder = t5_text_encoder(glyph_tokenizer, width=TEXT_WIDTH, layers=1, heads=2)
    freeze(transformer, vae, text_encoder, glyph_encoder)
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder,
        tokenizer=None,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder_2=glyph_encoder,
        tokenizer_2=glyph_tokenizer,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    pipe.register_modules(tokenizer=_prompt_template_checked(pipe))
    pipe.tokenizer_max_length = TEXT_LENGTH
    pipe.tokenizer_2_max_length = GLYPH_LENGTH
    pipe.vision_num_semantic_tokens = IMAGE_TOKENS
    return pipe


SPECS = (
    ModelSpec(
        "demo:hunyuan-video15-tiny",
        build,
        ModelDefaults(width=64, height=64, steps=8, num_frames=9, fps=8, max_sequence_length=TEXT_LENGTH),
        "HunyuanVideo 1.5 text to video (Qwen2.5-VL + ByT5), guider CFG, random weights",
        family="hunyuan-video15",
        task="video",
    ),
)
