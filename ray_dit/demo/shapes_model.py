"""The ``demo:shapes`` pipeline: a FLUX-architecture model trained on the shapes world.

The architecture is FluxPipeline's (CLIP + T5 text encoders, AutoencoderKL, FluxTransformer2D,
flow-matching Euler), shrunk to train on a 2-core CPU in under an hour (``make demo-model``).
Tokenizers have one token per caption word, built in memory like the random demo pipelines'; the
trained weights ship inside the package, so loading needs no network and no training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ray_dit.demo.shapes_world import IMAGE_SIZE, prompt_warnings, vocabulary
from ray_dit.demo.tiny_components import (
    autoencoder_kl,
    clip_text_encoder,
    clip_tokenizer,
    freeze,
    set_lowercase,
    t5_text_encoder,
    t5_tokenizer,
)
from ray_dit.engine.loader import dtype_kwarg
from ray_dit.engine.registry import ModelDefaults, ModelSpec

WEIGHTS_DIR = Path(__file__).parent / "weights" / "shapes"
CLIP_LENGTH = 16  # BOS + 8 words + EOS fits with room to spare
T5_LENGTH = 12  # FluxPipeline's max_sequence_length for this model
NUM_STEPS = 28  # the sampling steps its adherence is measured at
TRUE_CFG_SCALE = 2.0  # trained with 10% empty captions; 2 draws rounder circles than 4 (docs/demo_model.md)


@dataclass(frozen=True)
class ShapesArch:
    """Sizes of every component (the training script may override them)."""

    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)  # 4 blocks: 8x downsampling
    # GroupNorm removes each group's mean: with 1-2 channels per group a flat color region's
    # absolute color is normalised away, so keep >= 4 channels per group.
    vae_groups: int = 4
    latent_channels: int = 16
    heads: int = 6  # 192 wide: width is what makes circles round (docs/demo_model.md)
    head_dim: int = 32
    double_blocks: int = 2
    single_blocks: int = 4
    rope_axes: tuple[int, int, int] = (8, 12, 12)
    scheduler_shift: float = 2.0


def build_untrained(arch: ShapesArch | None = None, seed: int = 0) -> Any:
    """A FluxPipeline with freshly initialised weights of the ``arch`` sizes (in training mode)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    arch = arch or ShapesArch()
    torch.manual_seed(seed)
    # One token per caption word; T5's lowercases (as CLIP's does), so "A Red Circle" reads "a red circle".
    clip_tok, t5_tok = clip_tokenizer(vocabulary(), CLIP_LENGTH), t5_tokenizer(vocabulary(), lowercase=True)
    text = {"width": arch.text_dim, "layers": arch.text_layers, "heads": arch.text_heads}
    clip = clip_text_encoder(clip_tok, **text, max_positions=CLIP_LENGTH)
    t5 = t5_text_encoder(
        t5_tok, **text, relative_attention_num_buckets=16, relative_attention_max_distance=32
    )
    vae = autoencoder_kl(
        arch.vae_channels,
        groups=arch.vae_groups,
        latent=arch.latent_channels,
        sample_size=IMAGE_SIZE,
        shift_factor=0.0,
        scaling_factor=1.0,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=arch.scheduler_shift, use_dynamic_shifting=False)
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=_transformer(arch),
    )


def _transformer(arch: ShapesArch) -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * arch.latent_channels,
        num_layers=arch.double_blocks,
        num_single_layers=arch.single_blocks,
        attention_head_dim=arch.head_dim,
        num_attention_heads=arch.heads,
        joint_attention_dim=arch.text_dim,
        pooled_projection_dim=arch.text_dim,
        guidance_embeds=False,
        axes_dims_rope=arch.rope_axes,
    )


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No progress bars for a 15 MB model that loads in a blink (they clutter logs and test output)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in states:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()


def load_shapes(path: str | Path | None = None) -> Any:
    """The shipped ``demo:shapes`` pipeline, offline, every module in eval mode."""
    from diffusers import FluxPipeline

    directory = Path(path) if path is not None else WEIGHTS_DIR
    if not (directory / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{directory}: no trained demo:shapes weights here; run `make demo-model` to train them"
        )
    with _quiet_loading():
        pipe = FluxPipeline.from_pretrained(
            str(directory), local_files_only=True, **dtype_kwarg(torch.float32)
        )
    set_lowercase(pipe.tokenizer_2)
    freeze(*(c for c in pipe.components.values() if isinstance(c, torch.nn.Module)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


SPEC = ModelSpec(
    "demo:shapes",
    load_shapes,
    ModelDefaults(
        width=IMAGE_SIZE,
        height=IMAGE_SIZE,
        steps=NUM_STEPS,
        max_sequence_length=T5_LENGTH,
        true_cfg_scale=TRUE_CFG_SCALE,
        negative_prompt="",
        prompt_check=prompt_warnings,
    ),
    "colored shapes, trained (the embedded default)",
    family="flux",
)
