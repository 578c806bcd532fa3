"""A prompt-adherence judge that reads pixels, with no learned model to trust or download.

For a shapes-world image it finds the background color (majority of the border's nearest named
colors), the foreground (the largest connected region far from the background color), its color
(majority name over the region's interior) and its kind (the circle, square or triangle template,
fitted to the region's bounding box, that overlaps it best, if well enough: a blob is no shape).
Comparing those with the prompt gives three right/wrong answers per image, and a "swap" flag for
images that painted the prompt's background color on the shape and vice versa.

The best template only says which of three shapes a region resembles most, so a lopsided or
four-lobed blob still reads as a circle. Two geometric measures of the region say how well it is
drawn: its roundness (outline radial spread) and its corner fill (how square its corners are).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ray_dit.demo.shapes_world import COLOR_NAMES, COLORS, SHAPES, Combo

_PALETTE = np.asarray([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)
BORDER = 2  # pixels of frame read as background
FG_DISTANCE = 60.0  # RGB distance from the background color that makes a pixel foreground
MIN_AREA_FRACTION = 0.03  # a region smaller than this is noise, not a shape
# A region overlapping even its best template less than this is a blob, not a named shape.
# Ground truth scores >= 0.91, VAE reconstructions >= 0.73 (rounded triangle corners).
MIN_TEMPLATE_IOU = 0.7
# Side of each bounding-box corner patch read for corner fill, as a fraction of the box's shorter side.
CORNER_FRACTION = 0.15
# Share of the region's pixels left outside the box on each side: a stray row of VAE ringing
# must not move the box (a square's whole edge row is >= 2% of its pixels, so it stays in).
CORNER_TRIM = 0.01
# Median roundness a model's circles must reach to look round (exact circles ~0.014, through the
# shipped VAE <= 0.028; the four-lobed circles of the first weights had a median of 0.085).
ROUND_CIRCLES_MEDIAN = 0.04
_CAPTION_RE = re.compile(r"^\s*an?\s+(\w+)\s+(\w+)\s+on\s+an?\s+(\w+)\s+background\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Reading:
    """What the judge sees in an image (None: nothing it could name or measure).

    Measured on 600 ground-truth renders (~200 of each shape) and on the same passed through the
    shipped VAE (encode to the posterior mean, decode), the ceiling for generated images:
    ``roundness``: the outline's radial spread, std / mean of the distances from the region's
    centroid to its boundary pixels (lower is rounder), for any region. Circles 0.011-0.019
    (median 0.014), through the VAE 0.012-0.028 (median 0.016); squares 0.105-0.111, triangles
    0.22-0.23; a four-lobed circle (radius +-10%) 0.072, an ellipse of aspect 1.2 0.068.
    ``corner_fill``: the fraction of the four bounding-box corner patches (CORNER_FRACTION of the
    box's side) that is foreground, a square's sharpness. Squares 0.96-1.00 (median 1.00), through
    the VAE 0.75-1.00 (median 0.94); circles <= 0.12 (VAE <= 0.14), triangles ~0.5; a 36-pixel
    square with corners rounded to a 6-pixel radius 0.68, to a 12-pixel one 0.12.
    """

    bg: str | None
    fg: str | None
    shape: str | None
    area_fraction: float = 0.0
    template_iou: float = 0.0
    roundness: float | None = None
    corner_fill: float | None = None


@dataclass(frozen=True)
class Verdict:
    """One image against its prompt."""

    reading: Reading
    bg_ok: bool
    fg_ok: bool
    shape_ok: bool
    swapped: bool

    @property
    def all_ok(self) -> bool:
        return self.bg_ok and self.fg_ok and self.shape_ok


def parse_prompt(prompt: str) -> Combo:
    """The combination a shapes-world caption asks for; ValueError if it is not one."""
    match = _CAPTION_RE.match(prompt)
    if not match:
        raise ValueError(f"prompt={prompt!r}: not of the form 'a <color> <shape> on a <color> background'")
    fg, shape, bg = (word.lower() for word in match.groups())
    if fg not in COLORS or bg not in COLORS or shape not in SHAPES:
        raise ValueError(f"prompt={prompt!r}: unknown color or shape")
    return Combo(fg, shape, bg)


def _nearest_color(pixels: np.ndarray) -> np.ndarray:
    """Index into COLOR_NAMES of the nearest named color, per pixel ([..., 3] -> [...])."""
    return np.linalg.norm(pixels[..., None, :].astype(np.float32) - _PALETTE, axis=-1).argmin(axis=-1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask; of equal ones, the first in reading order.

    Each pixel of the mask keeps taking the smallest label among itself and its 4 neighbours until
    none changes, so a region ends up labelled with the index of its first pixel (images are tiny).
    """
    outside = mask.size
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape), outside)
    while True:
        padded = np.pad(labels, 1, constant_values=outside)
        around = (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:])
        spread = np.where(mask, np.minimum.reduce([labels, *around]), outside)
        if np.array_equal(spread, labels):
            return labels == np.bincount(labels[mask], minlength=1).argmax()
        labels = spread


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    """Ideal circle, square and apex-up triangle filling an h x w box (sampled at pixel centers)."""
    y = (np.arange(h) + 0.5)[:, None] / h  # 0..1 top to bottom
    x = (np.arange(w) + 0.5)[None, :] / w
    circle = (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
    triangle = np.abs(x - 0.5) <= y / 2
    return {"circle": circle, "square": np.ones((h, w), dtype=bool), "triangle": triangle}


def _boundary(region: np.ndarray) -> np.ndarray:
    """Region pixels with a 4-neighbour outside it (the image's frame counts as outside)."""
    padded = np.pad(region, 1, constant_values=False)
    around = (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:])
    return region & ~np.logical_and.reduce(around)


