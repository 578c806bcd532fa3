"""HiDream-I1: ``HiDreamImagePipeline`` with ``HiDreamImageTransformer2DModel`` (double- then
single-stream blocks with mixture-of-experts feed-forwards), four text encoders (two
``CLIPTextModelWithProjection`` + ``CLIPTokenizer``, ``T5EncoderModel`` + ``T5Tokenizer``,
``LlamaForCausalLM`` + a Llama BPE tokenizer, whose every layer's hidden state feeds one block)
and FLUX's ``AutoencoderKL`` (16 latent channels, 8x).

Stands for HiDream-ai/HiDream-I1-Full (Dev and Fast share the classes). Made tiny: 1 double- and
1 single-stream block of width 32 (4 routed experts, 2 active, as the real ones), two 2-layer
CLIPs of width 32, a 2-layer T5 and a 2-layer Llama of width 32 (one hidden state per block),
and a 4-stage VAE of 8-16 channels. The pipeline scales every request to the area of its
``default_sample_size`` (a constant 128 latent pixels, 1024 px, in diffusers) keeping the aspect
ratio; the tiny build sets it to 8 (64 px). Classifier-free guidance runs batched: one call per step.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import autoencoder_kl, clip_tokenizer, freeze, t5_text_encoder, t5_tokenizer
from ray_dit.demo.zoo._llm_text import llama_text_encoder, llama_tokenizer, words_of
from ray_dit.engine.registry import ModelDefaults, ModelSpec

TEXT_LENGTH = 32  # every encoder's length here (the CLIPs read at most 77)
WIDTH = 32


def _clip(tok: Any) -> Any:
    """CLIP with its projection head: HiDream pools both CLIPs' projected embeddings."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=WIDTH,
            intermediate_size=2 * WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=WIDTH,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            attention_dropout=0.0,
            dropout=0.0,
        )
    )


def build() -> Any:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        HiDreamImagePipeline,
        HiDreamImageTransformer2DModel,
    )

    torch.manual_seed(20261130 + 15)
    clip_tok, clip_tok_2 = clip_tokenizer(words_of()), clip_tokenizer(words_of())
    clip, clip_2 = _clip(clip_tok), _clip(clip_tok_2)
    t5_tok = t5_tokenizer(words_of())
    t5 = t5_text_encoder(t5_tok, width=WIDTH, layers=2, heads=4)
    llama_tok = llama_tokenizer(words_of(), max_length=128)
    llama = llama_text_encoder(llama_tok, width=WIDTH, layers=2, heads=2, causal_lm=True)
    vae = autoencoder_kl(
        (8, 16, 16, 16), groups=8, latent=16, sample_size=64, shift_factor=0.1159, scaling_factor=0.3611
    )
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        caption_channels=[WIDTH, WIDTH],  # T5, Llama
        text_emb_dim=2 * WIDTH,  # both CLIPs' projections
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(8, 4, 4),
        max_resolution=(32, 32),
        llama_layers=(0, 1),
    )
    freeze(clip, clip_2, t5, llama, vae, transformer)
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=clip_2,
        tokenizer_2=clip_tok_2,
        text_encoder_3=t5,
        tokenizer_3=t5_tok,
        text_encoder_4=llama,
        tokenizer_4=llama_tok,
        transformer=transformer,
    )
    # The pipeline rescales every request to this many latent pixels squared (128: 1024 px images)
    # before sampling; the tiny model's area is 64 px squared.
    pipe.default_sample_size = 8
    return pipe


SPECS = (
    ModelSpec(
        "demo:hidream-tiny",
        build,
        ModelDefaults(width=64, height=64, steps=8, max_sequence_length=TEXT_LENGTH),
        "HiDream-I1 text to image (CLIP x2 + T5 + Llama, MoE blocks), random weights",
        family="hidream",
        task="image",
    ),
)
