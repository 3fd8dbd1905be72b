"""Shapes: coloured shapes, one class per colour x shape ('red star', 'blue star', 'red circle', ...).

Class names share words the way the paper's fine-grained classes do ('toy poodle' / 'toy
terrier'): forgetting 'red star' must keep 'blue star' and 'red circle', and neither the colour
nor the shape alone names a class. Each image is drawn at 2x size on a near-grey background with
a jittered hue, saturation and brightness of its colour, a random size, position and rotation,
then shrunk to the configured size (anti-aliased) and given a little pixel noise.
Generated deterministically; per class: 300 train, 40 val, 60 test images.
"""
from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datasets.base import DatasetConfig, materialise_generated

HUES = {"red": 0.0, "yellow": 0.15, "green": 0.33, "blue": 0.62}  # centre hue of each colour (HSV, 0-1)
SHAPES = ["circle", "square", "triangle", "star"]
CLASSNAMES = [f"{colour} {shape}" for colour in HUES for shape in SHAPES]
PER_CLASS = {"train": 300, "val": 40, "test": 60}
HUE_JITTER = 0.03  # +- around the centre hue: far from the next colour (>= 0.15 away)
PIXEL_NOISE = 0.03  # std of the Gaussian noise added to the final image (pixels in 0-1)


def _polygon(n: int, r: float, angle: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (or a star when `inner` gives the inner radius ratio)."""
    pts, k = [], 2 * n if inner else n
    for i in range(k):
        rad = r * (inner if inner and i % 2 else 1.0)
        a = angle + 2 * math.pi * i / k
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


def _outline(shape: str, r: float, angle: float) -> list[tuple[float, float]]:
    """The shape's outline centred at 0, as a polygon."""
    if shape == "circle":
        return _polygon(48, r, 0)
    if shape == "square":
        return _polygon(4, r, angle)
    if shape == "triangle":
        return _polygon(3, r, angle)
    if shape == "star":
        return _polygon(5, r, angle, inner=0.45)
    raise ValueError(shape)


def _colour(colour: str, rng: np.random.Generator) -> tuple[int, int, int]:
    hue = (HUES[colour] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0))
    return tuple(int(255 * v) for v in rgb)


def draw_shape(classname: str, size: int, rng: np.random.Generator) -> Image.Image:
    colour, shape = classname.split(" ")
    big = 2 * size
    grey = rng.uniform(0.15, 0.85) + rng.uniform(-0.04, 0.04, 3)  # a faint tint, never a class colour
    img = Image.new("RGB", (big, big), tuple(int(255 * v) for v in grey))
    r = big * rng.uniform(0.24, 0.42)
    cx, cy = rng.uniform(r, big - r, 2)
    poly = _outline(shape, r, rng.uniform(0, 2 * math.pi))
    ImageDraw.Draw(img).polygon([(cx + x, cy + y) for x, y in poly], fill=_colour(colour, rng))
    pixels = np.asarray(img.resize((size, size), Image.LANCZOS)) / 255.0
    pixels = pixels + rng.normal(0, PIXEL_NOISE, pixels.shape)
    return Image.fromarray((255 * pixels.clip(0, 1)).round().astype(np.uint8))


def materialise(root: Path, cfg: DatasetConfig) -> None:
    materialise_generated(root, cfg, __file__, lambda: (CLASSNAMES, _split(cfg)))


def _split(cfg: DatasetConfig) -> dict[str, list]:
    size, seed = cfg.extra["image_size"], cfg.extra["seed"]
    splits: dict[str, list] = {s: [] for s in PER_CLASS}
    for label, name in enumerate(CLASSNAMES):
        rng = np.random.default_rng([seed, label])  # each class drawn from its own stream
        for split, n in PER_CLASS.items():
            splits[split] += [(draw_shape(name, size, rng), label) for _ in range(n)]
    return splits
