"""Random-weight pipelines of real architectures, built offline in a second, for tests and benchmarks.

FLUX (FluxTransformer2DModel + CLIP + T5 + AutoencoderKL + FlowMatchEuler) and Wan (WanTransformer3D
+ UMT5 + AutoencoderKLWan), with weights drawn from a fixed seed so the same id gives the same
weights on every machine. Their sampling defaults are small because the models are: short text
(their position tables are short) and small images.
"""

from __future__ import annotations

from typing import Any

import torch

from ray_dit.demo.tiny_components import (
    autoencoder_kl,
    clip_text_encoder,
    clip_tokenizer,
    freeze,
    t5_text_encoder,
    t5_tokenizer,
)
from ray_dit.engine.registry import ModelDefaults, ModelSpec

WEIGHT_SEED = 20261128
TEXT_LENGTH = 32  # tokens the tiny text encoders are called with


def build_flux_tiny(**transformer_overrides: Any) -> Any:
    """A FLUX-architecture pipeline of ~0.3M parameters (overrides grow the transformer)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(WEIGHT_SEED)
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    clip = clip_text_encoder(clip_tok, width=32, layers=2, heads=4, max_positions=77)
    t5 = t5_text_encoder(t5_tok, width=32, layers=2, heads=4)
    vae = autoencoder_kl(
        (8, 16, 16, 16), groups=8, latent=16, sample_size=128, shift_factor=0.0609, scaling_factor=1.5035
    )
    config: dict[str, Any] = dict(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    transformer = FluxTransformer2DModel(**{**config, **transformer_overrides})
    freeze(clip, t5, vae, transformer)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def build_flux_large() -> Any:
    """A random FLUX-shaped transformer big enough that blocks dominate a CPU run (benchmarks)."""
    return build_flux_tiny(
        num_layers=4,
        num_single_layers=8,
        attention_head_dim=64,
        num_attention_heads=4,
        axes_dims_rope=(16, 24, 24),
    )


#: The tiny Wan transformer's config; Wan-architecture families (SkyReels-V2, Wan image to video)
#: start from it.
WAN_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)


def _wan_transformer() -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**WAN_TRANSFORMER)


def build_wan_tiny(two_experts: bool = False) -> Any:
    """A Wan-architecture text-to-video pipeline (UMT5 + AutoencoderKLWan + WanTransformer3D).

    ``two_experts`` adds Wan 2.2's low-noise expert (``transformer_2``, boundary 0.875), the
    case that the ``SGLANG_CACHE_DIT_SECONDARY_*`` settings exist for.
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(WEIGHT_SEED + 1)
    tok = t5_tokenizer()
    text_encoder = t5_text_encoder(tok, width=32, layers=2, heads=4, umt5=True)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = _wan_transformer()
    transformer_2 = _wan_transformer() if two_experts else None
    freeze(text_encoder, vae, transformer, transformer_2)
    return WanPipeline(
        tokenizer=tok,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.875 if two_experts else None,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def _defaults(size: int, steps: int, **video: int) -> ModelDefaults:
    return ModelDefaults(width=size, height=size, steps=steps, max_sequence_length=TEXT_LENGTH, **video)


WAN_DEFAULTS = _defaults(64, 8, num_frames=9, fps=8)
SPECS = (
    ModelSpec(
        "demo:flux-tiny",
        build_flux_tiny,
        _defaults(128, 8),
        "FLUX text to image, random weights",
        family="flux",
    ),
    ModelSpec(
        "demo:flux-large", build_flux_large, _defaults(256, 20), "FLUX, a 17.9M transformer", family="flux"
    ),
    ModelSpec(
        "demo:wan-tiny", build_wan_tiny, WAN_DEFAULTS, "Wan 2.1 text to video", family="wan", task="video"
    ),
    ModelSpec(
        "demo:wan22-tiny",
        lambda: build_wan_tiny(two_experts=True),
        WAN_DEFAULTS,
        "Wan 2.2 text to video, two experts",
        family="wan",
        task="video",
    ),
)
