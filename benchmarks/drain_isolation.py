"""Uploads never block denoising, and reads of old outputs never stall stores while S3 hangs.

Storage scenarios: the DiT replica's time with storage off, fast, slow and down.

For each storage scenario the whole app runs on a local Ray cluster (ingress, one DiT replica,
one frame-sink replica) with a real moto S3 server on loopback behind a fault proxy:

* off: no cloud storage (outputs kept in the sink's local store);
* loopback: S3 at loopback speed;
* 1 s per PUT: the proxy delays every request by one second;
* down: the proxy resets every connection for the whole run (outputs wait in the spool).

Reported per scenario: the DiT replica's time per request (from the request reaching the replica
to the replica being free, ``timings.replica_s``; median and p90 of sequential b64_json
requests, whose outputs are uploaded all the same), its
ratio to storage-off (target: within 2%), and end-to-end throughput with concurrent clients asking
for ``url`` responses (which wait up to RAY_DIT_S3_URL_WAIT_S for the upload, then fall back to the
server's own content URL).

The scenarios run in ``--rounds`` rounds, in a rotated order each round, and each scenario's
ratio is the median over rounds of its median against that round's storage-off median: a slow
drift of the machine's load (these are CPU timings on shared cores) then shifts both sides of a
ratio alike instead of landing on whichever scenario happened to run during it.

``--denoise`` chooses what the DiT replica's CPU does during a request:

* ``pipeline``: the real pipeline, all its steps on ``--device``. On a GPU node that is the
  measurement that counts. On the CPU (the default device) that compute shares the machine with
  the sink's encoding and the S3 server, so the measure includes how much one busy CPU slows its
  neighbour: on the 2-vCPU VMs here that alone is several percent, with nothing of ray_dit
  involved, even with the denoise pinned to a CPU of its own (``benchmarks/cpu_neighbour.py``).
* ``accelerator`` (the default): what a GPU replica's CPU sees. The replica waits
  ``--accelerator-ms`` per request, as its thread does while the kernels run on the GPU, then
  hands over a fresh copy of frames the real pipeline made at start-up (the model's default
  size), so the sink encodes and uploads real pictures. Storage work could then only slow the
  replica by taking its thread, its event loop or its object-store hand-off: exactly the
  isolation the design promises.
* ``accelerator-blocking``: the negative control. The same replica, but it stays busy until the
  sink has stored its output and waited (up to RAY_DIT_S3_URL_WAIT_S) for the upload, as a
  design without a separate drain would. The benchmark must flag it.

Read scenarios, "S3 hangs while clients read old outputs" (issue 15). The frame sink stores on
threads of its own and reads (``GET /v1/images/{id}/content?key=...``) on others, one read per
read thread at most: a read waits at most RAY_DIT_CONTENT_WAIT_S (10 s) and is refused at once
(503) while every read thread is busy. When stores and reads shared one pool, reads of uploaded
outputs (only S3 has them) during a hanging outage held every thread, and each store, so each
response, waited for them. Two scenarios share everything but the reads:

* hang: the app starts with S3 up and makes ``--old-outputs`` url outputs, each confirmed in S3
  (its response URL is the presigned S3 one, which the sink gives only once its spool entry is
  gone; the benchmark checks the spool too, and reads each once with S3 up). Then S3 hangs: the
  proxy takes every request to the bucket and never answers (the sink's boto gives up after its
  5 s read timeout, per attempt), and ``--clients`` clients send b64_json requests back to back
  for ``--hang-window`` seconds (b64_json: a response waits for the store, the spooling, never for
  an upload, which cannot finish). Measured: responses completed per second in the window.
* hang + reads: the same, plus ``--readers`` clients looping on the content route for the old
  outputs from the start of the hang until the window closes: every read asks the hanging S3.
  A refused reader retries after ``--read-pause`` s (a polite client waits the Retry-After, 1 s
  or more): heavier than real clients, yet no hot loop, so the measure is of the sink's threads
  rather than of the CPU that answering 503s costs on two cores.

Reported: responses/s of both (median of rounds), their ratio (median of per-round ratios;
target >= 0.8, within 20%: PASS or FAIL), latencies, the reads attempted and answered 503, 200
or otherwise (errors), and the GETs the proxy held (the reads did reach S3).

``--scenarios`` runs only the scenarios it names, comma-separated (``--scenarios hang,hang+reads``
for the read scenarios alone); a ratio's baseline (off, hang) is added when missing.

Usage: python benchmarks/drain_isolation.py [--requests 30] [--rounds 3] [--clients 4]
    [--model demo:flux-tiny] [--denoise accelerator|accelerator-blocking|pipeline] [--device cpu] [--accelerator-ms 60]
    [--scenarios off,loopback,1 s per PUT,down,hang,hang+reads] [--hang-window 20] [--readers 8]
    [--old-outputs 8] [--read-pause 0.25]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import RAY_ENV, free_port, s3_env
from sink_helpers import FaultProxy, moto_server, new_bucket

SCENARIOS = ("off", "loopback", "1 s per PUT", "down")
HANG_SCENARIOS = ("hang", "hang+reads")
HANG_HOLD_S = 60.0  # the proxy holds each request to the bucket this long unanswered, then resets it
SETTLE_S = 2.0  # from the hang's start to the window's: uploads and the first reads reach S3 and hang
TARGET_RATIO = 0.8  # responses/s with reads during the hang, at least this share of those without


@dataclasses.dataclass(frozen=True)
class Deploy:
    """What every scenario's app is made of, and where Serve answers."""

    base_url: str
    model: str
    dit_class: type | None
    device: str


