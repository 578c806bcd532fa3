"""What the frame sink adds to a request: encode + spool time per request, by size and n.

    .venv/bin/python benchmarks/sink_store.py [--reps 5] [--formats png,jpeg,webp]

``FrameSink.store`` with S3 off (the local store) on photo-like frames (smooth colour fields
with sensor-like noise, so PNG has something to compress). For each size it compares one
request with n=4 outputs against four n=1 requests back to back: the outputs of one request
encode side by side, so n=4 should take well under 4x one output wherever the sink has cores.
The sink replica does this work for every b64_json response before the answer can leave, so
these times are part of that response's latency. A second table compares PNG compression
levels (``RAY_DIT_PNG_COMPRESS_LEVEL``) on photo-like frames and on flat shapes.
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


def flat_shapes(size: int, seed: int = 0) -> np.ndarray:
    """uint8 [1, 1, size, size, 3]: a few flat-coloured rectangles, like demo:shapes' outputs."""
    rng = np.random.default_rng(seed)
    out = np.empty((1, 1, size, size, 3), dtype=np.uint8)
    out[0, 0] = rng.integers(0, 256, 3)
    for _ in range(4):
        top, left = rng.integers(0, size // 2, 2)
        height, width = rng.integers(size // 8, size // 2, 2)
        out[0, 0, top : top + height, left : left + width] = rng.integers(0, 256, 3)
    return out


def time_store(sink: FrameSink, frames: np.ndarray, fmt: str, reps: int, tag: str) -> tuple[float, int]:
    """Median seconds of one ``store`` call over ``reps`` (after one warm-up), and its bytes."""
    times = []
    stored = 0
    for rep in range(reps + 1):
        result = GenerationResult(frames=frames, kind="image", seed=0, steps=1, request_id=f"{tag}{rep:04d}")
        started = time.perf_counter()
        outputs = sink.store(result, fmt, include_data=True)
        if rep:
            times.append(time.perf_counter() - started)
        stored = sum(out.num_bytes for out in outputs)
    return statistics.median(times), stored


def png_levels(sizes: list[int], levels: list[int], reps: int) -> None:
    """PNG store time and size by ``RAY_DIT_PNG_COMPRESS_LEVEL``, one output per request."""
    ms = 1000.0
    print(f"\n{'PNG image':<12}{'size':>6}" + "".join(f"{f'level {lv} ms':>12}{'KiB':>8}" for lv in levels))
    with tempfile.TemporaryDirectory(prefix="ray_dit_sink_bench_") as spool:
        sinks = {
            lv: FrameSink(StorageSettings(spool_dir=f"{spool}/{lv}", png_compress_level=lv)) for lv in levels
        }
        try:
            for kind, make in (
                ("photo-like", lambda size: photo_like(1, size)),
                ("flat shapes", flat_shapes),
            ):
                for size in sizes:
                    frames = make(size)
                    row = f"{kind:<12}{size:>6}"
                    for level, sink in sinks.items():
                        took, stored = time_store(sink, frames, "png", reps, f"lv{level}{kind[0]}{size}")
                        row += f"{took * ms:>12.1f}{stored / 1024:>8.0f}"
                    print(row)
        finally:
            for sink in sinks.values():
                sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", default="128,512,1024")
    parser.add_argument("--formats", default="png,jpeg,webp")
    parser.add_argument("--png-levels", default="1,6", help="RAY_DIT_PNG_COMPRESS_LEVEL values to compare")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    ms = 1000.0
    print(f"{'format':<8}{'size':>6}{'n=1 ms':>10}{'4 x n=1 ms':>13}{'n=4 ms':>10}{'n=4 / (4 x n=1)':>18}")
    with tempfile.TemporaryDirectory(prefix="ray_dit_sink_bench_") as spool:
        sink = FrameSink(StorageSettings(spool_dir=spool))
        try:
            for fmt in args.formats.split(","):
                for size in sizes:
                    frames = photo_like(4, size)
                    one, _ = time_store(sink, frames[:1], fmt, args.reps, f"{fmt}{size}a")
                    four, _ = time_store(sink, frames, fmt, args.reps, f"{fmt}{size}b")
                    print(
                        f"{fmt:<8}{size:>6}{one * ms:>10.1f}{4 * one * ms:>13.1f}{four * ms:>10.1f}"
                        f"{four / (4 * one):>18.2f}"
                    )
        finally:
            sink.close()
    if "png" in args.formats.split(","):
        png_levels([64, *sizes], [int(lv) for lv in args.png_levels.split(",")], args.reps)


if __name__ == "__main__":
    main()
