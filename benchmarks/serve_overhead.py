"""Serving overhead: HTTP end to end vs a direct engine call, on the demo model (CPU).

    .venv/bin/python benchmarks/serve_overhead.py [--model demo:shapes] [--requests 60]
        [--serve-mode both|default|high-throughput]

Prints p50/p95 latency of a direct ``Engine.generate`` call in this process, of the same request
through Ray Serve over HTTP (b64_json and url responses), the per-request overhead (HTTP latency
minus the engine time the DiT replica measured for that very request), and throughput with 1, 2
and 4 concurrent clients. The design target is an overhead under 20 ms at the median.

Serve runs in two modes, each on a fresh Ray cluster: ``default`` (Serve's Python HTTP proxy)
and ``high-throughput``, the settings Ray's KubeRay guide recommends and ``k8s/`` sets:
``RAY_SERVE_ENABLE_HA_PROXY=1`` (HAProxy on the HTTP port, forwarding straight to the ingress
replica's own HTTP server) and ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (gRPC between replicas,
user code on the replica's event loop, buffered request logs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SERVE_MODES = {  # explicit both ways, so a variable exported in the shell cannot mix them
    "default": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    "high-throughput": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # Behind HAProxy an ingress replica that stops stays reachable this long (default 30 s)
        # for clients of older HAProxy processes; this throwaway cluster has none to wait for.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        # As k8s/ runs it: HAProxy without Ray's splice options (docs/serving.md).
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(Path(sys.executable).with_name("ray-dit-haproxy")),
    },
}
PROMPTS = {"demo:shapes": "a yellow triangle on a purple background"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def direct_engine(n: int, model: str, prompt: str, threads: int) -> list[float]:
    import torch

    from ray_dit.api import GenerationRequest
    from ray_dit.engine import Engine, EngineOptions

    torch.set_num_threads(threads)
    engine = Engine(EngineOptions(model=model, device="cpu"))
    request = GenerationRequest(prompt=prompt)  # the model's own defaults, as over HTTP
    for _ in range(3):
        engine.generate(request)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        engine.generate(request)
        times.append(time.perf_counter() - started)
    return times


async def http_run(
    url: str, n: int, concurrency: int, body: dict
) -> tuple[list[float], list[dict[str, float]], float]:
    """Latencies and the server's own ``timings`` of ``n`` requests, and the wall time."""
    import httpx

    latencies: list[float] = []
    timings: list[dict[str, float]] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            resp = await client.post("/v1/images/generations", json=body)
            latencies.append(time.perf_counter() - started)
            resp.raise_for_status()
            payload = resp.json()
            first = payload["data"][0]
            encoded = len(base64.b64decode(first["b64_json"])) if "b64_json" in first else 0
            timings.append({**payload["timings"], "encoded_bytes": encoded, "size": payload["size"]})

    limits = {"max_connections": concurrency, "max_keepalive_connections": concurrency}
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(**limits)) as client:
        for _ in range(3):  # warm up
            (await client.post("/v1/images/generations", json=body)).raise_for_status()
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, timings, wall


# Where a request's time goes, from the timings the server reports (all medians, ms):
BREAKDOWN = (
    ("engine", lambda lat, t: t["total_s"]),
    ("DiT replica, outside the engine", lambda lat, t: t["replica_s"] - t["total_s"]),
    ("sink: encode + spool", lambda lat, t: t["store_s"]),
    ("hops ingress -> DiT -> sink -> ingress", lambda lat, t: t["request_s"] - t["replica_s"] - t["store_s"]),
    ("HTTP proxy and ingress routing", lambda lat, t: lat - t["request_s"]),
)


