"""Offline generation (ray_dit.batch) against the same rows through the HTTP API (issue 18).

    .venv/bin/python benchmarks/offline.py [--rows 1000] [--size 64] [--steps N]
        [--concurrency 8] [--max-batch-size 8] [--threads 2] [--device cpu]

One Ray cluster, one model. ``online``: the served app (one DiT replica with ``--threads`` CPUs,
dynamic batching up to ``--max-batch-size``, the frame sink storing locally) and ``c`` clients
sending the rows back to back (b64_json). ``offline``: ``ray_dit.batch.generate`` with one engine
actor of the same CPUs and batch size, writing PNGs and the manifest to a local directory.
Prints outputs/s of each, the ratio, and the offline job's time to its first stored output (from
the manifest's ``created``). Target on a 2-core CPU with demo:shapes: offline >= 1.5x online.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import tempfile
import time
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPES = ["red circle", "blue square", "green triangle", "yellow star", "purple hexagon"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rows(args: argparse.Namespace) -> list[dict]:
    body = {"size": f"{args.size}x{args.size}"}
    if args.steps:
        body["num_inference_steps"] = args.steps
    return [{**body, "prompt": f"a {SHAPES[i % 5]}", "seed": i} for i in range(args.rows)]


async def online(url: str, bodies: list[dict], concurrency: int) -> float:
    """Seconds for ``concurrency`` clients to get every body's output."""
    import httpx

    left = list(bodies)

    async def client(c: httpx.AsyncClient) -> None:
        while left:
            body = left.pop()
            resp = await c.post("/v1/images/generations", json={**body, "response_format": "b64_json"})
            resp.raise_for_status()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        return time.perf_counter() - started


def run_online(args: argparse.Namespace, bodies: list[dict]) -> float:
    from ray import serve

    from ray_dit.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = {
        "model": args.model,
        "device": args.device,
        "dit_num_cpus": args.threads,
        "max_queued_requests": 1024,
        "max_batch_size": args.max_batch_size,
        "warmup_sizes": [f"{args.size}x{args.size}"],
    }
    serve.run(build_app(app), name="online", route_prefix="/")
    try:
        return asyncio.run(online(f"http://127.0.0.1:{port}", bodies, args.concurrency))
    finally:
        serve.shutdown()


def run_offline(args: argparse.Namespace, bodies: list[dict]) -> tuple[float, float, float, Any]:
    """(seconds, seconds to the first stored output, outputs/s from the first to the last, the
    job's summary)."""
    import pyarrow.dataset as pads

    from ray_dit.batch import generate

    work = tempfile.mkdtemp(prefix="ray_dit_offline_")
    source = os.path.join(work, "rows.jsonl")
    with open(source, "w") as handle:
        handle.writelines(json.dumps(body) + "\n" for body in bodies)
    started = time.time()
    summary = generate(
        source,
        os.path.join(work, "out"),
        model=args.model,
        device=args.device,
        engine_cpus=args.threads,
        max_batch_size=args.offline_batch_size or args.max_batch_size,
        batch_size=(args.offline_batch_size or args.max_batch_size) * 2,
        writers=args.writers,
    )
    assert summary.done == len(bodies), summary
    created = pads.dataset(os.path.join(work, "out", "outputs", "manifest")).to_table(columns=["created"])
    stamps = sorted(t.timestamp() for t in created.column("created").to_pylist())
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if stamps[-1] > stamps[0] else float("nan")
    return summary.seconds, stamps[0] - started, steady, summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo:shapes")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=0, help="denoising steps (default: the model's)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPUs of the DiT replica / engine actor")
    parser.add_argument(
        "--offline-batch-size",
        type=int,
        default=0,
        help="outputs per pipeline call offline (default: --max-batch-size; online is also bounded by --concurrency)",
    )
    parser.add_argument("--writers", type=int, default=1, help="writer actors of the offline job")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import ray

    spool = tempfile.mkdtemp(prefix="ray_dit_bench_")
    env = {"RAY_DIT_SPOOL_DIR": spool, "TOKENIZERS_PARALLELISM": "false"}
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        bodies = rows(args)
        online_s = run_online(args, bodies)
        offline_s, first_s, steady, summary = run_offline(args, bodies)
    finally:
        ray.shutdown()
    n = len(bodies)
    print(
        f"\n{args.model} on {args.device}, {n} rows at {args.size}x{args.size}, max_batch_size {args.max_batch_size}"
    )
    print(f"{'path':>8}{'seconds':>10}{'outputs/s':>11}")
    print(f"{'online':>8}{online_s:>10.1f}{n / online_s:>11.2f}   (HTTP, concurrency {args.concurrency})")
    print(f"{'offline':>8}{offline_s:>10.1f}{n / offline_s:>11.2f}   (first output after {first_s:.1f} s)")
    print(f"offline after its first output: {steady:.2f} outputs/s (engine start-up excluded, as online)")
    print(f"offline / online: {online_s / offline_s:.2f}x whole job, {steady / (n / online_s):.2f}x steady")
    print(
        f"offline CPU: engine {summary.engine_cpu_s:.1f} s, writers {summary.writer_cpu_s:.1f} s "
        f"(writers {summary.writer_share:.1%} of the two; {args.writers} writer(s), "
        f"max_batch_size {args.offline_batch_size or args.max_batch_size})"
    )


if __name__ == "__main__":
    main()
