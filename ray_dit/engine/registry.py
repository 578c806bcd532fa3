"""Built-in models by id: how to build each pipeline and how to sample it when a request is silent.

The engine knows no model by name. Packages contribute models through the ``ray_dit.models``
entry-point group (``pyproject.toml``): each entry point is a function that returns
:class:`ModelSpec` objects, loaded the first time an id is looked up. ``ray_dit.demo`` registers
the offline demo models this way, and a team can ship its own model pack the same way without
touching ray_dit. Any id that is not registered is loaded with ``DiffusionPipeline.from_pretrained``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "ray_dit.models"


@dataclass(frozen=True, kw_only=True)
class ModelDefaults:
    """How to sample a model when the request leaves a field out (None: the pipeline's default)."""

    width: int | None = None
    height: int | None = None
    steps: int | None = None
    #: Video models only; None takes the pipeline's ``num_frames`` default.
    num_frames: int | None = None
    #: Frames per second written into MP4 outputs.
    fps: int = 16
    #: The text length the encoders were built for; tiny models have short position tables.
    max_sequence_length: int | None = None
    #: True-CFG pipelines (FLUX, Qwen-Image) run CFG only with a scale > 1 and a negative prompt:
    #: these fill a request that gave neither, for models trained to need it.
    true_cfg_scale: float | None = None
    negative_prompt: str | None = None
    #: The guidance scale of the model card, where it differs from the pipeline's default.
    guidance_scale: float | None = None
    #: An image-conditioned model whose pipeline signature leaves ``image`` optional although
    #: it cannot run without one (LTX image to video).
    needs_image: bool = False
    #: Fixed pipeline arguments of this model (a tiny build's ``_auto_resize=False``, say).
    call_options: Mapping[str, Any] = field(default_factory=dict)
    #: Warnings about a prompt the model can not draw (a small vocabulary's unknown words);
    #: None for models that take any text.
    prompt_check: Callable[[str], list[str]] | None = None

    def cfg_fields(self, request: Any) -> dict[str, Any]:
        """The CFG defaults for the fields ``request`` left out (None)."""
        names = ("true_cfg_scale", "negative_prompt", "guidance_scale")
        return {
            k: getattr(self, k) for k in names if getattr(request, k) is None and getattr(self, k) is not None
        }


TASKS = ("image", "video", "edit", "image-to-video")


@dataclass(frozen=True)
class ModelSpec:
    """One built-in model: ``build()`` returns its diffusers pipeline in float32 on the CPU."""

    id: str
    build: Callable[[], Any]
    defaults: ModelDefaults
    description: str = ""
    #: The architecture family (``flux``, ``wan``, ``qwen-image``, ...): what docs/models.md lists.
    family: str = ""
    #: What a request gets: one of :data:`TASKS`.
    task: str = "image"


_specs: dict[str, ModelSpec] = {}
_loaded = False
_lock = threading.Lock()


def register(spec: ModelSpec) -> None:
    """Add ``spec`` (tests and notebooks may register models directly, too)."""
    with _lock:
        _specs[spec.id] = spec


def _load_entry_points() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        provider: Callable[[], Iterable[ModelSpec]] = point.load()
        for spec in provider():
            register(spec)


def lookup(model_id: str) -> ModelSpec | None:
    """The spec registered under ``model_id``, or None (then it is a hub id or a local path)."""
    _load_entry_points()
    return _specs.get(model_id)


def in_registered_namespace(model_id: str) -> bool:
    """True for ``ns:name`` when some registered id starts with ``ns:`` (e.g. ``demo:``)."""
    namespace, colon, _ = model_id.partition(":")
    return bool(colon) and any(s.id.startswith(namespace + ":") for s in registered())


def registered() -> list[ModelSpec]:
    """Every registered model, in registration order."""
    _load_entry_points()
    return list(_specs.values())
