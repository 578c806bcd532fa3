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


def _train(out: Path, seed: int) -> dict[str, str]:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train_shapes.py"),
        *TINY,
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(out.rglob("*.safetensors"))
    }


def test_training_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    first = _train(tmp_path / "a", seed=3)
    assert len(first) == 4  # both text encoders, the VAE and the transformer
    assert _train(tmp_path / "b", seed=3) == first
    other = _train(tmp_path / "c", seed=4)
    assert all(other[name] != digest for name, digest in first.items())
