"""A procedural "shapes world": one large shape in a named color on a named background.

Every image comes with its caption ("a red circle on a blue background") and is a pure function
of a seed, so the training set, the evaluation prompts and the tests are reproducible anywhere
without downloading data. Some (foreground, background) color pairs are never trained on: the
held-out combinations test whether the model composes words instead of memorising captions, and
whether it knows which color is the background (their reversed pairs *are* trained).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
_SUPERSAMPLE = 4  # drawn 4x larger then box-filtered: anti-aliased edges like a real photo's

# Well separated in RGB (nearest pair ~85 apart), so a pixel judge can name them after a VAE.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "orange": (245, 135, 20),
    "yellow": (245, 220, 40),
    "green": (40, 165, 70),
    "blue": (35, 80, 215),
    "purple": (135, 55, 185),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Shape size (bounding-box side, pixels at 64x64), how far its center may stray from the image's
# and the margin kept to the border. Large, roughly centered shapes: a 2-core CPU hour teaches a
# tiny model geometry only when placement is not the main source of variety.
MIN_SIZE, MAX_SIZE, CENTER_JITTER, MARGIN = 30, 44, 6, 4
COLOR_JITTER = 8


@dataclass(frozen=True)
class Combo:
    """What a caption asks for."""

    fg: str
    shape: str
    bg: str

    @property
    def caption(self) -> str:
        return caption(self.fg, self.shape, self.bg)


@dataclass(frozen=True)
class Sample:
    """One rendered image and the facts behind it (the judge's ground truth)."""

    combo: Combo
    image: np.ndarray  # uint8 [H, W, 3]
    center: tuple[float, float]
    size: float


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(fg: str, shape: str, bg: str) -> str:
    return f"{_article(fg)} {fg} {shape} on {_article(bg)} {bg} background"


def partial_captions(combo: Combo) -> tuple[str, str]:
    """The caption without its background ("a red circle") and without the shape's color
    ("a circle on a blue background"). Training on these too teaches each color word its role
    from its own place in the sentence, not from which other color it came with: with full
    captions only, a pair seen in one order only can be memorised and then drawn swapped."""
    return (
        f"{_article(combo.fg)} {combo.fg} {combo.shape}",
        f"a {combo.shape} on {_article(combo.bg)} {combo.bg} background",
    )


def vocabulary() -> list[str]:
    """Every word a caption can contain (the tokenizers give each one a single token)."""
    return ["a", "an", "on", "background", *COLOR_NAMES, *SHAPES]


def all_combos() -> list[Combo]:
    return [Combo(fg, shape, bg) for fg, bg in itertools.permutations(COLOR_NAMES, 2) for shape in SHAPES]


def held_out_pairs() -> set[tuple[str, str]]:
    """(fg, bg) color pairs never shown in training, for every shape.

    Pair i with i+3 (mod 8): every color is held out once as foreground and once as background,
    and the reversed pair (bg on fg) is always trained, so a model that reads the prompt as a bag
    of colors would swap them.
    """
    n = len(COLOR_NAMES)
    return {(COLOR_NAMES[i], COLOR_NAMES[(i + 3) % n]) for i in range(n)}


def train_combos() -> list[Combo]:
    held = held_out_pairs()
    return [c for c in all_combos() if (c.fg, c.bg) not in held]


def eval_combos() -> list[Combo]:
    held = held_out_pairs()
    return [c for c in all_combos() if (c.fg, c.bg) in held]


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    shifted = np.asarray(rgb) + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(shifted, 0, 255))  # type: ignore[return-value]


def shape_polygon(shape: str, cx: float, cy: float, size: float) -> list[tuple[float, float]] | None:
    """The outline of a triangle (apex up) or None for shapes PIL draws natively."""
    if shape == "triangle":
        h = size / 2
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    return None


def render(
    combo: Combo,
    center: tuple[float, float],
    size: float,
    fg_rgb: tuple[int, int, int] | None = None,
    bg_rgb: tuple[int, int, int] | None = None,
    image_size: int = IMAGE_SIZE,
) -> np.ndarray:
    """Draw one shape; ``center``/``size`` are in output pixels."""
    s = _SUPERSAMPLE
    big = Image.new("RGB", (image_size * s, image_size * s), bg_rgb or COLORS[combo.bg])
    draw = ImageDraw.Draw(big)
    fill = fg_rgb or COLORS[combo.fg]
    cx, cy, h = center[0] * s, center[1] * s, size * s / 2
    if combo.shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif combo.shape == "square":
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif combo.shape == "triangle":
        draw.polygon(shape_polygon("triangle", cx, cy, size * s) or [], fill=fill)
    else:
        raise ValueError(f"shape={combo.shape!r}: must be one of {', '.join(SHAPES)}")
    small = big.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def sample(combo: Combo, rng: np.random.Generator, image_size: int = IMAGE_SIZE) -> Sample:
    """A random placement, size and slight color jitter for ``combo``."""
    scale = image_size / IMAGE_SIZE
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE)) * scale
    jitter = min(CENTER_JITTER * scale, image_size / 2 - MARGIN * scale - size / 2)
    center = (
        image_size / 2 + float(rng.uniform(-jitter, jitter)),
        image_size / 2 + float(rng.uniform(-jitter, jitter)),
    )
    fg_rgb, bg_rgb = _jitter(COLORS[combo.fg], rng), _jitter(COLORS[combo.bg], rng)
    image = render(combo, center, size, fg_rgb, bg_rgb, image_size)
    return Sample(combo, image, center, size)


def dataset(n: int, seed: int, combos: list[Combo] | None = None) -> list[Sample]:
    """``n`` samples cycling through ``combos`` (training combos by default) in a seeded order."""
    combos = combos if combos is not None else train_combos()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(combos), size=n)
    return [sample(combos[int(i)], rng) for i in picks]