def serve_floor(url: str, n: int, frame_bytes: int = 0, encoded_bytes: int = 0) -> list[float]:
    """Ray Serve's own cost for the same shape with no work: proxy -> ingress -> A, then A's
    result's ObjectRef passed to B (what ray_dit does with the DiT and the sink). With payload
    sizes, A returns ``frame_bytes`` (the frames), B returns ``encoded_bytes`` (the encoded
    image) and the ingress answers it base64-encoded in JSON, as ray_dit's b64_json response
    does."""
    import httpx
    from fastapi import FastAPI
    from ray import serve

    floor_app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Work:
        async def make(self) -> bytes:
            return b"x" * max(frame_bytes, 1024)

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Take:
        async def take(self, value: bytes) -> bytes:
            return value[:encoded_bytes] if encoded_bytes else str(len(value)).encode()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(floor_app)
    class Front:
        def __init__(self, work: object, take: object) -> None:
            self.work, self.take = work.options(_by_reference=True), take.options(_by_reference=True)

        @floor_app.post("/two")
        async def two(self) -> dict:
            made = await self.work.make.remote()._to_object_ref()
            return {"b64": base64.b64encode(await self.take.take.remote(made)).decode("ascii")}

    serve.run(Front.bind(Work.bind(), Take.bind()), name="floor", route_prefix="/floor")
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(5):
                client.post("/floor/two").raise_for_status()
            times = []
            for _ in range(n):
                started = time.perf_counter()
                client.post("/floor/two").raise_for_status()
                times.append(time.perf_counter() - started)
    finally:
        serve.delete("floor")
    return times


