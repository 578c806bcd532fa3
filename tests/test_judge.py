"""The judge's shape-quality measures: roundness (outline radial spread) and corner fill.

The template overlap alone reads a lobed or lopsided blob as a circle and a rounded square as a
square; these tests show the two measures tell them apart, on ground-truth renders, on renders
passed through the shipped VAE (the ceiling for generated images) and on misshapen masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_dit.demo import shapes_world as world
from ray_dit.demo.judge import corner_fill, read, roundness
from ray_dit.demo.shapes_model import WEIGHTS_DIR

# Measured on 600 ground-truth renders: circles' roundness <= 0.020, through the VAE <= 0.028.
TRUE_ROUNDNESS = 0.025
VAE_ROUNDNESS = 0.03
_Y, _X = np.mgrid[:64, :64] + 0.5
_R, _THETA = np.hypot(_Y - 32, _X - 32), np.arctan2(_Y - 32, _X - 32)


def _renders(shape: str, n: int, seed: int) -> list[world.Sample]:
    return world.dataset(n, seed, combos=[c for c in world.all_combos() if c.shape == shape])


def _paint(mask: np.ndarray) -> np.ndarray:
    """A hard-edged red mask on blue, as the judge reads images."""
    fg, bg = np.asarray(world.COLORS["red"]), np.asarray(world.COLORS["blue"])
    return np.where(mask[..., None], fg, bg).astype(np.uint8)


def _rounded_square(side: float, radius: float) -> np.ndarray:
    """A centered square whose corners are quarter circles of ``radius`` pixels."""
    dy = np.clip(np.abs(_Y - 32) - (side / 2 - radius), 0, None)
    dx = np.clip(np.abs(_X - 32) - (side / 2 - radius), 0, None)
    return (np.abs(_Y - 32) <= side / 2) & (np.abs(_X - 32) <= side / 2) & (dy**2 + dx**2 <= radius**2)


MISSHAPEN_CIRCLES = {
    "four-lobed": 16 * (1 + 0.1 * np.cos(4 * _THETA)) >= _R,
    "lopsided (a bump on one side)": (_R <= 15) | (np.hypot(_Y - 32, _X - 44) <= 8),
    "egg (half disc, half ellipse)": np.where(
        _X < 32, _R <= 16, np.hypot((_Y - 32) / 16, (_X - 32) / 11) <= 1
    ),
}


@pytest.fixture(scope="module")
def vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(WEIGHTS_DIR / "vae").eval()


def _through_vae(vae: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Encode (posterior mean) and decode, back to uint8, as training measured the VAE."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.no_grad():
        out = vae.decode(vae.encode(x).latent_dist.mean).sample
    return ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def test_true_circles_are_round_and_leave_their_corners_empty():
    readings = [read(s.image) for s in _renders("circle", 40, seed=5)]
    assert max(r.roundness for r in readings) <= TRUE_ROUNDNESS
    assert max(r.corner_fill for r in readings) <= 0.2


def test_true_squares_fill_their_corners_and_are_not_round():
    readings = [read(s.image) for s in _renders("square", 40, seed=6)]
    assert min(r.corner_fill for r in readings) >= 0.95
    assert min(r.roundness for r in readings) >= 0.09
    triangles = [read(s.image) for s in _renders("triangle", 20, seed=7)]
    assert all(0.3 <= r.corner_fill <= 0.6 and r.roundness >= 0.15 for r in triangles)


@pytest.mark.parametrize("name", list(MISSHAPEN_CIRCLES))
def test_misshapen_circles_pass_the_template_but_not_roundness(name):
    reading = read(_paint(MISSHAPEN_CIRCLES[name]))
    assert reading.shape == "circle"  # what the template overlap alone would accept
    assert reading.roundness >= 2 * VAE_ROUNDNESS, reading


def test_rounded_squares_pass_the_template_but_not_corner_fill():
    fills = []
    for radius in (6, 8, 12):
        reading = read(_paint(_rounded_square(36, radius)))
        assert reading.shape == "square", reading
        fills.append(reading.corner_fill)
    assert fills[0] <= 0.75 and fills == sorted(fills, reverse=True) and fills[-1] <= 0.25
    assert corner_fill(_rounded_square(36, 0)) == 1.0


def test_vae_reconstructions_stay_under_the_vae_bounds(vae):
    circles = _renders("circle", 16, seed=8)
    squares = _renders("square", 16, seed=9)
    recon = _through_vae(vae, np.stack([s.image for s in circles + squares]))
    readings = [read(image) for image in recon]
    assert max(r.roundness for r in readings[:16]) <= VAE_ROUNDNESS
    assert max(r.corner_fill for r in readings[:16]) <= 0.2
    square_fills = [r.corner_fill for r in readings[16:]]
    assert min(square_fills) >= 0.7 and float(np.median(square_fills)) >= 0.9


def test_measures_need_a_region():
    blank = np.full((64, 64, 3), world.COLORS["green"], dtype=np.uint8)
    reading = read(blank)
    assert reading.roundness is None and reading.corner_fill is None
    assert roundness(_R <= 16) <= TRUE_ROUNDNESS