@dataclasses.dataclass(frozen=True)
class HangPlan:
    """The read scenarios' parameters (see the module's docstring)."""

    clients: int
    readers: int
    old_outputs: int
    window_s: float
    read_pause_s: float


def slug(scenario: str) -> str:
    return scenario.replace(" ", "-").replace("+", "-")


def sink_env(scenario: str, proxy: FaultProxy, bucket: str, spool: str) -> dict[str, str]:
    if scenario == "off":
        return {"RAY_DIT_SPOOL_DIR": spool}
    return s3_env(
        proxy.endpoint, bucket, spool, RAY_DIT_S3_CONNECT_TIMEOUT_S="2", RAY_DIT_S3_READ_TIMEOUT_S="5"
    )


def accelerator_dit(wait_s: float, blocking: bool = False) -> type:
    """The DiT replica class with its engine's compute standing in for a GPU's (see above)."""
    from ray_dit.api import GenerationRequest
    from ray_dit.serve.dit import DiTDeployment

    class AcceleratorDiT(DiTDeployment.func_or_class):  # type: ignore[name-defined,misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            template = self.engine.generate(GenerationRequest(prompt="a red circle"))

            def generate(request: GenerationRequest, **_: object) -> object:
                started = time.perf_counter()
                time.sleep(wait_s)  # the CPU thread idles while the accelerator denoises
                frames = template.frames.copy()  # then the device-to-host copy of the frames
                timings = dataclasses.replace(template.timings, total_s=time.perf_counter() - started)
                result = dataclasses.replace(
                    template, frames=frames, seed=request.seed, request_id=request.request_id, timings=timings
                )
                if blocking:  # the replica is not free until its output is stored and uploaded
                    self._sink.store.remote(result, None, False, True).result()
                return result

            self.engine.generate = generate

    return AcceleratorDiT


def one(http: httpx.Client, index: int, response_format: str = "url") -> dict[str, float]:
    resp = http.post(
        "/v1/images/generations",
        json={"prompt": f"a red circle {index}", "seed": index, "response_format": response_format},
    )
    resp.raise_for_status()
    return resp.json()["timings"]


@contextlib.contextmanager
def deployed(deploy: Deploy, scenario: str, env: dict[str, str]) -> Iterator[str]:
    """The app with the sink environment ``env``, under its own route prefix; yields its URL."""
    from ray import serve

    from ray_dit.serve.app import compose, parse_args

    name = slug(scenario)
    args = {"model": deploy.model, "device": deploy.device, "max_queued_requests": 64, "sink_env_vars": env}
    gpus = 1 if deploy.device.startswith("cuda") else 0
    app = compose(parse_args({**args, "num_gpus": gpus}), dit_class=deploy.dit_class)
    serve.run(app, name=name, route_prefix="/" + name)
    try:
        yield f"{deploy.base_url}/{name}"
    finally:
        serve.delete(name)


def run_scenario(
    deploy: Deploy, scenario: str, env: dict[str, str], requests: int, clients: int
) -> dict[str, float]:
    with deployed(deploy, scenario, env) as url, httpx.Client(base_url=url, timeout=120) as http:
        for i in range(3):  # warm-up
            one(http, 10_000 + i)
        # b64_json: the client sends the next request as soon as the last one is denoised
        # and encoded, in every scenario alike. (A url response waits up to
        # RAY_DIT_S3_URL_WAIT_S for the upload; the idle gap that leaves before the next
        # request slows its first steps, cold caches and sleeping OpenMP threads, which
        # would be charged to storage.) Every output is still uploaded in the background.
        timings = [one(http, i, "b64_json") for i in range(requests)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda i: one(http, 20_000 + i), range(requests)))
        throughput = requests / (time.perf_counter() - t0)
    ordered = sorted(t["replica_s"] for t in timings)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        # The replica's time outside the engine: receiving the request and handing the frames
        # over. Storage could only ever slow the replica here (the engine is the denoise, or the
        # accelerator's wait, which CPU contention alone can slow), so this is the isolation
        # measure that noise does not swamp.
        "handoff": statistics.median(t["replica_s"] - t["total_s"] for t in timings),
        "throughput": throughput,
    }


