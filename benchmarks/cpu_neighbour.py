"""How much a busy neighbouring CPU slows a pinned CPU denoise, with nothing of ray_dit between.

    .venv/bin/python benchmarks/cpu_neighbour.py [--blocks 16] [--per-block 10]

The engine runs demo:flux-tiny with one thread pinned to CPU 0. A second process, pinned to CPU 1,
encodes PNGs in a loop (the sink's kind of work) and is paused (SIGSTOP) or running (SIGCONT)
in alternating blocks; the order within each pair of blocks alternates too. The result is the
median over pairs of (running / paused - 1).

This bounds what any CPU-denoise isolation measurement on the machine can show: on the 2-vCPU
VMs this project is built on, the two vCPUs share more than they admit (the reported topology
says separate cores), so any work on one slows a denoise on the other. On a GPU node the denoise
runs on the GPU and this does not apply; see ``benchmarks/drain_isolation.py --denoise``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

BURNER = """
import io, numpy as np
from PIL import Image
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
while True:
    image.save(io.BytesIO(), format="PNG", compress_level=6)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=16, help="pairs of blocks (paused, running)")
    parser.add_argument("--per-block", type=int, default=10, help="requests per block")
    args = parser.parse_args()
    if not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("needs CPUs 0 and 1")

    os.sched_setaffinity(0, {0})
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    from ray_dit.api import GenerationRequest
    from ray_dit.engine import Engine, EngineOptions

    torch.set_num_threads(1)
    engine = Engine(EngineOptions(model="demo:flux-tiny", device="cpu"))
    request = GenerationRequest(prompt="a red square")
    for _ in range(5):
        engine.generate(request)

    burner = subprocess.Popen([sys.executable, "-c", BURNER], preexec_fn=lambda: os.sched_setaffinity(0, {1}))
    try:
        os.kill(burner.pid, signal.SIGSTOP)
        times: dict[bool, list[float]] = {False: [], True: []}
        ratios = []
        for pair in range(args.blocks):
            medians = {}
            for running in (False, True) if pair % 2 == 0 else (True, False):
                os.kill(burner.pid, signal.SIGCONT if running else signal.SIGSTOP)
                time.sleep(0.05)
                block = []
                for _ in range(args.per_block):
                    started = time.perf_counter()
                    engine.generate(request)
                    block.append(time.perf_counter() - started)
                medians[running] = statistics.median(block)
                times[running] += block
            ratios.append(medians[True] / medians[False] - 1)
    finally:
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()

    ms = 1000.0
    print(
        f"\n## A PNG-encoding loop on CPU 1 vs a one-thread demo:flux-tiny denoise on CPU 0 ({args.blocks} pairs)\n"
    )
    print("| neighbour | denoise median (ms) |")
    print("|---|---:|")
    print(f"| paused | {statistics.median(times[False]) * ms:.1f} |")
    print(f"| encoding PNGs | {statistics.median(times[True]) * ms:.1f} |")
    print(f"\nslowdown, median of paired blocks: {statistics.median(ratios):+.1%}")
    print("per pair: " + " ".join(f"{x:+.0%}" for x in ratios))


if __name__ == "__main__":
    main()
