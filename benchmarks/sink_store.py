"""What the frame sink adds to a request: encode + spool time per request, by size and n.

    .venv/bin/python benchmarks/sink_store.py [--reps 5] [--formats png,jpeg,webp]

``FrameSink.store`` with S3 off (the local store) on photo-like frames (smooth colour fields
with sensor-like noise, so PNG has something to compress). For each size it compares one
request with n=4 outputs against four n=1 requests back to back: the outputs of one request
encode side by side, so n=4 should take well under 4x one output wherever the sink has cores.
The sink replica does this work for every b64_json response before the answer can leave, so
these times are part of that response's latency.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from ray_dit.api import GenerationResult
from ray_dit.config import StorageSettings
from ray_dit.sink import FrameSink


def photo_like(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, 1, size, size, 3]: smooth colour fields plus noise, like a decoded latent."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, 1, size, size, 3), dtype=np.uint8)
    for i in range(n):
        phase = rng.uniform(0, 6)
        base = np.stack([np.sin(6 * x + 2 * y + phase), np.cos(12 * x * y + phase), x + y - 1], -1)
        out[i, 0] = np.clip((base * 0.5 + 0.5) * 200 + rng.normal(0, 6, base.shape), 0, 255)
    return out


def time_store(sink: FrameSink, frames: np.ndarray, fmt: str, reps: int, tag: str) -> float:
    """Median seconds of one ``store`` call over ``reps`` (after one warm-up)."""
    times = []
    for rep in range(reps + 1):
        result = GenerationResult(
            frames=frames, kind="image", seed=0, steps=1, request_id=f"{tag}{rep:04d}", timings={}
        )
        started = time.perf_counter()
        sink.store(result, fmt, include_data=True)
        if rep:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", default="128,512,1024")
    parser.add_argument("--formats", default="png,jpeg,webp")
    args = parser.parse_args()
    ms = 1000.0
    print(f"{'format':<8}{'size':>6}{'n=1 ms':>10}{'4 x n=1 ms':>13}{'n=4 ms':>10}{'n=4 / (4 x n=1)':>18}")
    with tempfile.TemporaryDirectory(prefix="ray_dit_sink_bench_") as spool:
        sink = FrameSink(StorageSettings(spool_dir=spool))
        try:
            for fmt in args.formats.split(","):
                for size in (int(s) for s in args.sizes.split(",")):
                    frames = photo_like(4, size)
                    one = time_store(sink, frames[:1], fmt, args.reps, f"{fmt}{size}a")
                    four = time_store(sink, frames, fmt, args.reps, f"{fmt}{size}b")
                    print(
                        f"{fmt:<8}{size:>6}{one * ms:>10.1f}{4 * one * ms:>13.1f}{four * ms:>10.1f}"
                        f"{four / (4 * one):>18.2f}"
                    )
        finally:
            sink.close()


if __name__ == "__main__":
    main()
