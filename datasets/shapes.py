"""Shapes: coloured geometric shapes generated deterministically, for the demo world.

Each image is drawn at 2x size with a random colour pair, size, position and rotation, then
shrunk to the configured size (anti-aliased). Per class: 500 train, 50 val, 60 test images.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from datasets.base import DatasetConfig, write_generated_dataset

CLASSNAMES = ["circle", "square", "triangle", "star", "cross", "ring", "crescent", "heart"]
PER_CLASS = {"train": 500, "val": 50, "test": 60}


def _polygon(n: int, r: float, angle: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (or a star when `inner` gives the inner radius ratio)."""
    pts, k = [], 2 * n if inner else n
    for i in range(k):
        rad = r * (inner if inner and i % 2 else 1.0)
        a = angle + 2 * math.pi * i / k
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


def _shape_points(name: str, r: float, angle: float) -> list[list[tuple[float, float]]]:
    """Outline(s) of a shape centred at 0, as polygons; later ones are drawn in background colour."""
    if name == "circle":
        return [_polygon(48, r, 0)]
    if name == "square":
        return [_polygon(4, r, angle)]
    if name == "triangle":
        return [_polygon(3, r, angle)]
    if name == "star":
        return [_polygon(5, r, angle, inner=0.42)]
    if name == "cross":
        w = r / 3
        arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        c, s = math.cos(angle), math.sin(angle)
        return [[(x * c - y * s, x * s + y * c) for x, y in arm]]
    if name == "ring":
        return [_polygon(48, r, 0), _polygon(48, r * 0.55, 0)]
    if name == "crescent":
        dx, dy = 0.45 * r * math.cos(angle), 0.45 * r * math.sin(angle)
        return [_polygon(48, r, 0), [(x + dx, y + dy) for x, y in _polygon(48, r * 0.85, 0)]]
    if name == "heart":
        pts = []
        for i in range(64):
            t = 2 * math.pi * i / 64
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x * r / 17, y * r / 17))
        a = (angle % (math.pi / 2)) - math.pi / 4  # keep hearts roughly upright
        c, s = math.cos(a), math.sin(a)
        return [[(x * c - y * s, x * s + y * c) for x, y in pts]]
    raise ValueError(name)


def draw_shape(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    big = 2 * size
    fg = rng.integers(0, 256, 3)
    bg = rng.integers(0, 256, 3)
    while np.abs(fg.astype(int) - bg.astype(int)).sum() < 200:  # keep the shape visible
        bg = rng.integers(0, 256, 3)
    img = Image.new("RGB", (big, big), tuple(int(v) for v in bg))
    draw = ImageDraw.Draw(img)
    r = big * rng.uniform(0.22, 0.42)
    cx, cy = rng.uniform(r, big - r, 2)
    angle = rng.uniform(0, 2 * math.pi)
    for i, poly in enumerate(_shape_points(name, r, angle)):
        colour = fg if i == 0 else bg
        draw.polygon([(cx + x, cy + y) for x, y in poly], fill=tuple(int(v) for v in colour))
    return img.resize((size, size), Image.LANCZOS)


def materialise(root: Path, cfg: DatasetConfig) -> None:
    if (root / cfg.split_file).is_file():
        return
    size, seed = cfg.extra["image_size"], cfg.extra["seed"]
    splits: dict[str, list] = {s: [] for s in PER_CLASS}
    for label, name in enumerate(CLASSNAMES):
        rng = np.random.default_rng([seed, label])  # each class drawn from its own stream
        for split, n in PER_CLASS.items():
            splits[split] += [(draw_shape(name, size, rng), label) for _ in range(n)]
    write_generated_dataset(root, cfg, CLASSNAMES, splits)
