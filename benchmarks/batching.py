"""Dynamic batching: throughput and latency with batching off and on, over HTTP (issue 17).

    .venv/bin/python benchmarks/batching.py [--model demo:shapes] [--sizes 64,256]
        [--concurrency 1,4,8,16] [--max-batch-size 16] [--batch-wait-timeout-s 0]
        [--device cpu|cuda] [--dtype auto|bfloat16] [--steps N]

Two apps run side by side on one Ray cluster: ``off`` (``max_batch_size: 1``) and ``on``. For
each size and concurrency, ``c`` clients send requests back to back (one output each, b64_json)
to one app, then to the other, in alternating rounds so that a drift of the machine hits both
alike. Prints outputs/s, p50/p95 latency, the batch sizes the replica actually formed (from each
response's ``batch_size``) and the speed-up of ``on`` over ``off``.

Targets on a 2-core CPU with demo:shapes: at concurrency 8 and 64x64, ``on`` gives at least 2.5x
the outputs/s of ``off``; at concurrency 1 its p50 latency is within 5% of ``off``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import statistics
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = ["a red circle on a blue background", "a yellow triangle on a purple background"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_clients(url: str, body: dict, concurrency: int, n: int) -> tuple[list[float], list[int], float]:
    """``n`` requests from ``concurrency`` clients: latencies, batch sizes, wall seconds."""
    import httpx

    latencies: list[float] = []
    batches: list[int] = []
    left = [n]

    async def client(c: httpx.AsyncClient, index: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            started = time.perf_counter()
            resp = await c.post("/v1/images/generations", json={**body, "prompt": PROMPTS[index % 2]})
            latencies.append(time.perf_counter() - started)
            resp.raise_for_status()
            batches.append(int(resp.json().get("batch_size", 1)))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, i) for i in range(concurrency)))
        return latencies, batches, time.perf_counter() - started


def app_args(args: argparse.Namespace, batch: int) -> dict:
    return {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "num_gpus": 1 if args.device.startswith("cuda") else 0,
        "dit_num_cpus": args.threads,
        "max_queued_requests": 256,
        "max_batch_size": batch,
        "batch_wait_timeout_s": args.batch_wait_timeout_s if batch > 1 else 0.0,
        "warmup_sizes": [f"{s}x{s}" for s in args.sizes],
    }


def measure(args: argparse.Namespace, url: str) -> list[dict]:
    rows = []
    for side in args.sizes:
        body = {"size": f"{side}x{side}", "response_format": "b64_json", "n": 1}
        if args.steps:
            body["num_inference_steps"] = args.steps
        for concurrency in args.concurrency:
            n = max(args.min_requests, args.rounds * concurrency)
            got: dict[str, dict] = collections.defaultdict(lambda: {"lat": [], "batch": [], "wall": 0.0})
            for _ in range(args.rounds):  # alternate off and on: drift hits both
                for mode in ("off", "on"):
                    lat, batches, wall = asyncio.run(
                        run_clients(f"{url}/{mode}", body, concurrency, n // args.rounds)
                    )
                    got[mode]["lat"] += lat
                    got[mode]["batch"] += batches
                    got[mode]["wall"] += wall
            for mode, g in got.items():
                rows.append(
                    {
                        "size": side,
                        "c": concurrency,
                        "mode": mode,
                        "ops": len(g["lat"]) / g["wall"],
                        "p50": statistics.median(g["lat"]),
                        "p95": pct(g["lat"], 95),
                        "batch_mean": statistics.mean(g["batch"]),
                        "batch_max": max(g["batch"]),
                    }
                )
            print_rows(rows[-2:])
    return rows


def print_rows(rows: list[dict], header: bool = False) -> None:
    if header:
        print(
            f"{'size':>5}{'conc':>6}{'batching':>10}{'outputs/s':>11}{'p50 ms':>9}{'p95 ms':>9}"
            f"{'batch mean':>12}{'max':>5}{'vs off':>8}",
            flush=True,
        )
    off = {(r["size"], r["c"]): r for r in rows if r["mode"] == "off"}
    for r in rows:
        base = off.get((r["size"], r["c"]))
        ratio = f"{r['ops'] / base['ops']:.2f}x" if base else ""
        print(
            f"{r['size']:>5}{r['c']:>6}{r['mode']:>10}{r['ops']:>11.2f}{r['p50'] * 1e3:>9.1f}"
            f"{r['p95'] * 1e3:>9.1f}{r['batch_mean']:>12.2f}{r['batch_max']:>5}{ratio:>8}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo:shapes")
    parser.add_argument("--sizes", default="64,256", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--concurrency", default="1,4,8,16", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating off/on rounds per cell")
    parser.add_argument("--min-requests", type=int, default=24, help="requests per cell and mode, at least")
    parser.add_argument("--steps", type=int, default=0, help="denoising steps (default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="CPUs the DiT replica is given")
    args = parser.parse_args()

    import ray
    from ray import serve

    from ray_dit.serve import build_app

    spool = tempfile.mkdtemp(prefix="ray_dit_bench_")
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_DIT_SPOOL_DIR": spool, "TOKENIZERS_PARALLELISM": "false"}},
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for mode, batch in (("off", 1), ("on", args.max_batch_size)):
            serve.run(build_app(app_args(args, batch)), name=mode, route_prefix=f"/{mode}")
        url = f"http://127.0.0.1:{port}"
        print(
            f"{args.model} on {args.device}: batching off (max_batch_size 1) vs on (max_batch_size "
            f"{args.max_batch_size}, batch_wait_timeout_s {args.batch_wait_timeout_s}), b64_json over HTTP",
            flush=True,
        )
        print_rows([], header=True)
        rows = measure(args, url)
        print("\nall cells:")
        print_rows(rows, header=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
