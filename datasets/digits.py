"""Digits: scikit-learn's hand-written digits (shipped inside the package), for the demo world.

1797 real 8x8 images, upsampled to 32x32 RGB, with a fixed stratified 60/20/20 split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datasets.base import DatasetConfig, materialise_generated

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def materialise(root: Path, cfg: DatasetConfig) -> None:
    materialise_generated(root, cfg, __file__, lambda: (CLASSNAMES, _split(cfg)))


def _split(cfg: DatasetConfig) -> dict[str, list]:
    from sklearn.datasets import load_digits  # only needed the first time

    size, seed = cfg.extra["image_size"], cfg.extra["seed"]
    digits = load_digits()
    images = (digits.images / 16.0 * 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        n_eval = int(0.2 * len(idx))
        parts = {"test": idx[:n_eval], "val": idx[n_eval:2 * n_eval], "train": idx[2 * n_eval:]}
        for split, ids in parts.items():
            for i in ids:
                img = Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).convert("RGB")
                splits[split].append((img, label))
    return splits
