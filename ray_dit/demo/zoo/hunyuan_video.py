"""HunyuanVideo: ``HunyuanVideoPipeline`` with ``HunyuanVideoTransformer3DModel`` (double- then
single-stream blocks, guidance embedded in the timestep), two text encoders (a Llama decoder,
``LlamaModel`` + ``LlamaTokenizerFast``, read through the pipeline's chat template; CLIP's pooled
output, ``CLIPTextModel`` + ``CLIPTokenizer``) and the causal 3D ``AutoencoderKLHunyuanVideo``
(8x spatial, 4x temporal).

Stands for hunyuanvideo-community/HunyuanVideo (tencent/HunyuanVideo 1.0, text to video). Made
tiny: 2 double-stream and 2 single-stream blocks of width 32, a 1-layer token refiner, a 3-layer
Llama of width 32 (the pipeline reads the third hidden state from the end, as from the real 32
layers), a 2-layer CLIP of width 32, and a 3D VAE of 8 channels per stage. The Llama tokenizer
knows the words and header tokens of the pipeline's template: its prefix is 96 tokens here (95,
the pipeline's ``crop_start``, in the real one), so the crop keeps the whole prompt.

Guidance is distilled: ``guidance_scale`` feeds the guidance embedding (one transformer call per
step); a second, unconditional call runs only for ``true_cfg_scale`` > 1 with a negative prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import clip_text_encoder, clip_tokenizer, freeze
from ray_dit.demo.zoo._llm_text import llama_text_encoder, llama_tokenizer, words_of
from ray_dit.engine.registry import ModelDefaults, ModelSpec

TEXT_LENGTH = 32  # Llama tokens after the template (CLIP always reads 77)
TEMPLATE_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def _vae() -> Any:
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        latent_channels=16,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    )


def build() -> Any:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    torch.manual_seed(20261130 + 14)
    template = DEFAULT_PROMPT_TEMPLATE["template"]
    tokenizer = llama_tokenizer(words_of(template, specials=TEMPLATE_TOKENS), TEMPLATE_TOKENS)
    text_encoder = llama_text_encoder(tokenizer, width=32, layers=3, heads=2)
    tokenizer_2 = clip_tokenizer(words_of())
    text_encoder_2 = clip_text_encoder(tokenizer_2, width=32, layers=2, heads=4, max_positions=77)
    vae = _vae()
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_single_layers=2,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=32,
        pooled_projection_dim=32,
        rope_axes_dim=(4, 6, 6),
    )
    freeze(text_encoder, text_encoder_2, vae, transformer)
    return HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


SPECS = (
    ModelSpec(
        "demo:hunyuan-video-tiny",
        build,
        ModelDefaults(width=64, height=64, steps=8, num_frames=9, fps=8, max_sequence_length=TEXT_LENGTH),
        "HunyuanVideo text to video (Llama + CLIP, guidance embedded), random weights",
        family="hunyuan-video",
        task="video",
    ),
)
