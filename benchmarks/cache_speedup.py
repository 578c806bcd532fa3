"""Cache-DiT speed vs quality on CPU or a GPU, and ray_dit's integration overhead.

For each cache setting: wall-time ratio against no cache (median of RUNS timed runs after WARMUP
untimed ones, default 1), the fraction of transformer block evaluations skipped (counted with
forward hooks in a separate, untimed run) and the PSNR of the output against the uncached output.
Then the time per step of ray_dit's engine against calling cache-dit directly on the same pipeline.

Random weights change a lot between steps (residual diffs 0.3-0.6), so thresholds meant for
trained models (SGLang's 0.24) cache nothing here; rows marked "R0.9" use a threshold that does.

On CUDA every timed run is bracketed by torch.cuda.synchronize(). The demo models are registered
here directly, so the benchmark also runs from a plain checkout (PYTHONPATH=.) where the
``ray_dit.models`` entry point is not installed.

Usage: python benchmarks/cache_speedup.py [--runs 5] [--quick] [--warmup 1] [--device cpu|cuda]
       [--dtype auto|float32|bfloat16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ray_dit.api import GenerationRequest
from ray_dit.config import CacheDitSettings, parse_overrides
from ray_dit.engine import Engine, EngineOptions
from ray_dit.engine.loader import DTYPES, resolve_device, resolve_dtype
from ray_dit.engine.registry import ModelSpec, lookup, register

SGLANG_DEFAULTS: dict[str, Any] = {}  # the env defaults: F1B0 W4 R0.24 MC3
R09 = {"residual_diff_threshold": 0.9}


@dataclass(frozen=True)
class Target:
    """Where and how the pipelines run: a torch device string, a DTYPES name, untimed warm-ups."""

    device: str = "cpu"
    dtype: str = "float32"
    warmup: int = 1

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def sync(self) -> None:
        """Wait for queued GPU work, so a timer reads finished work (a no-op on CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        if self.cuda:
            return f"{torch.cuda.get_device_name(self.device)}, {self.dtype}"
        return f"CPU, {torch.get_num_threads()} threads, {self.dtype}"


@dataclass
class Case:
    name: str
    params: dict[str, Any] | None  # None = caching off
    fbc_threshold: float | None = None  # diffusers' FirstBlockCache instead of cache-dit


CASES = [
    Case("no cache", None),
    Case("SGLang defaults F1B0 W4 MC3 R0.24", SGLANG_DEFAULTS),
    Case("DBCache F1B0 W4 MC3 R0.9", R09),
    *[
        Case(f"SCM {preset} {policy}", {"scm_preset": preset, "scm_policy": policy})
        for preset in ("slow", "medium", "fast", "ultra")
        for policy in ("dynamic", "static")
    ],
    Case("TaylorSeer O1 + R0.9", {**R09, "enable_taylorseer": True, "taylorseer_order": 1}),
    Case("TaylorSeer O2 + R0.9", {**R09, "enable_taylorseer": True, "taylorseer_order": 2}),
    Case("diffusers FirstBlockCache t=0.24", None, fbc_threshold=0.24),
    Case("diffusers FirstBlockCache t=0.9", None, fbc_threshold=0.9),
]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def block_probes(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention module inside each block: it runs exactly when its block really runs.

    Hooks on the blocks themselves would not do: diffusers' FirstBlockCache skips a block inside
    the block's own call, after the block's forward hooks have fired.
    """
    probes = []
    for name, module in transformer.named_children():
        if isinstance(module, torch.nn.ModuleList) and "block" in name:
            probes.extend(getattr(block, "attn", None) or next(block.children()) for block in module)
    return probes


def count_block_calls(engine: Engine, request: GenerationRequest) -> int:
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    handles = [b.register_forward_pre_hook(hook) for b in block_probes(engine.pipe.transformer)]
    try:
        engine.generate(request)
    finally:
        for h in handles:
            h.remove()
    return calls[0]


def model_spec(model: str) -> ModelSpec:
    """The registered spec; registers the demo models first when no entry point provided them."""
    spec = lookup(model)
    if spec is None:
        from ray_dit.demo import model_specs

        for demo in model_specs():
            register(demo)
        spec = lookup(model)
    if spec is None:
        raise SystemExit(f"unknown model {model!r}")
    return spec


def make_engine(model: str, fbc_threshold: float | None, target: Target) -> Engine:
    spec = model_spec(model)
    pipe = spec.build()  # float32 on the CPU
    if DTYPES[target.dtype] != torch.float32:
        pipe.to(dtype=DTYPES[target.dtype])
    pipe.to(target.device)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    if fbc_threshold is not None:
        from diffusers import FirstBlockCacheConfig

        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=fbc_threshold))
    return Engine(
        EngineOptions(model=model, device=target.device, dtype=target.dtype),
        cache_settings=CacheDitSettings(),
        pipeline=pipe,
        defaults=spec.defaults,
    )


def time_runs(
    engine: Engine, request: GenerationRequest, runs: int, target: Target
) -> tuple[float, np.ndarray]:
    for _ in range(target.warmup):
        engine.generate(request)
    times, frames = [], None
    for _ in range(runs):
        target.sync()
        t0 = time.perf_counter()
        frames = engine.generate(request).frames
        target.sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), frames


def bench_model(model: str, size: int, steps: int, runs: int, target: Target) -> None:
    print(f"\n## {model}: {size}x{size}, {steps} steps, median of {runs} runs ({target.describe()})\n")
    print("| setting | seconds | speed vs no cache | blocks skipped | PSNR vs no cache (dB) | cached steps |")
    print("|---|---:|---:|---:|---:|---:|")
    base_request = GenerationRequest(
        prompt="a red circle on a blue background", seed=0, width=size, height=size, num_inference_steps=steps
    )
    engines: dict[float | None, Engine] = {}
    baseline_time = baseline_frames = None
    total_blocks = None
    for case in CASES:
        engine = engines.get(case.fbc_threshold) or make_engine(model, case.fbc_threshold, target)
        engines[case.fbc_threshold] = engine
        request = base_request
        if case.params is not None:
            request = base_request.replace(cache=parse_overrides(True, case.params))
        seconds, frames = time_runs(engine, request, runs, target)
        calls = count_block_calls(engine, request)
        if total_blocks is None:
            total_blocks = calls
        stats = engine.generate(request).cache
        if baseline_time is None:
            baseline_time, baseline_frames = seconds, frames
        quality = psnr(frames, baseline_frames)
        cached = f"{stats.cached_steps}/{stats.total_steps}" if stats.enabled else "-"
        print(
            f"| {case.name} | {seconds:.3f} | {baseline_time / seconds:.2f}x | {1 - calls / total_blocks:.1%} "
            f"| {'inf' if quality == float('inf') else f'{quality:.1f}'} | {cached} |"
        )


def bench_overhead(model: str, size: int, steps: int, pairs: int, target: Target) -> None:
    """ray_dit's engine vs cache-dit called directly on the same pipeline and settings."""
    import cache_dit
    from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

    engine = make_engine(model, None, target)
    pipe = engine.pipe
    request = GenerationRequest(
        prompt="a red circle",
        seed=0,
        width=size,
        height=size,
        num_inference_steps=steps,
        cache=parse_overrides(True, R09),
    )
    engine.generate(request)  # mounts cache-dit

    def direct() -> float:
        target.sync()
        t0 = time.perf_counter()
        config = DBCacheConfig(
            Fn_compute_blocks=1,
            Bn_compute_blocks=0,
            max_warmup_steps=4,
            residual_diff_threshold=0.9,
            max_continuous_cached_steps=3,
            num_inference_steps=steps,
            enable_separate_cfg=False,
        )
        calibrator = TaylorSeerCalibratorConfig(enable_calibrator=False, enable_encoder_calibrator=False)
        cache_dit.refresh_context(pipe.transformer, cache_config=config, calibrator_config=calibrator)
        with torch.inference_mode():
            pipe(
                "a red circle",
                width=size,
                height=size,
                num_inference_steps=steps,
                max_sequence_length=32,
                generator=[torch.Generator(device=target.device).manual_seed(0)],
                output_type="np",
            )
        target.sync()
        return time.perf_counter() - t0

    def ours() -> float:
        target.sync()
        t0 = time.perf_counter()
        engine.generate(request)
        target.sync()
        return time.perf_counter() - t0

    for _ in range(target.warmup):
        direct()
    direct_times, our_times = [], []
    for _ in range(pairs):
        direct_times.append(direct())
        our_times.append(ours())
    d, o = statistics.median(direct_times), statistics.median(our_times)
    print(
        f"\n## Integration overhead: {model}, {size}x{size}, {steps} steps, R0.9, "
        f"median of {pairs} interleaved pairs ({target.describe()})\n"
    )
    print("| path | seconds per request | ms per step |")
    print("|---|---:|---:|")
    print(f"| cache-dit called directly | {d:.4f} | {1000 * d / steps:.2f} |")
    print(f"| ray_dit Engine.generate | {o:.4f} | {1000 * o / steps:.2f} |")
    print(
        f"\noverhead per step: {1000 * (o - d) / steps:+.3f} ms ({(o - d) / d:+.2%} of a step; target < 1%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each setting's timed runs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights and activations (auto: float32 on cpu, bfloat16 on cuda)",
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = next(name for name, value in DTYPES.items() if value == resolve_dtype(args.dtype, device))
    target = Target(device, dtype, max(args.warmup, 1))
    if args.quick:
        bench_model("demo:flux-tiny", 64, 28, max(args.runs, 1), target)
        bench_overhead("demo:flux-tiny", 64, 28, 5, target)
        return
    bench_model("demo:flux-tiny", 128, 28, args.runs, target)
    bench_model("demo:flux-large", 192, 28, args.runs, target)
    bench_overhead("demo:flux-large", 192, 28, 11, target)


if __name__ == "__main__":
    main()
