"""Load a diffusers pipeline (hub id, local path or built-in demo) onto a device."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from ray_dit.engine.demo_models import build_demo, is_demo

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelDefaults:
    """Sampling defaults for a model when the request leaves a field out."""

    width: int | None = None
    height: int | None = None
    steps: int | None = None
    num_frames: int | None = None
    fps: int = 16
    max_sequence_length: int | None = None
    true_cfg_scale: float | None = None  # used when the request leaves it out (true-CFG pipelines)
    negative_prompt: str | None = None  # ditto; true CFG runs only when there is one

    def cfg_fields(self, request: Any) -> dict[str, Any]:
        """The CFG defaults for the fields ``request`` left out (None)."""
        return {
            k: getattr(self, k) for k in ("true_cfg_scale", "negative_prompt") if getattr(request, k) is None
        }


# The demo models are tiny: their natural size is small, and their text encoders were built for
# short sequences.
DEMO_DEFAULTS = {
    # Trained at 64x64 with 12 T5 tokens; prompt adherence is measured with true CFG 4 vs "".
    "demo:shapes": ModelDefaults(64, 64, 28, None, 16, 12, true_cfg_scale=4.0, negative_prompt=""),
    "demo:flux-tiny": ModelDefaults(128, 128, 8, None, 16, 32),
    "demo:flux-large": ModelDefaults(256, 256, 20, None, 16, 32),
    "demo:wan-tiny": ModelDefaults(64, 64, 8, 9, 8, 32),
    "demo:wan22-tiny": ModelDefaults(64, 64, 8, 9, 8, 32),
}


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


def load_pipeline(model: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, ModelDefaults]:
    """Build or load the pipeline and move it to ``device`` in ``dtype``."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if is_demo(model):
        pipe = build_demo(model)
        defaults = DEMO_DEFAULTS.get(model, ModelDefaults())
    else:
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(model, **dtype_kwarg(torch_dtype))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"model={model!r}: could not be loaded as a diffusers pipeline "
                f"(a local directory with model_index.json, a hub id, or demo:<name>): {exc}"
            ) from None
        defaults = ModelDefaults(max_sequence_length=None)
    if is_demo(model) and torch_dtype != torch.float32:
        pipe.to(dtype=torch_dtype)  # demo weights are built in float32
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe, defaults


def call_parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(type(pipe).__call__).parameters)


def is_video_pipeline(pipe: Any) -> bool:
    return "num_frames" in call_parameters(pipe)
