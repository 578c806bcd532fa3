"""Qwen-Image: ``QwenImagePipeline`` with ``QwenImageTransformer2DModel`` (an MMDiT of dual-stream
blocks), ``AutoencoderKLQwenImage`` (Wan-style causal 3D VAE, 8x) and a Qwen2.5-VL text encoder
(``Qwen2_5_VLForConditionalGeneration``, its last hidden state after the chat template).

Stands for Qwen/Qwen-Image (20B MMDiT, Qwen2.5-VL-7B). Tiny: 2 transformer blocks of 2x16 heads,
a 2-layer 32-wide Qwen2.5-VL (with a 1-block vision tower that text-to-image never runs), a VAE of
base width 8 with the real 16 latent channels and their statistics, and a Qwen2 tokenizer made in
memory (``_qwen_text``) whose template is exactly the 34 tokens the pipeline drops. Like the real
model it samples with true CFG (scale 4 and a blank negative prompt) unless a request says otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import freeze
from ray_dit.demo.zoo._qwen_text import qwen25_vl, qwen_tokenizer, template_tokens
from ray_dit.engine.registry import ModelDefaults, ModelSpec

WEIGHT_SEED = 20261130 + 11
TEXT_WIDTH = 32


def _scheduler() -> Any:
    """Qwen-Image's schedule: resolution-dependent exponential shift, ending at sigma 0.02."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )


def build() -> Any:
    """A Qwen-Image text-to-image pipeline with random weights (float32, CPU)."""
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(WEIGHT_SEED)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,  # 16 latent channels in 2x2 patches
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    text_encoder = qwen25_vl(width=TEXT_WIDTH, layers=2, heads=2)
    freeze(transformer, vae, text_encoder)
    pipe = QwenImagePipeline(
        scheduler=_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=None, transformer=transformer
    )
    template = pipe.prompt_template_encode
    tokenizer = qwen_tokenizer([template])
    prefix = template_tokens(tokenizer, template.split("{}")[0])
    if prefix != pipe.prompt_template_encode_start_idx:  # the pipeline would cut into the prompt
        raise RuntimeError(
            f"template prefix is {prefix} tokens, the pipeline drops {pipe.prompt_template_encode_start_idx}"
        )
    pipe.register_modules(tokenizer=tokenizer)
    return pipe


SPECS = (
    ModelSpec(
        "demo:qwen-image-tiny",
        build,
        ModelDefaults(
            width=64, height=64, steps=8, max_sequence_length=32, true_cfg_scale=4.0, negative_prompt=" "
        ),
        "Qwen-Image text to image (MMDiT, Qwen2.5-VL), true CFG, random weights",
        family="qwen-image",
        task="image",
    ),
)