# -- S3 hangs while clients read old outputs ----------------------------------------------------


def read(http: httpx.Client, image_id: str, key: str) -> httpx.Response:
    """One read of an old output through the content route (the sink waits at most 10 s)."""
    return http.get(f"/v1/images/{image_id}/content", params={"key": key}, timeout=30)


def uploaded_outputs(http: httpx.Client, count: int, bucket: str, spool: str) -> list[tuple[str, str]]:
    """``count`` outputs made now, while S3 is up, that only S3 holds: (image id, key) each. The
    response URL is the presigned S3 one only once the upload is confirmed, and the sink drops
    the spool entry before it counts as confirmed; the spool is checked all the same."""
    found: list[tuple[str, str]] = []
    for i in range(3 * count):  # an upload slower than RAY_DIT_S3_URL_WAIT_S gets a content URL
        if len(found) == count:
            break
        body = {"prompt": f"an old blue square {i}", "seed": 40_000 + i, "response_format": "url"}
        resp = http.post("/v1/images/generations", json=body)
        resp.raise_for_status()
        answer = resp.json()
        path = urlsplit(answer["data"][0]["url"]).path
        if path.startswith(f"/{bucket}/"):  # path-style presigned URL: /{bucket}/{key}
            found.append((f"{answer['id']}_0", unquote(path[len(bucket) + 2 :])))
    if len(found) < count:
        raise RuntimeError(f"only {len(found)} of {count} outputs were confirmed in S3 in time")
    for image_id, key in found:
        if (Path(spool) / "pending" / f"{image_id}.json").exists():
            raise RuntimeError(f"{image_id} is still in the sink's spool: reads would not ask S3")
        read(http, image_id, key).raise_for_status()  # S3 is up: the read path works
    return found


def generate_until(http: httpx.Client, client: int, deadline: float) -> tuple[list[float], int]:
    """b64_json requests back to back until ``deadline``: latencies of those answered by then,
    and the number that failed."""
    latencies: list[float] = []
    errors = n = 0
    while (started := time.perf_counter()) < deadline:
        n += 1
        try:
            one(http, 100_000 * (client + 1) + n, "b64_json")
        except httpx.HTTPError:
            errors += 1
            time.sleep(0.1)
            continue
        if (done := time.perf_counter()) <= deadline:
            latencies.append(done - started)
    return latencies, errors


def read_until(
    http: httpx.Client, old: list[tuple[str, str]], reader: int, stop: threading.Event, pause_s: float
) -> Counter[str]:
    """Read the old outputs in turn until ``stop``; a refused or failed read retries after
    ``pause_s``. Counts: attempted, 200, 503 and error (any other answer, or none)."""
    counts: Counter[str] = Counter()
    n = reader
    while not stop.is_set():
        image_id, key = old[n % len(old)]
        n += 1
        counts["attempted"] += 1
        try:
            status = read(http, image_id, key).status_code
        except httpx.HTTPError:
            status = 0
        counts[{200: "200", 503: "503"}.get(status, "error")] += 1
        if status != 200:
            stop.wait(pause_s)
    return counts


def measure_hang(http: httpx.Client, old: list[tuple[str, str]], plan: HangPlan) -> dict[str, float]:
    """With S3 hanging: readers on ``old`` (none: no reads), then clients for the window."""
    stop = threading.Event()
    readers = plan.readers if old else 0
    with ThreadPoolExecutor(plan.clients + readers) as pool:
        reading = [pool.submit(read_until, http, old, i, stop, plan.read_pause_s) for i in range(readers)]
        try:
            time.sleep(SETTLE_S)
            deadline = time.perf_counter() + plan.window_s
            clients = [pool.submit(generate_until, http, c, deadline) for c in range(plan.clients)]
            answered = [future.result() for future in clients]
        finally:
            stop.set()  # the readers stop by themselves: their last read waits at most 30 s
        reads = sum((future.result() for future in reading), Counter())
    latencies = sorted(x for done, _ in answered for x in done)
    return {
        "rps": len(latencies) / plan.window_s,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "max": latencies[-1] if latencies else float("nan"),
        "errors": float(sum(errors for _, errors in answered)),
        **{f"reads {k}": float(reads[k]) for k in ("attempted", "503", "200", "error")},
    }


