"""``ray-dit``: generate locally with the same engine and environment config as the server."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from ray_dit.api import GenerationRequest, GenerationResult, parse_size
from ray_dit.config import parse_overrides
from ray_dit.errors import ConfigError

EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".mp4": "mp4"}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-dit",
        description="Serve and run Diffusion Transformers with Cache-DiT on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser(
        "generate",
        help="generate one image or video locally",
        description="Generate locally. Cache-DiT reads the SGLANG_CACHE_DIT_* environment variables.",
    )
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", default="out.png", help="output file: .png .jpg .webp or .mp4")
    gen.add_argument("--model", default="demo:shapes", help="diffusers id or path, or demo:<name>")
    gen.add_argument(
        "--transformer", default=None, help="a transformer checkpoint (directory or hub id) to use instead"
    )
    gen.add_argument("--steps", type=int, default=None, help="num_inference_steps")
    gen.add_argument("--size", default=None, help="WIDTHxHEIGHT, e.g. 128x128")
    gen.add_argument("--seed", type=int, default=1024)
    gen.add_argument("--n", type=int, default=1, help="number of outputs (written as name-<i>.ext)")
    gen.add_argument(
        "--frames", type=int, default=None, help="video models: number of frames (4k+1; 6k+1 Mochi, 8k+1 LTX)"
    )
    gen.add_argument("--fps", type=int, default=None, help="video models: frames per second")
    gen.add_argument("--guidance-scale", type=float, default=None)
    gen.add_argument("--true-cfg-scale", type=float, default=None)
    gen.add_argument("--negative-prompt", default=None)
    cache = gen.add_mutually_exclusive_group()
    cache.add_argument("--cache", dest="cache", action="store_true", default=None, help="force Cache-DiT on")
    cache.add_argument("--no-cache", dest="cache", action="store_false", help="force Cache-DiT off")
    gen.add_argument("--cache-params", default=None, help="JSON object of cache_dit_params overrides")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    gen.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    gen.add_argument("--json", action="store_true", help="print timings and cache stats as JSON")
    models = sub.add_parser(
        "models",
        help="list the built-in models",
        description="List every built-in model id: family, task, pipeline and sampling defaults. "
        "With --probe each is built on the CPU and its CFG calls per step are measured.",
    )
    models.add_argument("--probe", action="store_true", help="build each model and measure its CFG mode")
    models.add_argument("--json", action="store_true", help="one JSON object per model")
    _add_batch(sub)
    return parser


def _add_batch(sub: Any) -> None:
    batch = sub.add_parser(
        "batch",
        help="generate a dataset of prompts offline on Ray Data",
        description="One image per row of INPUT (Parquet, JSONL or CSV; local or s3://), the image "
        "API's fields as columns. Outputs, a Parquet manifest and an errors table go to --output; "
        "a re-run skips the rows already stored. Settings come from the SGLANG_*/RAY_DIT_* "
        "environment, as for the server (docs/batch.md).",
    )
    batch.add_argument("input", help="a .parquet/.jsonl/.csv file or a directory of Parquet parts")
    batch.add_argument("--output", required=True, help="a directory or s3://bucket/prefix")
    batch.add_argument("--model", default="demo:shapes", help="diffusers id or path, or demo:<name>")
    batch.add_argument("--device", default="auto", help="auto (cuda when the cluster has GPUs), cpu, cuda")
    batch.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    batch.add_argument("--engines", type=int, default=1, help="engine actors (one GPU each on GPU)")
    batch.add_argument("--writers", type=int, default=1, help="CPU actors that encode and store")
    batch.add_argument(
        "--engine-cpus", type=float, default=1.0, help="CPUs of each engine actor on a CPU-only cluster"
    )
    batch.add_argument("--max-batch-size", type=int, default=4, help="outputs per pipeline call")
    batch.add_argument("--batch-size", type=int, default=16, help="rows per stage batch (and manifest part)")
    batch.add_argument("--input-format", choices=("parquet", "json", "csv"), default=None)
    batch.add_argument("--json", action="store_true", help="print the summary as JSON")


def _batch(args: argparse.Namespace) -> int:
    from ray_dit.batch import generate

    # generate() checks the options (one place for the CLI and notebooks). Ray Data's progress and library logs go to stderr: this command's stdout is its report.
    with contextlib.redirect_stdout(sys.stderr):
        summary = _run_batch(generate, args)
    print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.text())
    return 0


def _run_batch(generate: Any, args: argparse.Namespace) -> Any:
    return generate(
        args.input,
        args.output,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        engines=args.engines,
        writers=args.writers,
        engine_cpus=args.engine_cpus,
        max_batch_size=args.max_batch_size,
        batch_size=args.batch_size,
        input_format=args.input_format,
    )


def _models(args: argparse.Namespace) -> int:
    from ray_dit.engine.catalog import describe, table
    from ray_dit.engine.registry import registered

    rows = []
    for spec in registered():
        if args.probe:
            print(f"building {spec.id} ...", file=sys.stderr)
        rows.append(describe(spec, probe=args.probe))
    if args.json:
        for row in rows:
            print(json.dumps(row.as_dict(), sort_keys=True))
    else:
        print(table(rows))
    return 0


def _outputs(path: Path, n: int) -> list[Path]:
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(n)]


def _request(args: argparse.Namespace, fmt: str) -> GenerationRequest:
    """The command line as the engine's request (bad values: ValueError naming the option)."""
    width = height = None
    if args.size:
        width, height = parse_size(args.size)
    params = None
    if args.cache_params:
        try:
            params = json.loads(args.cache_params)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--cache-params: not valid JSON ({exc.msg})") from None
    return GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        n=args.n,
        width=width,
        height=height,
        num_frames=args.frames,
        fps=args.fps,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        true_cfg_scale=args.true_cfg_scale,
        seed=args.seed,
        cache=parse_overrides(args.cache, params),
        output_format=fmt,
    )


