"""FLUX.2: ``Flux2KleinPipeline`` ([klein]) and ``Flux2Pipeline`` ([dev]), both with
``Flux2Transformer2DModel`` (double-stream then single-stream blocks, shared modulation) and
``AutoencoderKLFlux2`` (32 latent channels, packed 2x2, batch-norm latent statistics). The prompt
is three hidden states of an LLM, stacked: layers 9, 18, 27 of Qwen3 (``Qwen3ForCausalLM``, Qwen3's
chat template with thinking off) for [klein]; layers 10, 20, 30 of Mistral Small 3.1
(``Mistral3ForConditionalGeneration``, a system prompt) for [dev].

[klein] stands for black-forest-labs/FLUX.2-klein-base-4B (Qwen3-4B; the step-distilled
FLUX.2-klein-4B is the same with ``is_distilled=True``, which turns CFG off): CFG is
``guidance_scale`` > 1 (default 4), a second transformer call per step on the empty prompt.
[dev] stands for black-forest-labs/FLUX.2-dev (32B, Mistral Small 3.1 24B): guidance-distilled,
``guidance_scale`` is an embedding, one call per step. Tiny: 1 double and 1 single block of 2x16
heads, 16-wide encoders just deep enough for the layers read (27 Qwen3, 30 Mistral layers; the
Mistral with a 1-block Pixtral vision tower), a 4-level 8x VAE of 8-16 channels, and byte-level
BPE tokenizers made in memory (``_qwen_text``).
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import freeze
from ray_dit.demo.zoo._qwen_text import VOCAB_SIZE, byte_bpe, qwen3, qwen_tokenizer
from ray_dit.engine.registry import ModelDefaults, ModelSpec

WEIGHT_SEED = 20261130 + 13
TEXT_WIDTH = 16
TEXT_LAYERS = 27  # the pipeline stacks hidden states 9, 18 and 27
LATENT_CHANNELS = 32
MISTRAL_LAYERS = 30  # FLUX.2 [dev] stacks hidden states 10, 20 and 30
MISTRAL_SPECIALS = (
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
)
#: Mistral Small 3.1's chat format, for messages whose content is a list of text/image parts.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{% elif message['role'] == 'user' %}[INST]{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}[IMG]{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'system' %}[/SYSTEM_PROMPT]{% elif message['role'] == 'user' %}[/INST]"
    "{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def _vae() -> Any:
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=64,
    )


def _mistral_id(token: str) -> int:
    return 256 + MISTRAL_SPECIALS.index(token)


def _mistral_tokenizer() -> Any:
    """A byte-level BPE (as Mistral's Tekken is) in which each word of FLUX.2's system prompt is one
    token, so the prompt keeps most of a short sequence. The real pipeline holds a
    ``PixtralProcessor`` around it, which needs torchvision; text to image only calls
    ``apply_chat_template``, which the tokenizer answers alike."""
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    vocab, merges = byte_bpe([SYSTEM_MESSAGE], pre, MISTRAL_SPECIALS)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer, backend.decoder = pre, decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens=list(MISTRAL_SPECIALS[4:]),
        chat_template=MISTRAL_TEMPLATE,
    )


def _mistral3(width: int) -> Any:
    """Mistral Small 3.1's architecture (``Mistral3ForConditionalGeneration``): a 1-block Pixtral
    vision tower that text to image never runs, and a ``width``-wide Mistral of 30 layers."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=MISTRAL_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=width // 2,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000000.0},
        sliding_window=None,
        pad_token_id=_mistral_id("<pad>"),
        bos_token_id=_mistral_id("<s>"),
        eos_token_id=_mistral_id("</s>"),
    )
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
    )
    config = Mistral3Config(
        text_config={"model_type": "mistral", **text},
        vision_config={"model_type": "pixtral", **vision},
        image_token_index=_mistral_id("[IMG]"),
        spatial_merge_size=2,
        tie_word_embeddings=False,
    )
    return Mistral3ForConditionalGeneration(config)


def _transformer(text_width: int, guidance_embeds: bool) -> Any:
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # latents packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * text_width,  # three stacked hidden states
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def _scheduler() -> Any:
    """FLUX.2's schedule: an exponential shift whose mu the pipeline fits to size and steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential"
    )


def build_klein() -> Any:
    """A FLUX.2 [klein] text-to-image pipeline with random weights (float32, CPU)."""
    from diffusers import Flux2KleinPipeline

    torch.manual_seed(WEIGHT_SEED)
    transformer = _transformer(TEXT_WIDTH, guidance_embeds=False)
    vae = _vae()
    text_encoder = qwen3(width=TEXT_WIDTH, layers=TEXT_LAYERS, heads=2, causal_lm=True)
    freeze(transformer, vae, text_encoder)
    return Flux2KleinPipeline(
        scheduler=_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=qwen_tokenizer(),
        transformer=transformer,
        is_distilled=False,
    )


def build_dev() -> Any:
    """A FLUX.2 [dev] text-to-image pipeline with random weights (float32, CPU)."""
    from diffusers import Flux2Pipeline

    torch.manual_seed(WEIGHT_SEED + 100)
    transformer = _transformer(TEXT_WIDTH, guidance_embeds=True)
    vae = _vae()
    text_encoder = _mistral3(TEXT_WIDTH)
    freeze(transformer, vae, text_encoder)
    return Flux2Pipeline(
        scheduler=_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_mistral_tokenizer(),
        transformer=transformer,
    )


SPECS = (
    ModelSpec(
        "demo:flux2-klein-tiny",
        build_klein,
        ModelDefaults(width=64, height=64, steps=8, max_sequence_length=32),
        "FLUX.2 [klein] text to image (Qwen3 encoder), CFG, random weights",
        family="flux2",
        task="image",
    ),
    ModelSpec(
        "demo:flux2-tiny",
        build_dev,
        ModelDefaults(width=64, height=64, steps=8, max_sequence_length=64),
        "FLUX.2 [dev] text to image (Mistral Small 3.1 encoder), guidance-distilled, random weights",
        family="flux2",
        task="image",
    ),
)