def run_hang_scenario(
    deploy: Deploy, scenario: str, env: dict[str, str], plan: HangPlan, proxy: FaultProxy, bucket: str
) -> dict[str, float]:
    """One read scenario: old outputs made with S3 up, then S3 hangs for the measurement."""
    with deployed(deploy, scenario, env) as url, httpx.Client(base_url=url, timeout=60) as http:
        for i in range(3):  # warm-up
            one(http, 10_000 + i, "b64_json")
        old = uploaded_outputs(http, plan.old_outputs, bucket, env["RAY_DIT_SPOOL_DIR"])
        held = proxy.count("stalled", "GET")
        proxy.stall_matching(f"/{bucket}", HANG_HOLD_S)  # S3 hangs: no answer, to anything
        try:
            result = measure_hang(http, old if scenario == "hang+reads" else [], plan)
            result["s3 gets held"] = float(proxy.count("stalled", "GET") - held)
        finally:
            proxy.stall_matching(None)
    return result


# -- rounds and reports -------------------------------------------------------------------------


def chosen(names: str) -> tuple[str, ...]:
    """The scenarios ``--scenarios`` names, in the usual order, with the baselines their ratios
    need (off for the storage scenarios, hang for hang+reads)."""
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    unknown = wanted - set(SCENARIOS + HANG_SCENARIOS)
    if unknown:
        raise SystemExit(
            f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS + HANG_SCENARIOS)}"
        )
    if wanted & set(SCENARIOS):
        wanted.add("off")
    if "hang+reads" in wanted:
        wanted.add("hang")
    return tuple(s for s in SCENARIOS + HANG_SCENARIOS if s in wanted)


def run_round(
    r: int,
    order: tuple[str, ...],
    args: argparse.Namespace,
    deploy: Deploy,
    proxy: FaultProxy,
    bucket: str,
    tmp: str,
) -> dict[str, dict[str, float]]:
    plan = HangPlan(args.clients, args.readers, args.old_outputs, args.hang_window, args.read_pause)
    results: dict[str, dict[str, float]] = {}
    for scenario in order:
        proxy.set_latency(1.0 if scenario == "1 s per PUT" else 0.0)
        proxy.set_down("reset" if scenario == "down" else None)
        env = sink_env(scenario, proxy, bucket, str(Path(tmp) / f"{slug(scenario)}-{r}"))
        if scenario in HANG_SCENARIOS:
            results[scenario] = run_hang_scenario(deploy, scenario, env, plan, proxy, bucket)
        else:
            results[scenario] = run_scenario(deploy, scenario, env, args.requests, args.clients)
        print(f"  round {r + 1}: {scenario} done", file=sys.stderr)
    return results


def report_storage(
    args: argparse.Namespace, rounds: list[dict[str, dict[str, float]]], storage: list[str], accelerated: bool
) -> None:
    print(
        f"\n## Drain isolation: {args.model}, denoise: {args.denoise}"
        f"{f' ({args.accelerator_ms:.0f} ms a request)' if accelerated else ''}, {args.rounds} rounds of {args.requests} "
        f"sequential requests per scenario, {args.clients} clients for throughput\n"
    )
    print(
        "| storage | replica s/request (median) | p90 | vs storage off (median of rounds) | per round "
        "| replica outside the engine (ms) | throughput (req/s, url responses) |"
    )
    print("|---|---:|---:|---:|---|---:|---:|")
    worst = 0.0
    for scenario in storage:
        ratios = [rr[scenario]["median"] / rr["off"]["median"] - 1 for rr in rounds]
        ratio = statistics.median(ratios)
        if scenario != "off":
            worst = max(worst, abs(ratio))
        median = statistics.median(rr[scenario]["median"] for rr in rounds)
        p90 = statistics.median(rr[scenario]["p90"] for rr in rounds)
        throughput = statistics.median(rr[scenario]["throughput"] for rr in rounds)
        handoff = 1000 * statistics.median(rr[scenario]["handoff"] for rr in rounds)
        per_round = " ".join(f"{x:+.1%}" for x in ratios)
        print(
            f"| {scenario} | {median:.4f} | {p90:.4f} | {ratio:+.1%} | {per_round} | {handoff:.2f} "
            f"| {throughput:.2f} |"
        )
    print(f"\ntarget: replica time within 2% of storage off in every scenario; worst here {worst:.1%}")