def run_modes(args: argparse.Namespace) -> None:
    """Each mode in its own process: Serve reads these settings once, when its actors start."""
    summary = []
    for mode in SERVE_MODES:
        argv = [sys.executable, __file__, "--serve-mode", mode, "--model", args.model]
        argv += ["--requests", str(args.requests), "--threads", str(args.threads)]
        if args.spool_dir:
            argv += ["--spool-dir", args.spool_dir]
        out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
        lines = out.splitlines()
        print("\n".join(line for line in lines if not line.startswith("SUMMARY ")), flush=True)
        summary += [json.loads(line[8:]) for line in lines if line.startswith("SUMMARY ")]
    ms = 1000.0
    print(f"\n{args.model}: overhead = b64_json latency - the replica's engine time (target p50 < 20 ms)")
    print(
        f"{'serve mode':<18}{'overhead p50':>14}{'p95':>8}{'Serve floor p50':>17}{'HTTP p50':>10}{'1-client req/s':>16}"
    )
    for row in summary:
        print(
            f"{row['mode']:<18}{row['overhead_p50'] * ms:>14.1f}{row['overhead_p95'] * ms:>8.1f}"
            f"{row['floor_payload_p50'] * ms:>17.1f}{row['http_p50'] * ms:>10.1f}{row['rps_1']:>16.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo:shapes", help="a demo model (default: the embedded one)")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--serve-mode", choices=["both", *SERVE_MODES], default="both")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the engine (both sides)")
    parser.add_argument(
        "--spool-dir",
        default=None,
        help="sink spool directory (default: a fresh one under /tmp; /dev/shm takes fsync out of the path)",
    )
    args = parser.parse_args()
    if args.serve_mode == "both":
        run_modes(args)
        return
    os.environ.update(SERVE_MODES[args.serve_mode])  # before Ray starts, so its actors inherit it
    prompt = PROMPTS.get(args.model, "a red square")

    direct = direct_engine(args.requests, args.model, prompt, args.threads)

    import ray
    from ray import serve

    from ray_dit.serve import build_app

    spool = tempfile.mkdtemp(prefix="ray_dit_bench_", dir=args.spool_dir)
    env = {"RAY_DIT_SPOOL_DIR": spool, "TOKENIZERS_PARALLELISM": "false"}
    ray.init(
        address="local",
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            build_app(
                {
                    "model": args.model,
                    "device": "cpu",
                    "dit_num_cpus": args.threads,
                    "max_queued_requests": 64,
                }
            ),
            name="bench",
            route_prefix="/",
        )
        url = f"http://127.0.0.1:{port}"
        body = {"prompt": prompt}
        rows = []
        for fmt in ("b64_json", "url"):
            lat, timings, _ = asyncio.run(http_run(url, args.requests, 1, {**body, "response_format": fmt}))
            rows.append((f"HTTP ({fmt})", lat, timings))
        size = rows[0][2][0]["size"]
        width, height = (int(v) for v in size.split("x"))
        floor = serve_floor(url, args.requests)
        png_bytes = statistics.median(t["encoded_bytes"] for t in rows[0][2])
        floor_payload = serve_floor(url, args.requests, width * height * 3, int(png_bytes))
        throughput = []
        for concurrency in (1, 2, 4):
            lat, _, wall = asyncio.run(
                http_run(url, args.requests, concurrency, {**body, "response_format": "b64_json"})
            )
            throughput.append((concurrency, args.requests / wall, pct(lat, 50), pct(lat, 95)))
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(spool, ignore_errors=True)

    ms = 1000.0
    print(
        f"\nserve overhead, {args.model} {size}, serve mode {args.serve_mode}, "
        f"{args.requests} requests each, {args.threads} threads"
    )
    print(f"spool: {spool}")
    head = (
        f"{'path':<18}{'p50 ms':>10}{'p95 ms':>10}{'engine p50':>12}{'overhead p50':>14}{'overhead p95':>14}"
    )
    print(head + f"{'of it store p50':>17}")
    print(f"{'direct engine':<18}{pct(direct, 50) * ms:>10.1f}{pct(direct, 95) * ms:>10.1f}")
    for name, lat, timings in rows:
        eng = [t["total_s"] for t in timings]
        over = [a - t["total_s"] for a, t in zip(lat, timings, strict=True)]
        store = [t["store_s"] for t in timings]
        print(
            f"{name:<18}{pct(lat, 50) * ms:>10.1f}{pct(lat, 95) * ms:>10.1f}{pct(eng, 50) * ms:>12.1f}"
            f"{pct(over, 50) * ms:>14.1f}{pct(over, 95) * ms:>14.1f}{pct(store, 50) * ms:>17.1f}"
        )
    print(
        f"{'Serve floor':<18}{pct(floor, 50) * ms:>10.1f}{pct(floor, 95) * ms:>10.1f}{'':>12}"
        f"{pct(floor, 50) * ms:>14.1f}{pct(floor, 95) * ms:>14.1f}   (same 3 hops, no work)"
    )
    print(
        f"{'  + payloads':<18}{pct(floor_payload, 50) * ms:>10.1f}{pct(floor_payload, 95) * ms:>10.1f}{'':>12}"
        f"{pct(floor_payload, 50) * ms:>14.1f}{pct(floor_payload, 95) * ms:>14.1f}   "
        f"(and the same bytes: {width * height * 3} of frames, {int(png_bytes)} of PNG as base64 JSON)"
    )
    over = [a - t["total_s"] for a, t in zip(rows[0][1], rows[0][2], strict=True)]
    print(
        f"overhead p50 (b64_json latency - the replica's engine time): {pct(over, 50) * ms:.1f} ms (target < 20 ms)"
    )
    p50_http = pct(rows[0][1], 50)
    print(
        f"HTTP p50 - direct p50: {(p50_http - pct(direct, 50)) * ms:.1f} ms (includes the engine running slower "
        "in a replica that shares the cores with the proxy, ingress and sink)"
    )
    print(f"\n{'where the b64_json time goes (p50 ms)':<42}{'':>8}")
    lat, timings = rows[0][1], rows[0][2]
    for label, part in BREAKDOWN:
        values = [part(a, t) for a, t in zip(lat, timings, strict=True)]
        print(f"  {label:<40}{pct(values, 50) * ms:>8.1f}")
    print(f"\n{'clients':<10}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}")
    for concurrency, rps, p50, p95 in throughput:
        print(f"{concurrency:<10}{rps:>10.2f}{p50 * ms:>10.1f}{p95 * ms:>10.1f}")
    print(f"direct engine, 1 client: {1 / statistics.mean(direct):.2f} req/s")
    summary = {
        "mode": args.serve_mode,
        "overhead_p50": pct(over, 50),
        "overhead_p95": pct(over, 95),
        "floor_payload_p50": pct(floor_payload, 50),
        "http_p50": p50_http,
        "rps_1": throughput[0][1],
    }
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
