"""torch.compile on or off (``compile: true``, engine/compile.py): per-step time, compile time, fidelity.

For each model and size, in the order given (the order matters: the first size compiles graphs
specialised to it, the second recompiles them with the size symbolic, later ones compile
nothing), with caching off and on (SGLang's threshold 0.24, warmup 2):
- the first compiled call's seconds (what compiling, or recompiling, costs that request) against
  the eager engine's first call at that size;
- the median time per denoising step over RUNS interleaved eager/compiled requests (the engine's
  ``denoise_s``, text encoding included, over the steps; on CUDA synchronized at every step);
- the compiled output against the eager one (max absolute difference in uint8 levels, PSNR) and
  whether cache-dit cached the same steps.

Start-up: the compiled engine's construction includes the toolchain check (a tiny compiled
function); its cost is the difference to an eager engine's (built after it, imports warm). By default the inductor (and Triton)
caches are a fresh temporary directory, so the numbers are what a new machine pays; --warm-cache
uses the default cache (/tmp/torchinductor_$USER), what a restarted replica on the same node pays.

Usage: python benchmarks/compile_speed.py [--models demo:shapes,demo:flux-tiny] [--sizes 64,128,256]
       [--steps 8] [--runs 5] [--device cpu|cuda] [--dtype auto|float32|bfloat16] [--warm-cache]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from ray_dit.api import GenerationRequest, GenerationResult
from ray_dit.config import CacheDitSettings, parse_overrides
from ray_dit.engine import Engine, EngineOptions
from ray_dit.engine.loader import DTYPES, resolve_device, resolve_dtype
from ray_dit.engine.registry import lookup, register

PROMPT = "a red circle on a blue background"
CACHE_ON = {"max_warmup_steps": 2}  # SGLang's defaults otherwise: F1B0 MC3 R0.24


@dataclass(frozen=True)
class Target:
    device: str
    dtype: str
    steps: int
    runs: int

    def sync(self, *_: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        if self.device.startswith("cuda"):
            return f"{torch.cuda.get_device_name(self.device)}, {self.dtype}"
        return f"CPU, {torch.get_num_threads()} threads, {self.dtype}"


def ensure_registered(model: str) -> None:
    """Register the demo models when no entry point did (a plain checkout on PYTHONPATH)."""
    if lookup(model) is None:
        from ray_dit.demo import model_specs

        for spec in model_specs():
            register(spec)
    if lookup(model) is None:
        raise SystemExit(f"unknown model {model!r}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(engine: Engine, request: GenerationRequest, target: Target) -> tuple[float, GenerationResult]:
    """Wall seconds of one request and its result (synchronized at every step on CUDA)."""
    target.sync()
    t0 = time.perf_counter()
    result = engine.generate(request, on_step=target.sync)
    target.sync()
    return time.perf_counter() - t0, result


def build(model: str, target: Target, compile: bool) -> tuple[float, Engine]:
    t0 = time.perf_counter()
    options = EngineOptions(model=model, device=target.device, dtype=target.dtype, compile=compile)
    engine = Engine(options, cache_settings=CacheDitSettings())
    return time.perf_counter() - t0, engine


def bench_case(eager: Engine, compiled: Engine, request: GenerationRequest, target: Target) -> str:
    eager_first, _ = run(eager, request, target)
    compiled_first, _ = run(compiled, request, target)
    per_step: dict[str, list[float]] = {"eager": [], "compiled": []}
    results: dict[str, GenerationResult] = {}
    for _ in range(target.runs):
        for name, engine in (("eager", eager), ("compiled", compiled)):
            _, results[name] = run(engine, request, target)
            per_step[name].append(results[name].timings.denoise_s / target.steps)
    e_ms = 1000 * statistics.median(per_step["eager"])
    c_ms = 1000 * statistics.median(per_step["compiled"])
    a, b = results["compiled"], results["eager"]
    diff = int(np.abs(a.frames.astype(int) - b.frames.astype(int)).max())
    quality = psnr(a.frames, b.frames)
    cache = "on" if request.cache.enable_cache_dit else "off"
    same = (a.cache.cached_step_indices, a.cache.cfg_cached_step_indices) == (
        b.cache.cached_step_indices,
        b.cache.cfg_cached_step_indices,
    )
    decisions = (
        f"{'yes' if same else 'NO'} ({b.cache.cached_steps}/{b.cache.total_steps})" if cache == "on" else "-"
    )
    return (
        f"| {request.width}x{request.height} | {cache} | {e_ms:.2f} | {c_ms:.2f} | {e_ms / c_ms:.2f}x "
        f"| {compiled_first:.2f} | {eager_first:.2f} | {diff} | {'inf' if quality == float('inf') else f'{quality:.1f}'} "
        f"| {decisions} |"
    )


def bench_model(model: str, sizes: list[int], target: Target) -> None:
    ensure_registered(model)
    _, eager = build(model, target, compile=False)  # the first pays the imports
    compiled_s, compiled = build(model, target, compile=True)
    eager_s, _ = build(model, target, compile=False)
    print(f"\n## {model}: {target.steps} steps, median of {target.runs} runs ({target.describe()})\n")
    print(
        f"Start-up: eager engine {eager_s:.2f} s, compiled engine {compiled_s:.2f} s "
        f"(the toolchain check: about {compiled_s - eager_s:+.2f} s).\n"
    )
    print(
        "| size | cache | eager ms/step | compiled ms/step | speed | first compiled call s "
        "| first eager call s | max diff | PSNR (dB) | same cached steps |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for size in sizes:
        base = GenerationRequest(
            prompt=PROMPT, seed=0, width=size, height=size, num_inference_steps=target.steps
        )
        for request in (base, base.replace(cache=parse_overrides(True, CACHE_ON))):
            print(bench_case(eager, compiled, request, target), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="demo:shapes,demo:flux-tiny")
    parser.add_argument("--sizes", default="64,128,256", help="square sizes, in this order")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights and activations (auto: float32 on cpu, bfloat16 on cuda)",
    )
    parser.add_argument("--warm-cache", action="store_true", help="use inductor's default cache directory")
    args = parser.parse_args()
    if not args.warm_cache:
        fresh = tempfile.mkdtemp(prefix="compile-speed-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(fresh, "inductor")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(fresh, "triton")
    device = resolve_device(args.device)
    dtype = next(name for name, value in DTYPES.items() if value == resolve_dtype(args.dtype, device))
    target = Target(device, dtype, args.steps, max(args.runs, 1))
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"torch {torch.__version__}; inductor cache: {'warm (default)' if args.warm_cache else 'fresh'}")
    for model in args.models.split(","):
        bench_model(model, sizes, target)


if __name__ == "__main__":
    main()
