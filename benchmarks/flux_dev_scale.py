"""Cache-DiT at production scale on a GPU: a random transformer of FLUX.1-dev's shape (19 double +
38 single blocks, 3072 wide, 24 heads of 128, about 12B parameters) through ray_dit's Engine at
1024x1024 for 28 steps, per-step time and speed-up for SGLang's defaults and each SCM preset.

The text encoders and the VAE are the tiny demo ones (the transformer is what caching skips and
what costs the time; a 32-token prompt instead of 512 changes the attention length by 11%).
Random weights make the residual differences larger than a trained model's, so the
threshold-based rows cache less than they would there; the SCM rows (fixed step masks) skip what
their masks say either way. Quality (PSNR) is not reported: random weights draw noise.

Usage (GPU): python benchmarks/flux_dev_scale.py [--runs 2] [--size 1024] [--steps 28]
    [--layers 19 --single-layers 38] (smaller values make a CPU smoke run: --size 64 --steps 4
    --layers 1 --single-layers 1 --width-heads 2 --device cpu --dtype float32)
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from ray_dit.api import GenerationRequest
from ray_dit.config import cache_dit_from_env, parse_overrides
from ray_dit.demo.random_models import build_flux_tiny
from ray_dit.engine import Engine, EngineOptions
from ray_dit.engine.loader import DTYPES
from ray_dit.engine.registry import ModelDefaults

CASES: list[tuple[str, dict[str, Any] | None]] = [
    ("no cache", None),
    ("SGLang defaults (F1B0 W4 MC3 R0.24)", {}),
    *[
        (f"SCM {preset} {policy}", {"scm_preset": preset, "scm_policy": policy})
        for policy in ("dynamic", "static")
        for preset in ("slow", "medium", "fast", "ultra")
    ],
]


def build(args: argparse.Namespace) -> Any:
    """The tiny FLUX pipeline with a FLUX.1-dev-shaped transformer made on the device itself."""
    dtype = DTYPES[args.dtype]
    with torch.device(args.device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # 12B parameters: never materialise them in float32
        try:
            pipe = build_flux_tiny(
                num_layers=args.layers,
                num_single_layers=args.single_layers,
                attention_head_dim=128,
                num_attention_heads=args.width_heads,
                axes_dims_rope=(16, 56, 56),
            )
        finally:
            torch.set_default_dtype(previous)
    pipe.to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(engine: Engine, request: GenerationRequest, runs: int, device: str) -> tuple[float, Any]:
    engine.generate(request)  # warm-up (and the CFG probe of this setting)
    times, result = [], None
    for _ in range(runs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = engine.generate(request)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--layers", type=int, default=19)
    parser.add_argument("--single-layers", type=int, default=38)
    parser.add_argument("--width-heads", type=int, default=24, help="heads of 128 (24: 3072 wide)")
    args = parser.parse_args()
    started = time.perf_counter()
    pipe = build(args)
    params = sum(p.numel() for p in pipe.transformer.parameters())
    print(f"built in {time.perf_counter() - started:.1f} s: transformer {params / 1e9:.2f}B parameters")
    defaults = ModelDefaults(width=args.size, height=args.size, steps=args.steps, max_sequence_length=32)
    options = EngineOptions(model="flux-dev-shape", device=args.device, dtype=args.dtype)
    engine = Engine(options, cache_dit_from_env({"SGLANG_CACHE_DIT_ENABLED": "true"}), pipe, defaults)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"\n## FLUX.1-dev-shaped random transformer, {args.size}x{args.size}, {args.steps} steps, ")
    print(f"median of {args.runs} runs after one warm-up ({name}, {args.dtype})\n")
    print("| setting | seconds | ms per step | speed vs no cache | cached steps |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for label, params_ in CASES:
        cache = parse_overrides(params_ is not None, params_ or None)
        request = GenerationRequest(prompt="a red circle on a blue background", seed=0, cache=cache)
        seconds, result = run(engine, request, args.runs, args.device)
        base = base or seconds
        stats = result.cache
        cached = f"{stats.cached_steps}/{stats.total_steps}" if stats.enabled else "-"
        print(
            f"| {label} | {seconds:.3f} | {1000 * seconds / args.steps:.1f} | {base / seconds:.2f}x | {cached} |"
        )


if __name__ == "__main__":
    main()
