"""Caltech101 (CoOp layout): `caltech-101/101_ObjectCategories/<class>/*.jpg` + split_zhou_Caltech101.json.

Without the split file, one is built as CoOp does: the class folders sorted by name, minus the
ignored ones (BACKGROUND_Google, Faces_easy), four renamed (airplanes -> airplane, ...), and per
class a seeded 50/20/30 train/val/test split. All of these settings live in Caltech101.yaml.
"""
from __future__ import annotations

from pathlib import Path

from common import DATASETS_DOC, UserError
from datasets.base import DatasetConfig
from datasets.splitting import IMAGE_SUFFIXES, need, save_built_split, split_three_ways


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    image_root = need(root / cfg.image_dir, root, cfg)
    ignored, rename = set(cfg.extra.get("ignored", [])), cfg.extra.get("rename", {})
    folders = sorted(d.name for d in image_root.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and d.name not in ignored)
    expected = int(cfg.extra.get("num_classes", len(folders)))
    if len(folders) != expected:
        raise UserError(f"{cfg.name}: {image_root} holds {len(folders)} class folders, expected {expected} "
                        f"(incomplete download?); {DATASETS_DOC}")
    entries = []
    for label, folder in enumerate(folders):
        images = sorted(f.name for f in (image_root / folder).iterdir()
                        if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if not images:
            raise UserError(f"{cfg.name}: class folder {image_root / folder} holds no images; {DATASETS_DOC}")
        entries += [[f"{folder}/{name}", label, rename.get(folder, folder)] for name in images]
    return save_built_split(root, cfg, split_three_ways(entries, cfg, image_root), str(image_root))
