"""`make demo-model` is reproducible from its seed: a (very short) training run twice with one seed
gives byte-identical weights, and another seed gives others."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--images", "64", "--vae-steps", "2", "--steps", "2", "--batch", "8", "--vae-batch", "8", "--no-eval"]


def _train(runs: dict[str, int], root: Path) -> dict[str, dict[str, str]]:
    """Train once per (name, seed), all at once (each run is mostly one core's imports): name ->
    the sha256 of each weight file it wrote."""
    script = str(ROOT / "scripts" / "train_shapes.py")
    procs = {
        name: subprocess.Popen(
            [sys.executable, script, *TINY, "--seed", str(seed), "--out", str(root / name)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, seed in runs.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, (name, err[-3000:])
    return {
        name: {
            str(f.relative_to(root / name)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted((root / name).rglob("*.safetensors"))
        }
        for name in runs
    }


def test_training_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    weights = _train({"a": 3, "b": 3, "c": 4}, tmp_path)
    first = weights["a"]
    assert len(first) == 4  # both text encoders, the VAE and the transformer
    assert weights["b"] == first
    assert all(weights["c"][name] != digest for name, digest in first.items())
