"""A procedural "shapes world": one large shape in a named color on a named background.

Every image comes with its caption ("a red circle on a blue background") and is a pure function
of a seed, so the training set, the evaluation prompts and the tests are reproducible anywhere
without downloading data. Some (foreground, background) color pairs are never trained on: the
held-out combinations test whether the model composes words instead of memorising captions, and
whether it knows which color is the background (their reversed pairs *are* trained).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
_SUPERSAMPLE = 4  # drawn 4x larger then box-filtered: anti-aliased edges like a real photo's

RGB = tuple[int, int, int]
# Well separated in RGB (nearest pair ~85 apart), so a pixel judge can name them after a VAE.
COLORS: dict[str, RGB] = {
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
        return f"{_article(self.fg)} {self.fg} {self.shape} on {_article(self.bg)} {self.bg} background"


@dataclass(frozen=True)
class Sample:
    """One rendered image and what it shows (the judge's ground truth)."""

    combo: Combo
    image: np.ndarray  # uint8 [H, W, 3]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


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


_WORD = re.compile(r"[a-z]+")


def _grammar() -> re.Pattern[str]:
    color, shape = "|".join(COLOR_NAMES), "|".join(SHAPES)
    full = rf"an? (?:{color}) (?:{shape}) on an? (?:{color}) background"
    no_background = rf"an? (?:{color}) (?:{shape})"
    no_color = rf"an? (?:{shape}) on an? (?:{color}) background"
    return re.compile(rf"^(?:{full}|{no_background}|{no_color})$")


GRAMMAR_TEXT = "a|an <color> <shape> on a|an <color> background"


def prompt_warnings(prompt: str) -> list[str]:
    """What a user should know about a prompt the model was never trained on: unknown words are
    ignored or smear the image, a known-word sentence of another form draws something unasked.
    Empty for a caption of the trained grammar (or one of its trained partial forms)."""
    words = _WORD.findall(prompt.lower())
    known = set(vocabulary())
    unknown = list(dict.fromkeys(w for w in words if w not in known))
    where = (
        f"demo:shapes draws '{GRAMMAR_TEXT}' with the colors {', '.join(COLOR_NAMES)} and the "
        f"shapes {', '.join(SHAPES)}"
    )
    if unknown:
        listed = ", ".join(repr(w) for w in unknown)
        noun = "word" if len(unknown) == 1 else "words"
        return [f"unknown {noun} {listed}: {where}; other words are ignored or smear the image"]
    if not _grammar().match(" ".join(words)):
        return [f"the prompt is not in the trained form: {where}"]
    return []


def all_combos() -> list[Combo]:
    return [Combo(fg, shape, bg) for fg, bg in itertools.permutations(COLOR_NAMES, 2) for shape in SHAPES]


def held_out_pairs() -> set[tuple[str, str]]:
    """(fg, bg) color pairs never shown in training, for every shape.

    Pair i with i+3 (mod 8): every color is held out once as foreground and once as background,
    and the reversed pair (bg on fg) is always trained, so a model that reads the prompt as a bag
    of colors would swap them.
    """
    return set(zip(COLOR_NAMES, COLOR_NAMES[3:] + COLOR_NAMES[:3], strict=True))


def train_combos() -> list[Combo]:
    return [combo for combo in all_combos() if (combo.fg, combo.bg) not in held_out_pairs()]


def eval_combos() -> list[Combo]:
    return [combo for combo in all_combos() if (combo.fg, combo.bg) in held_out_pairs()]


def _jitter(rgb: RGB, rng: np.random.Generator) -> RGB:
    shifted = np.asarray(rgb) + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
    return tuple(int(channel) for channel in np.clip(shifted, 0, 255))  # type: ignore[return-value]


def render(combo: Combo, center: tuple[float, float], size: float, fg_rgb: RGB, bg_rgb: RGB) -> np.ndarray:
    """Draw one shape; ``center``/``size`` are in output pixels."""
    scale = _SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), bg_rgb)
    draw = ImageDraw.Draw(big)
    cx, cy, half = center[0] * scale, center[1] * scale, size * scale / 2
    if combo.shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fg_rgb)
    elif combo.shape == "square":
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fg_rgb)
    elif combo.shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fg_rgb)
    else:
        raise ValueError(f"shape={combo.shape!r}: must be one of {', '.join(SHAPES)}")
    small = big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def sample(combo: Combo, rng: np.random.Generator) -> Sample:
    """A random placement, size and slight color jitter for ``combo``."""
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
    jitter = min(CENTER_JITTER, IMAGE_SIZE / 2 - MARGIN - size / 2)
    center = (
        IMAGE_SIZE / 2 + float(rng.uniform(-jitter, jitter)),
        IMAGE_SIZE / 2 + float(rng.uniform(-jitter, jitter)),
    )
    fg_rgb, bg_rgb = _jitter(COLORS[combo.fg], rng), _jitter(COLORS[combo.bg], rng)
    return Sample(combo, render(combo, center, size, fg_rgb, bg_rgb))


def dataset(n: int, seed: int, combos: list[Combo] | None = None) -> list[Sample]:
    """``n`` samples cycling through ``combos`` (training combos by default) in a seeded order."""
    combos = combos if combos is not None else train_combos()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(combos), size=n)
    return [sample(combos[int(i)], rng) for i in picks]