def _run_with_progress(engine: Any, request: GenerationRequest) -> GenerationResult:
    from tqdm import tqdm

    request = engine.resolve(request)
    bar = tqdm(total=request.num_inference_steps, desc="denoising", unit="step", file=sys.stderr)
    try:
        return engine.generate(request, on_step=lambda step, total: bar.update(step - bar.n))
    finally:
        bar.close()


def _report(args: argparse.Namespace, result: GenerationResult, paths: list[Path]) -> None:
    stats = result.cache
    if args.json:
        summary = {
            "outputs": [str(p) for p in paths],
            "model": args.model,
            "size": f"{result.width}x{result.height}",
            "frames": result.num_frames,
            "steps": result.steps,
            "seed": result.seed,
            "timings": {k: round(v, 4) for k, v in result.timings.as_dict().items()},
            "cache": stats.as_dict(),
            "warnings": result.warnings,
        }
        print(json.dumps(summary, indent=2))
        return
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in paths:
        print(f"wrote {path}")
    print(f"denoise {result.timings.denoise_s:.3f} s, total {result.timings.total_s:.3f} s")
    if stats.enabled:
        print(
            f"cache {stats.config}: {stats.cached_steps}/{stats.total_steps} steps cached "
            f"(steps {stats.cached_step_indices}), CFG branch {stats.cfg_cached_steps} cached, "
            f"{stats.skipped_block_fraction:.1%} of block evaluations skipped"
        )
    else:
        print("cache: off (set SGLANG_CACHE_DIT_ENABLED=true or pass --cache)")


def _generate(args: argparse.Namespace) -> int:
    from ray_dit.engine import Engine, EngineOptions
    from ray_dit.sink.encode import encode_output

    output = Path(args.output)
    fmt = EXTENSIONS.get(output.suffix.lower())
    if fmt is None:
        raise ValueError(f"--output={args.output!r}: the extension must be one of {', '.join(EXTENSIONS)}")
    request = _request(args, fmt)
    options = EngineOptions(
        model=args.model, device=args.device, dtype=args.dtype, transformer=args.transformer
    )
    # Libraries (cache-dit) log to stdout; this command's stdout is its report (--json is parsed).
    with contextlib.redirect_stdout(sys.stderr):
        engine = Engine(options)
        result = _run_with_progress(engine, request)
    paths = _outputs(output, result.frames.shape[0])
    for index, path in enumerate(paths):
        encoded = encode_output(result.frames[index], result.kind, fmt, result.fps)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded.data)
    _report(args, result, paths)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "models":
            return _models(args)
        if args.command == "batch":
            return _batch(args)
    except (ConfigError, ValueError) as exc:
        print(f"ray-dit: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
