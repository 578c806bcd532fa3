"""What each built-in model is, for ``ray-dit models`` and docs/models.md: its family, pipeline
class, task, sampling defaults and (built and probed) how it runs classifier-free guidance."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ray_dit.api import GenerationRequest
from ray_dit.engine.registry import ModelSpec
from ray_dit.inputs import placeholder_image

#: The CFG settings a model is probed under, as a request's fields: its defaults, guidance off
#: and on (``guidance_scale``), and true CFG (``true_cfg_scale`` with a negative prompt).
CFG_SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "guidance=1": {"guidance_scale": 1.0},
    "guidance=5": {"guidance_scale": 5.0},
    "true_cfg=4+negative": {"true_cfg_scale": 4.0, "negative_prompt": "blurry"},
}


@dataclass(frozen=True)
class ModelRow:
    """One line of the catalog; the probed fields are None unless the model was built."""

    id: str
    family: str
    task: str
    width: int | None
    height: int | None
    steps: int | None
    num_frames: int | None
    description: str
    pipeline: str | None = None
    build_s: float | None = None
    #: Transformer calls per step under each of :data:`CFG_SETTINGS` (2: the branches run apart).
    calls_per_step: dict[str, int] | None = None
    #: Whether compatible requests share a pipeline call (``Engine.batchable``: probed).
    batches: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cfg_mode(self) -> str:
        """Transformer calls per step under each probed setting (2: CFG's branches run apart)."""
        if self.calls_per_step is None:
            return "-"
        return ", ".join(f"{name}: {calls}" for name, calls in self.calls_per_step.items())


def describe(spec: ModelSpec, probe: bool = False) -> ModelRow:
    """The catalog row of ``spec``; with ``probe``, build it on the CPU and measure its CFG calls."""
    d = spec.defaults
    row = ModelRow(
        spec.id, spec.family, spec.task, d.width, d.height, d.steps, d.num_frames, spec.description
    )
    if not probe:
        return row
    from ray_dit.config import CacheDitSettings
    from ray_dit.engine.engine import Engine, EngineOptions

    started = time.perf_counter()
    pipe = spec.build()
    build_s = time.perf_counter() - started
    engine = Engine(EngineOptions(model=spec.id, device="cpu"), CacheDitSettings(), pipe, spec.defaults)
    image = placeholder_image() if engine.image_input else None  # image-conditioned models
    calls = {
        name: engine.calls_per_step(GenerationRequest(prompt="a red circle", seed=0, image=image, **fields))
        for name, fields in CFG_SETTINGS.items()
    }
    probed = {"pipeline": type(pipe).__name__, "build_s": build_s, "calls_per_step": calls}
    return ModelRow(**{**row.as_dict(), **probed, "batches": engine.batchable()})


def table(rows: list[ModelRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| id | family | task | pipeline | size | steps | frames | CFG (transformer calls per step) | batches |",
        "|---|---|---|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        size = f"{r.width}x{r.height}" if r.width and r.height else "-"
        lines.append(
            f"| {r.id} | {r.family or '-'} | {r.task} | {r.pipeline or '-'} | {size} | {r.steps or '-'} "
            f"| {r.num_frames or '-'} | {r.cfg_mode()} | {_yes_no(r.batches)} |"
        )
    return "\n".join(lines)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")
