"""Load a diffusers pipeline (a registered id, a hub id or a local path) onto a device."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from ray_dit.engine import registry
from ray_dit.engine.family_defaults import family_defaults
from ray_dit.engine.registry import ModelDefaults
from ray_dit.errors import InvalidRequest

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ValueError(f"device={device!r}: must be one of auto, cpu, cuda, cuda:N, mps")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype argument: diffusers 0.42 renamed ``torch_dtype`` to ``dtype``
    (the old name warns) and older releases do not know the new one."""
    from diffusers import __version__
    from packaging.version import Version

    return {"dtype" if Version(__version__).release >= (0, 42) else "torch_dtype": dtype}


def load_pipeline(
    model: str, device: str = "auto", dtype: str = "auto", transformer: str | None = None
) -> tuple[Any, ModelDefaults]:
    """Build a registered model or load a diffusers pipeline, on ``device`` in ``dtype``;
    ``transformer`` replaces the pipeline's transformer with a checkpoint of its own."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    spec = registry.lookup(model)
    if spec is not None and transformer is not None:
        raise InvalidRequest(
            f"transformer={transformer!r}: only for a pipeline loaded from disk or the hub", "transformer"
        )
    if spec is not None:
        pipe, defaults = spec.build(), spec.defaults
        if torch_dtype != torch.float32:
            pipe.to(dtype=torch_dtype)  # built-in weights are built in float32
    elif registry.in_registered_namespace(model):  # "demo:typo" must not go to the hub
        known = ", ".join(s.id for s in registry.registered())
        raise InvalidRequest(f"model={model!r}: unknown built-in model; known models: {known}", "model")
    else:
        pipe = _from_pretrained(model, torch_dtype, transformer)
        # A checkpoint samples as its family's model card says, where a request is silent.
        defaults = family_defaults(type(pipe).__name__) or ModelDefaults()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe, defaults


def _from_pretrained(model: str, torch_dtype: torch.dtype, transformer: str | None = None) -> Any:
    from diffusers import DiffusionPipeline

    components = {"transformer": _transformer(model, transformer, torch_dtype)} if transformer else {}
    try:
        return DiffusionPipeline.from_pretrained(model, **components, **dtype_kwarg(torch_dtype))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            f"model={model!r}: could not be loaded as a diffusers pipeline "
            f"(a local directory with model_index.json, a hub id, or a built-in id): {exc}",
            "model",
        ) from None


def _transformer(model: str, source: str, torch_dtype: torch.dtype) -> Any:
    """The transformer class ``model``'s ``model_index.json`` names, loaded from ``source``: a
    directory or hub id holding that transformer (or a pipeline, whose ``transformer/`` is used)."""
    import diffusers
    from diffusers import DiffusionPipeline

    try:
        _, class_name = DiffusionPipeline.load_config(model)["transformer"]
        loader = getattr(diffusers, class_name)
        nested = Path(source, "transformer", "config.json").is_file()
        return loader.from_pretrained(
            source, **({"subfolder": "transformer"} if nested else {}), **dtype_kwarg(torch_dtype)
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidRequest(
            f"transformer={source!r}: could not be loaded as {model!r}'s transformer "
            f"(a directory or hub id with its config.json and weights): {exc}",
            "transformer",
        ) from None


def call_parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(type(pipe).__call__).parameters)


def is_video_pipeline(pipe: Any) -> bool:
    return "num_frames" in call_parameters(pipe)


# What video pipelines call their VAE's temporal compression (frames are k * factor + 1).
_TEMPORAL_ATTRIBUTES = (
    "vae_scale_factor_temporal",
    "vae_temporal_scale_factor",
    "vae_temporal_compression_ratio",
)


def temporal_factor(pipe: Any) -> int:
    """Frames a video pipeline's latent frame stands for (4 for Wan, 6 for Mochi, 8 for LTX)."""
    patches = getattr(getattr(getattr(pipe, "transformer", None), "config", None), "patch_size_t", None)
    patches = patches if isinstance(patches, int) and patches > 0 else 1  # CogVideoX 1.5: 2
    for name in _TEMPORAL_ATTRIBUTES:
        value = getattr(pipe, name, None)
        if isinstance(value, int) and value > 0:
            return value * patches
    return 4 * patches


def image_input(params: dict[str, inspect.Parameter]) -> str | None:
    """Whether a pipeline takes an input image: "required", "optional" (edit models that also
    generate from text alone) or None."""
    param = params.get("image")
    if param is None:
        return None
    return "required" if param.default is param.empty else "optional"
