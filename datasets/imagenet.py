"""ImageNet and its test-only variants (ImageNetV2, -Sketch, -A, -R) in CoOp's layout.

Each is a set of class folders below the image folder: named by WordNet id (`n01440764`), or for
ImageNetV2 by class index (`0`..`999`). The YAML's `parts` says which sub-folder each split
lists (ImageNet: train = `train/`, val = test = `val/`, as CoOp evaluates on the official val set;
the variants: train = test = every image, val empty, as CoOp). Labels follow the sorted folders
(V2: the index), so a 200-class variant has labels 0..199; class names are ImageNet's, from the
dataset's `classnames.txt` (CoOp's file, `<wnid> <name>` per line) or, without it, open_clip's
IMAGENET_CLASSNAMES with timm's list of the 1000 WordNet ids in the same index order.

ImageNet has 1.33M images: the built split is written once, gzipped (`.json.gz`, a few MB instead
of about 90 MB of JSON), and later starts read it instead of listing 2,000 folders again.
"""
from __future__ import annotations

from pathlib import Path

from common import DATASETS_DOC, UserError
from datasets.base import SPLITS, DatasetConfig
from datasets.splitting import class_folders, folder_entries, need, parse_lines, save_built_split


def imagenet_classes(root: Path, cfg: DatasetConfig) -> tuple[list[tuple[str, str]], str]:
    """The (wnid, class name) of ImageNet's classes in index order, and where the names came from."""
    path = root / cfg.extra.get("classnames_file", "classnames.txt")
    if path.is_file():
        def parse(line: str) -> tuple[str, str]:
            wnid, _, name = line.partition(" ")
            if not name.strip():
                raise ValueError(line)
            return wnid, name.strip()
        return parse_lines(path, root, cfg, parse, "<wnid> <class name>"), str(path)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from timm.data import ImageNetInfo  # timm comes with open_clip

    return list(zip(ImageNetInfo().label_names(), IMAGENET_CLASSNAMES)), "open_clip's IMAGENET_CLASSNAMES"


def _named(folders: list[str], classes: list[tuple[str, str]], names_from: str, path: Path,
           cfg: DatasetConfig) -> tuple[list[str], list[str]]:
    """The class folders in label order and their class names."""
    if cfg.extra.get("folder_names") == "index":  # ImageNetV2: folder k holds class k
        bad = [f for f in folders if not (f.isdigit() and int(f) < len(classes))]
        if bad:
            raise UserError(f"{cfg.name}: folder {path / bad[0]} is not a class index 0..{len(classes) - 1}; "
                            f"{DATASETS_DOC}")
        folders = sorted(folders, key=int)
        return folders, [classes[int(f)][1] for f in folders]
    by_wnid = dict(classes)
    unknown = [f for f in folders if f not in by_wnid]
    if unknown:
        raise UserError(f"{cfg.name}: folder {path / unknown[0]} is not an ImageNet class in {names_from}; "
                        f"{DATASETS_DOC}")
    return folders, [by_wnid[f] for f in folders]


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    image_root = need(root / cfg.image_dir, root, cfg)
    classes, names_from = imagenet_classes(root, cfg)
    parts = {s: cfg.extra["parts"].get(s) for s in SPLITS}  # split -> sub-folder of image_dir, or None
    entries: dict[str, list] = {}
    test_folders: list[str] = []
    for sub in dict.fromkeys(parts[s] for s in ("test", "train", "val") if parts[s] is not None):
        path = need(image_root / sub, root, cfg)
        folders, names = _named(class_folders(path, cfg), classes, names_from, path, cfg)
        if test_folders and folders != test_folders:  # labels must mean the same classes in every split
            raise UserError(f"{cfg.name}: {path} and {image_root / parts['test']} hold different class folders; "
                            f"{DATASETS_DOC}")
        test_folders = test_folders or folders
        entries[sub] = folder_entries(image_root, sub, folders, names, cfg)
    split = {s: list(entries[p]) if p is not None else [] for s, p in parts.items()}
    return save_built_split(root, cfg, split, f"{image_root}, class names from {names_from}")
