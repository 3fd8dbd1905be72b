"""OxfordFlowers (Flowers102, CoOp layout): `oxford_flowers/jpg/image_NNNNN.jpg` + split_zhou_OxfordFlowers.json.

Without the split file, one is built as CoOp does from imagelabels.mat (1-based label of image i
in `labels`; image i is `image_%05d.jpg`) and cat_to_name.json (label '1'..'102' -> class name):
per class a seeded 50/20/30 train/val/test split.
"""
from __future__ import annotations

import json
from pathlib import Path

from common import DATASETS_DOC, UserError
from datasets.base import DatasetConfig
from datasets.splitting import load_mat, mat_field, need, require_every_class, save_built_split, split_three_ways


def _class_names(path: Path, n_classes: int) -> list[str]:
    """Names of labels 1..n from cat_to_name.json, in label order."""
    try:
        names = json.loads(path.read_text())
        return [str(names[str(k)]) for k in range(1, n_classes + 1)]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the class names of labels 1..{n_classes} from {path} ({e!r}); "
                        f"{DATASETS_DOC}") from None


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    labels_path = need(root / cfg.extra["labels_file"], root, cfg)
    names_path = need(root / cfg.extra["names_file"], root, cfg)
    labels = [int(v) for v in mat_field(load_mat(labels_path), "labels", labels_path)]
    if not labels or min(labels) < 1:
        raise UserError(f"{labels_path}: 'labels' must be 1-based class numbers; {DATASETS_DOC}")
    names = _class_names(names_path, max(labels))
    entries = [[f"image_{i:05d}.jpg", lab - 1, names[lab - 1]] for i, lab in enumerate(labels, start=1)]
    require_every_class(names, entries, cfg, labels_path)
    return save_built_split(root, cfg, split_three_ways(entries, cfg, labels_path), str(labels_path))
