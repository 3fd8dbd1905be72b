"""StanfordCars (CoOp layout): `stanford_cars/cars_{train,test}/*.jpg` + split_zhou_StanfordCars.json.

Without the split file, one is built as CoOp does from the devkit: class names from
devkit/cars_meta.mat with the year moved to the front ("Audi S6 Sedan 2011" -> "2011 Audi S6
Sedan"), train images from devkit/cars_train_annos.mat (of which a seeded 20% per class becomes
val), test images from cars_test_annos_withlabels.mat.
"""
from __future__ import annotations

from pathlib import Path

from common import DATASETS_DOC, UserError
from datasets.base import DatasetConfig
from datasets.splitting import (Entry, first_existing, load_mat, mat_field, need, require_every_class, save_built_split,
                                split_off_val)


def year_first(name: str) -> str:
    """'AM General Hummer SUV 2000' -> '2000 AM General Hummer SUV' (CoOp's class names)."""
    words = name.split()
    return " ".join(words[-1:] + words[:-1])


def _entries(annos: Path, folder: str, classnames: list[str]) -> list[Entry]:
    """[folder/fname, label, classname] for every annotation of a devkit file (1-based 'class')."""
    records = mat_field(load_mat(annos), "annotations", annos)
    try:
        pairs = [(str(r["fname"]), int(r["class"]) - 1) for r in records]
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise UserError(f"{annos}: annotations lack 'fname'/'class' ({e}); {DATASETS_DOC}") from None
    bad = [lab + 1 for _, lab in pairs if not 0 <= lab < len(classnames)]
    if bad:
        raise UserError(f"{annos}: class {bad[0]} is not in cars_meta.mat (1..{len(classnames)}); {DATASETS_DOC}")
    return [[f"{folder}/{fname}", lab, classnames[lab]] for fname, lab in pairs]


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    meta = need(root / "devkit" / "cars_meta.mat", root, cfg)
    train_annos = need(root / "devkit" / "cars_train_annos.mat", root, cfg)
    test_annos = first_existing([root / "cars_test_annos_withlabels.mat",
                                 root / "devkit" / "cars_test_annos_withlabels.mat"], root, cfg)
    classnames = [year_first(str(n)) for n in mat_field(load_mat(meta), "class_names", meta)]
    trainval = _entries(train_annos, "cars_train", classnames)
    test = _entries(test_annos, "cars_test", classnames)
    require_every_class(classnames, test, cfg, test_annos)
    source = f"{meta.parent}/cars_*annos*.mat"
    return save_built_split(root, cfg, split_off_val(trainval, test, cfg, train_annos), source)