def hang_ratio(rounds: list[dict[str, dict[str, float]]]) -> tuple[float, list[float]]:
    """hang+reads responses/s over hang's: the median of the rounds' ratios, and those."""
    ratios = [rr["hang+reads"]["rps"] / rr["hang"]["rps"] if rr["hang"]["rps"] else 0.0 for rr in rounds]
    return statistics.median(ratios), ratios


def report_hang(args: argparse.Namespace, rounds: list[dict[str, dict[str, float]]], hang: list[str]) -> None:
    print(
        f"\n## S3 hangs while clients read old outputs: {args.model}, denoise: {args.denoise}, "
        f"{args.rounds} rounds; {args.clients} clients (b64_json) for {args.hang_window:g} s a round; "
        f"with reads, {args.readers} readers of {args.old_outputs} outputs uploaded before the hang, "
        f"a refused read retried after {args.read_pause:g} s\n"
    )
    print(
        "| scenario | responses/s (median) | per round | latency p50 (s) | max (s) | failed requests "
        "| reads attempted | answered 503 | answered 200 | read errors | S3 GETs held |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scenario in hang:
        runs = [rr[scenario] for rr in rounds]
        rps = statistics.median(run["rps"] for run in runs)
        per_round = " ".join(f"{run['rps']:.2f}" for run in runs)
        p50 = statistics.median(run["p50"] for run in runs)
        worst = max(run["max"] for run in runs)
        totals = [int(sum(run[k] for run in runs)) for k in ("errors", "reads attempted", "reads 503")]
        totals += [int(sum(run[k] for run in runs)) for k in ("reads 200", "reads error", "s3 gets held")]
        print(
            f"| {scenario} | {rps:.2f} | {per_round} | {p50:.3f} | {worst:.3f} | "
            + " | ".join(str(t) for t in totals)
            + " |"
        )
    print("\n(counts are totals over the rounds)")
    if "hang+reads" in hang:
        ratio, ratios = hang_ratio(rounds)
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        per_round = " ".join(f"{x:.2f}" for x in ratios)
        print(
            f"hang + reads vs hang: {ratio:.2f} of the responses/s (per round: {per_round}); "
            f"target >= {TARGET_RATIO} (within 20%): {verdict}"
        )


def parse_cli() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30, help="sequential requests per scenario and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--model", default="demo:flux-tiny")
    parser.add_argument(
        "--denoise", choices=("accelerator", "accelerator-blocking", "pipeline"), default="accelerator"
    )
    parser.add_argument("--accelerator-ms", type=float, default=60.0)
    parser.add_argument("--device", default="cpu", help="the DiT replica's device (cuda on a GPU node)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS + HANG_SCENARIOS),
        help="comma-separated, e.g. 'hang,hang+reads' (a ratio's baseline, off or hang, is added)",
    )
    parser.add_argument("--hang-window", type=float, default=20.0, help="seconds of requests while S3 hangs")
    parser.add_argument("--readers", type=int, default=8, help="reader clients in hang+reads")
    parser.add_argument("--old-outputs", type=int, default=8, help="outputs uploaded before the hang")
    parser.add_argument("--read-pause", type=float, default=0.25, help="a refused reader's wait (s)")
    return parser.parse_args()


def main() -> None:
    args = parse_cli()
    scenarios = chosen(args.scenarios)
    dit_class = None
    if args.denoise.startswith("accelerator"):
        dit_class = accelerator_dit(args.accelerator_ms / 1000, blocking=args.denoise.endswith("blocking"))

    os.environ.update(RAY_ENV)
    import ray
    from ray import serve

    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, moto_server() as endpoint, FaultProxy(endpoint) as proxy:
        bucket = new_bucket(endpoint)
        ray.init(
            address="local",
            num_cpus=8,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": RAY_ENV},
        )
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            deploy = Deploy(f"http://127.0.0.1:{port}", args.model, dit_class, args.device)
            for r in range(args.rounds):
                order = scenarios[r % len(scenarios) :] + scenarios[: r % len(scenarios)]
                rounds.append(run_round(r, order, args, deploy, proxy, bucket, tmp))
        finally:
            proxy.set_down(None)
            proxy.stall_matching(None)
            serve.shutdown()
            ray.shutdown()

    storage = [s for s in SCENARIOS if s in scenarios]
    if storage:
        report_storage(args, rounds, storage, dit_class is not None)
    hang = [s for s in HANG_SCENARIOS if s in scenarios]
    if hang:
        report_hang(args, rounds, hang)


if __name__ == "__main__":
    main()
