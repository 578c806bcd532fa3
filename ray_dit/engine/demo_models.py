"""Tiny diffusers pipelines built offline, so ray_dit runs on a laptop CPU with no download.

They have the real architectures (FLUX: FluxTransformer2DModel + CLIP + T5 + AutoencoderKL +
FlowMatchEuler; Wan: WanTransformer3DModel + UMT5 + AutoencoderKLWan) with random weights drawn
from a fixed seed, so the same name gives the same weights on every machine. Tokenizers are built
in memory from a byte-level vocabulary, which needs neither vocab files nor the hub.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

DEMO_PREFIX = "demo:"
_WEIGHT_SEED = 20261128


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def make_clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    for s in symbols:
        vocab.setdefault(s + "</w>", len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def make_t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁", -2.0)]
    pieces += [(chr(c), -5.0) for c in range(32, 127)]
    pieces += [("▁" + chr(c), -4.0) for c in range(33, 127)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _eval_all(*modules: torch.nn.Module) -> None:
    """Fresh modules are in training mode; dropout would make a seed non-deterministic."""
    for module in modules:
        module.eval()
        module.requires_grad_(False)


def build_flux_tiny(**transformer_overrides: Any) -> Any:
    """A FLUX-architecture pipeline of ~0.3M parameters (overrides grow the transformer)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(_WEIGHT_SEED)
    clip_tok = make_clip_tokenizer()
    t5_tok = make_t5_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
            attention_dropout=0.0,
            dropout=0.0,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=16,
        sample_size=128,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        use_quant_conv=False,
        use_post_quant_conv=False,
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
    config.update(transformer_overrides)
    transformer = FluxTransformer2DModel(**config)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    _eval_all(clip, t5, vae, transformer)
    return FluxPipeline(
        scheduler=scheduler,
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


def _wan_transformer() -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
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


def build_wan_tiny(two_experts: bool = False) -> Any:
    """A Wan-architecture text-to-video pipeline (UMT5 + AutoencoderKLWan + WanTransformer3D).

    ``two_experts`` adds Wan 2.2's low-noise expert (``transformer_2``, boundary 0.875), the
    case that the ``SGLANG_CACHE_DIT_SECONDARY_*`` settings exist for.
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(_WEIGHT_SEED + 1)
    tok = make_t5_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    transformer = _wan_transformer()
    transformer_2 = _wan_transformer() if two_experts else None
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    _eval_all(*(m for m in (text_encoder, vae, transformer, transformer_2) if m is not None))
    return WanPipeline(
        tokenizer=tok,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.875 if two_experts else None,
        scheduler=scheduler,
    )


def load_shapes() -> Any:
    """The trained shapes-world FLUX pipeline shipped in ``ray_dit/demo/weights/shapes``."""
    from ray_dit.demo.shapes_model import load_shapes as load

    return load()


DEMO_MODELS: dict[str, Callable[[], Any]] = {
    "shapes": load_shapes,
    "flux-tiny": build_flux_tiny,
    "flux-large": build_flux_large,
    "wan-tiny": build_wan_tiny,
    "wan22-tiny": lambda: build_wan_tiny(two_experts=True),
}


def is_demo(model: str) -> bool:
    return model.startswith(DEMO_PREFIX)


def build_demo(model: str) -> Any:
    """Build ``demo:<name>``; ValueError lists the names that exist."""
    name = model[len(DEMO_PREFIX) :] if is_demo(model) else model
    if name not in DEMO_MODELS:
        known = ", ".join(DEMO_PREFIX + k for k in DEMO_MODELS)
        raise ValueError(f"model={model!r}: unknown demo model; known demo models: {known}")
    return DEMO_MODELS[name]()
