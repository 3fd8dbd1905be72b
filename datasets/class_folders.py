"""Datasets that are one folder of images per class (Caltech101, Food101, DTD, EuroSAT, PinsFaces, CelebFaces),
as CoOp reads them.

Without the split file, one is built as CoOp does: the class folders sorted by name, minus the
YAML's `ignored`, their number checked against `num_classes`, named by the YAML's `rename`
(folder -> class name) or else by the folder name without the YAML's `folder_prefix` (PinsFaces'
`pins_Chris Evans` -> `Chris Evans`), and per class a seeded `p_train`/`p_val`/rest train/val/test split.
"""
from __future__ import annotations

from pathlib import Path

from common import DATASETS_DOC, UserError
from datasets.base import DatasetConfig
from datasets.splitting import class_folders, folder_entries, need, save_built_split, split_three_ways


def _class_name(folder: str, cfg: DatasetConfig, image_root: Path) -> str:
    """The class name of a class folder: `rename`'s, or the folder name without `folder_prefix`.

    With a prefix set, a folder without it is not one of the release's class folders (a stray or
    misplaced folder): an error naming it, rather than a class named after it.
    """
    rename, prefix = cfg.extra.get("rename", {}), cfg.extra.get("folder_prefix", "")
    if folder in rename:
        return rename[folder]
    if not folder.startswith(prefix) or folder == prefix:
        raise UserError(f"{cfg.name}: folder {image_root / folder} is not a class folder "
                        f"'{prefix}<class name>'; {DATASETS_DOC}")
    return folder.removeprefix(prefix)


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    image_root = need(root / cfg.image_dir, root, cfg)
    folders = class_folders(image_root, cfg, ignored=set(cfg.extra.get("ignored", [])))
    names = [_class_name(f, cfg, image_root) for f in folders]
    entries = folder_entries(image_root, ".", folders, names, cfg)
    return save_built_split(root, cfg, split_three_ways(entries, cfg, image_root), str(image_root))