def roundness(region: np.ndarray) -> float:
    """Std / mean of the distances from the region's centroid to its boundary pixels.

    A template overlap forgives a lopsided or lobed "circle"; the spread of its outline's radius
    does not: 0 for an ideal disc, ~0.015 for a pixelated one, far more for anything else.
    """
    ys, xs = np.nonzero(region)
    by, bx = np.nonzero(_boundary(region))
    radii = np.hypot(by - ys.mean(), bx - xs.mean())
    mean = float(radii.mean())
    return float(radii.std()) / mean if mean > 0 else 0.0


def corner_fill(region: np.ndarray) -> float:
    """Fraction of the region's bounding-box corner patches that the region fills.

    A square fills its box's corners, a rounded blob leaves them empty: the template overlap of a
    square with rounded corners is still high, its corner fill is not. Patches are
    CORNER_FRACTION of the box's shorter side (at least one pixel), so any size reads alike.
    """
    ys, xs = np.nonzero(region)
    (y0, y1), (x0, x1) = (
        np.quantile(v, [CORNER_TRIM, 1 - CORNER_TRIM]).round().astype(int) for v in (ys, xs)
    )
    box = region[y0 : y1 + 1, x0 : x1 + 1]
    k = max(1, round(CORNER_FRACTION * min(box.shape)))
    corners = (box[:k, :k], box[:k, -k:], box[-k:, :k], box[-k:, -k:])
    return float(np.mean([patch.mean() for patch in corners]))


def read(image: np.ndarray) -> Reading:
    """Name the background, the foreground color and the shape kind of a uint8 [H, W, 3] image."""
    img = np.asarray(image, dtype=np.float32)[..., :3]
    edges = (img[:BORDER], img[-BORDER:], img[:, :BORDER], img[:, -BORDER:])
    border = np.concatenate([edge.reshape(-1, 3) for edge in edges])
    border_labels = _nearest_color(border)
    bg_index = Counter(border_labels.tolist()).most_common(1)[0][0]
    bg_rgb = np.median(border[border_labels == bg_index], axis=0)
    mask = np.linalg.norm(img - bg_rgb, axis=-1) > FG_DISTANCE
    region = _largest_component(mask)
    area = float(region.mean())
    bg = COLOR_NAMES[bg_index]
    if area < MIN_AREA_FRACTION:
        return Reading(bg, None, None, area)
    # The interior (all 4 neighbours inside too) avoids the blended pixels along the edge.
    padded = np.pad(region, 1, constant_values=True)
    inner = region & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    pixels = img[inner] if inner.sum() >= 4 else img[region]
    fg_index = Counter(_nearest_color(pixels).tolist()).most_common(1)[0][0]
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = region[y0:y1, x0:x1]
    ious = {
        name: float((box & template).sum()) / float((box | template).sum())
        for name, template in _templates(y1 - y0, x1 - x0).items()
    }
    shape = max(ious, key=ious.__getitem__)
    named = shape if ious[shape] >= MIN_TEMPLATE_IOU else None
    return Reading(
        bg, COLOR_NAMES[fg_index], named, area, ious[shape], roundness(region), corner_fill(region)
    )


def judge(image: np.ndarray, prompt: str | Combo) -> Verdict:
    """Compare what the image shows with what the prompt asked for."""
    want = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    seen = read(image)
    return Verdict(
        reading=seen,
        bg_ok=seen.bg == want.bg,
        fg_ok=seen.fg == want.fg,
        shape_ok=seen.shape == want.shape,
        swapped=seen.bg == want.fg and seen.fg == want.bg,
    )


@dataclass
class Tally:
    """Accuracy over many verdicts."""

    n: int = 0
    bg: int = 0
    fg: int = 0
    shape: int = 0
    all: int = 0
    swapped: int = 0

    def add(self, verdict: Verdict) -> None:
        self.n += 1
        self.bg += verdict.bg_ok
        self.fg += verdict.fg_ok
        self.shape += verdict.shape_ok
        self.all += verdict.all_ok
        self.swapped += verdict.swapped

    def rate(self, field: str) -> float:
        return getattr(self, field) / self.n if self.n else 0.0

    def row(self) -> str:
        return (
            f"bg {self.rate('bg'):.1%}  color {self.rate('fg'):.1%}  shape {self.rate('shape'):.1%}  "
            f"all {self.rate('all'):.1%}  swapped {self.rate('swapped'):.1%}  (n={self.n})"
        )


@dataclass
class Geometry:
    """How well drawn the shapes are over many images, which accuracy alone hides: the roundness
    of those asked for circles, the corner fill of those asked for squares (an image with no
    region has neither; it already fails accuracy)."""

    roundness: list[float] = field(default_factory=list)
    corners: list[float] = field(default_factory=list)

    def add(self, verdict: Verdict, wanted_shape: str) -> None:
        seen = verdict.reading
        if wanted_shape == "circle" and seen.roundness is not None:
            self.roundness.append(seen.roundness)
        elif wanted_shape == "square" and seen.corner_fill is not None:
            self.corners.append(seen.corner_fill)

    def summary(self) -> tuple[float, float, float, float]:
        """Roundness median and 90th percentile, corner fill median and 10th percentile (NaN: none)."""
        r, c = self.roundness or [float("nan")], self.corners or [float("nan")]
        q = np.quantile
        return float(q(r, 0.5)), float(q(r, 0.9)), float(q(c, 0.5)), float(q(c, 0.1))
