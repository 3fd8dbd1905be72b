"""Datasets that are one folder of images per class (Caltech101, Food101, DTD, EuroSAT), as CoOp reads them.

Without the split file, one is built as CoOp does: the class folders sorted by name, minus the
YAML's `ignored`, renamed by its `rename` (folder -> class name), their number checked against
`num_classes`, and per class a seeded `p_train`/`p_val`/rest train/val/test split.
"""
from __future__ import annotations

from pathlib import Path

from datasets.base import DatasetConfig
from datasets.splitting import class_folders, folder_entries, need, save_built_split, split_three_ways


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    image_root = need(root / cfg.image_dir, root, cfg)
    folders = class_folders(image_root, cfg, ignored=set(cfg.extra.get("ignored", [])))
    rename = cfg.extra.get("rename", {})
    entries = folder_entries(image_root, ".", folders, [rename.get(f, f) for f in folders], cfg)
    return save_built_split(root, cfg, split_three_ways(entries, cfg, image_root), str(image_root))
