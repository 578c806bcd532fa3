"""Cache-DiT speed-up on every registered model: one Markdown row per model.

Each model is built once and run through ray_dit's Engine at its default size (and frame count)
for ``--steps`` steps, with caching off and with a DBCache threshold that caches on random weights
(F1B0, 2 warm-up steps, R0.9: SGLang's 0.24 caches nothing on them, see docs/caching.md). Each
setting gets one untimed warm-up run, then the median of ``--runs`` timed runs. The row also gives
what the cache did (cached steps, the fraction of transformer block evaluations skipped) and the
transformer calls one step makes at the model's default CFG setting (2: CFG's branches run apart).
Image-conditioned models (edit, image to video) get a gradient PNG at their default size as input.

On CUDA the pipeline is moved with ``pipe.to(device, dtype)`` and every timed run is bracketed by
torch.cuda.synchronize(). The demo models are registered here when no ``ray_dit.models`` entry
point provided them, so the benchmark runs from a plain checkout on PYTHONPATH.

Usage: python benchmarks/zoo_speedup.py [--models demo:flux-tiny,demo:wan-tiny] [--steps 12]
       [--runs 3] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from cache_speedup import Target, model_spec  # the sibling script: device/dtype, demo registration

from ray_dit.api import GenerationRequest
from ray_dit.config import cache_dit_from_env, parse_overrides
from ray_dit.engine import Engine, EngineOptions
from ray_dit.engine.loader import DTYPES
from ray_dit.engine.registry import ModelSpec, registered

CACHING = {"residual_diff_threshold": 0.9, "max_warmup_steps": 2}
PROMPT = "a red circle on a blue background"
#: Tasks whose pipelines take an input image (registry.TASKS).
IMAGE_TASKS = ("edit", "image-to-video")


@dataclass(frozen=True)
class Row:
    model: str
    family: str
    pipeline: str
    seconds_off: float
    seconds_on: float
    cached: str
    skipped: float
    calls_per_step: int

    def markdown(self) -> str:
        speedup = self.seconds_off / self.seconds_on
        return (
            f"| {self.model} | {self.family} | {self.pipeline} | {self.seconds_off:.3f} | "
            f"{self.seconds_on:.3f} | {speedup:.2f}x | {self.cached} | {self.skipped:.1%} | "
            f"{self.calls_per_step} |"
        )


def make_engine(spec: ModelSpec, target: Target) -> Engine:
    """``spec``'s pipeline on the target device and dtype, with cache-dit enabled by environment."""
    pipe = spec.build()  # float32 on the CPU
    if target.cuda or DTYPES[target.dtype] != torch.float32:
        pipe.to(target.device, DTYPES[target.dtype])
    pipe.set_progress_bar_config(disable=True)
    return Engine(
        EngineOptions(model=spec.id, device=target.device, dtype=target.dtype),
        cache_dit_from_env({"SGLANG_CACHE_DIT_ENABLED": "true"}),
        pipe,
        spec.defaults,
    )


def median_seconds(
    engine: Engine, request: GenerationRequest, runs: int, target: Target
) -> tuple[float, Any]:
    """Median wall time of ``runs`` generations after the target's warm-ups; the last result."""
    for _ in range(target.warmup):
        engine.generate(request)
    times, result = [], None
    for _ in range(runs):
        target.sync()
        started = time.perf_counter()
        result = engine.generate(request)
        target.sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def input_image(spec: ModelSpec) -> bytes | None:
    """A PNG at the model's default size (a color gradient) for image-conditioned models."""
    if spec.task not in IMAGE_TASKS:
        return None
    from PIL import Image

    width, height = spec.defaults.width or 64, spec.defaults.height or 64
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bench(spec: ModelSpec, steps: int, runs: int, target: Target) -> Row:
    engine = make_engine(spec, target)
    base = GenerationRequest(prompt=PROMPT, seed=0, num_inference_steps=steps, image=input_image(spec))
    off, _ = median_seconds(engine, base.replace(cache=parse_overrides(False, None)), runs, target)
    cached = base.replace(cache=parse_overrides(True, CACHING))
    on, result = median_seconds(engine, cached, runs, target)
    stats = result.cache
    return Row(
        spec.id,
        spec.family or "-",
        type(engine.pipe).__name__,
        off,
        on,
        f"{stats.cached_steps}/{stats.total_steps}",
        stats.skipped_block_fraction,
        engine.calls_per_step(base),
    )


def chosen_specs(models: str | None) -> list[ModelSpec]:
    """The ``--models`` list (comma-separated ids), or every registered model."""
    if models:
        return [model_spec(m.strip()) for m in models.split(",") if m.strip()]
    model_spec("demo:shapes")  # registers the demo models when no entry point did
    return registered()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated model ids (default: all registered)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per setting (the median is shown)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    target = Target(args.device, args.dtype, warmup=1)
    specs = chosen_specs(args.models)
    print(
        f"## Cache-DiT on every model: {args.steps} steps, default size, caching off vs "
        f"F1B0 W2 R0.9, median of {args.runs} runs after a warm-up ({target.describe()})\n"
    )
    print(
        "| model | family | pipeline | seconds off | seconds on | speed-up | cached steps "
        "| blocks skipped | transformer calls per step |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for spec in specs:
        try:
            print(bench(spec, args.steps, max(args.runs, 1), target).markdown(), flush=True)
        except Exception as exc:  # one broken family must not hide the others' rows
            traceback.print_exc()
            print(
                f"| {spec.id} | {spec.family or '-'} | error: {type(exc).__name__}: {exc} |||||||", flush=True
            )
        if target.cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
