"""The ``ray-dit`` console script, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

CLI = [sys.executable, "-m", "ray_dit.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=300, env=full_env, check=False
    )


def test_generate_image_with_cache_from_env(tmp_path: Path):
    out = tmp_path / "out.png"
    env = {"SGLANG_CACHE_DIT_ENABLED": "true", "SGLANG_CACHE_DIT_RDT": "0.9", "SGLANG_CACHE_DIT_WARMUP": "2"}
    proc = run_cli(
        "generate",
        "a red circle",
        "-o",
        str(out),
        "--steps",
        "8",
        "--size",
        "128x96",
        "--seed",
        "0",
        "--json",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    image = iio.imread(out)
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8
    assert summary["cache"]["enabled"] and summary["cache"]["cached_steps"] > 0
    assert summary["size"] == "128x96" and summary["steps"] == 8
    assert summary["warnings"] == []  # a caption of demo:shapes' grammar


def test_a_prompt_outside_the_vocabulary_warns(tmp_path: Path):
    proc = run_cli("generate", "a cat", "-o", str(tmp_path / "cat.png"), "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    assert "warning: unknown word 'cat': demo:shapes draws" in proc.stderr


def test_generate_video(tmp_path: Path):
    out = tmp_path / "clip.mp4"
    proc = run_cli(
        "generate", "a cat", "--model", "demo:wan-tiny", "-o", str(out), "--frames", "5", "--no-cache"
    )
    assert proc.returncode == 0, proc.stderr
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 5 and frames.shape[1:3] == (64, 64)
    assert "cache: off" in proc.stdout


def test_bad_env_and_bad_arguments_are_clear_errors(tmp_path: Path):
    proc = run_cli(
        "generate", "x", "-o", str(tmp_path / "x.png"), env={"SGLANG_CACHE_DIT_SCM_PRESET": "turbo"}
    )
    assert proc.returncode == 2
    assert "SGLANG_CACHE_DIT_SCM_PRESET='turbo'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("generate", "x", "-o", str(tmp_path / "x.gif"))
    assert proc.returncode == 2 and "--output" in proc.stderr
    proc = run_cli("generate", "x", "-o", str(tmp_path / "x.png"), "--size", "12x")
    assert proc.returncode == 2 and "size='12x'" in proc.stderr
    proc = run_cli("generate", "x", "-o", str(tmp_path / "x.png"), "--cache-params", '{"bogus": 1}')
    assert proc.returncode == 2 and "unknown keys ['bogus']" in proc.stderr


def test_models_lists_every_built_in_model() -> None:
    from ray_dit.engine.registry import registered

    done = run_cli("models", "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in rows] == [s.id for s in registered()]
    assert all(r["family"] and r["task"] in ("image", "video", "edit", "image-to-video") for r in rows)
    wan = next(r for r in rows if r["id"] == "demo:wan-tiny")
    assert (wan["task"], wan["num_frames"], wan["calls_per_step"]) == ("video", 9, None)
    table = run_cli("models").stdout
    assert table.startswith("| id | family | task |") and "| demo:shapes | flux | image |" in table


def test_models_probe_measures_how_cfg_runs() -> None:
    from ray_dit.engine.catalog import describe
    from ray_dit.engine.registry import lookup

    wan = describe(lookup("demo:wan-tiny"), probe=True)
    assert wan.pipeline == "WanPipeline"
    # Wan's default guidance (5) runs the unconditional branch as a second call; 1 turns it off.
    assert wan.calls_per_step == {"default": 2, "guidance=1": 1, "guidance=5": 2, "true_cfg=4+negative": 2}
    flux = describe(lookup("demo:flux-tiny"), probe=True)
    # FLUX's guidance is an embedding: one call, unless true CFG is asked for with a negative prompt.
    assert flux.calls_per_step == {"default": 1, "guidance=1": 1, "guidance=5": 1, "true_cfg=4+negative": 2}
    assert flux.batches is True and wan.batches is True  # both take a list of prompts
