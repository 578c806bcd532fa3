"""Render ``docs/images/shapes_grid.png``: demo:shapes prompts (rows) x cache settings (columns).

Each cell is one 64x64 image (shown 2x, nearest-neighbour) generated through ray_dit's Engine with
the same seed per row, so the columns differ only by the cache setting. A check or cross under
each cell is the pixel judge's verdict on the prompt.

Usage: python scripts/render_grid.py [--out docs/images/shapes_grid.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ray_dit.api import GenerationRequest  # noqa: E402
from ray_dit.config import CacheDitSettings, parse_overrides  # noqa: E402
from ray_dit.demo.judge import judge  # noqa: E402
from ray_dit.engine import Engine, EngineOptions  # noqa: E402

PROMPTS = [
    ("a red circle on a blue background", 1),
    ("a yellow square on a purple background", 2),  # a held-out color pair: never trained
    ("a white triangle on a black background", 3),
    ("an orange circle on a green background", 4),
    ("a blue square on a yellow background", 5),
    ("a black triangle on an orange background", 6),
]
SETTINGS: list[tuple[str, dict[str, Any] | None]] = [
    ("no cache", None),
    ("SGLang defaults", {}),
    ("SCM fast static", {"scm_preset": "fast", "scm_policy": "static"}),
    ("SCM ultra static", {"scm_preset": "ultra", "scm_policy": "static"}),
    ("TaylorSeer O2", {"enable_taylorseer": True, "taylorseer_order": 2}),
]
SCALE, PAD, LABEL_W, HEAD_H, FOOT_H = 2, 8, 230, 28, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "shapes_grid.png")
    args = parser.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    engine = Engine(EngineOptions(model="demo:shapes", device="cpu"), cache_settings=CacheDitSettings())
    cell = engine.defaults.width * SCALE
    width = LABEL_W + len(SETTINGS) * (cell + PAD) + PAD
    height = HEAD_H + len(PROMPTS) * (cell + FOOT_H + PAD) + PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for j, (name, _) in enumerate(SETTINGS):
        draw.text((LABEL_W + j * (cell + PAD), 8), name, fill=(0, 0, 0), font=font)
    for i, (prompt, seed) in enumerate(PROMPTS):
        y = HEAD_H + i * (cell + FOOT_H + PAD)
        draw.text((PAD, y + cell // 2 - 6), prompt, fill=(0, 0, 0), font=font)
        for j, (name, params) in enumerate(SETTINGS):
            request = GenerationRequest(prompt=prompt, seed=seed)
            if params is not None:
                request = request.replace(cache=parse_overrides(True, params))
            result = engine.generate(request)
            frame = np.ascontiguousarray(result.frames[0, 0])
            image = Image.fromarray(frame).resize((cell, cell), Image.Resampling.NEAREST)
            x = LABEL_W + j * (cell + PAD)
            canvas.paste(image, (x, y))
            verdict = judge(frame, prompt)
            skipped = result.cache.skipped_block_fraction
            note = ("ok" if verdict.all_ok else "x") + (
                f"  {skipped:.0%} skipped" if params is not None else ""
            )
            draw.text((x, y + cell + 2), note, fill=(0, 110, 0) if verdict.all_ok else (190, 0, 0), font=font)
            print(f"{prompt!r:45} {name:16} judge={'ok' if verdict.all_ok else verdict.reading}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out} ({width}x{height})")


if __name__ == "__main__":
    main()
