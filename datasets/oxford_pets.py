"""OxfordPets (CoOp layout): `oxford_pets/images/<Breed>_<n>.jpg` + split_zhou_OxfordPets.json.

Without the split file, one is built as CoOp does from the official lists annotations/trainval.txt
and annotations/test.txt (`<image name> <class id 1..37> <species> <breed id>` per line): the class
name is the image name without its number, lower case (`american_pit_bull_terrier_12` ->
`american_pit_bull_terrier`); a seeded 20% per class of trainval becomes val.
"""
from __future__ import annotations

from pathlib import Path

from datasets.base import DatasetConfig, label_names
from datasets.splitting import Entry, parse_lines, require_every_class, save_built_split, split_off_val


def _entry(line: str) -> Entry:
    name, class_id = line.split()[:2]
    breed = name.rpartition("_")[0]
    if not breed or int(class_id) < 1:
        raise ValueError(line)
    return [f"{name}.jpg", int(class_id) - 1, breed.lower()]


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    lists = root / "annotations"
    form = "<image name> <class id> <species> <breed id>"
    trainval = parse_lines(lists / "trainval.txt", root, cfg, _entry, form)
    test = parse_lines(lists / "test.txt", root, cfg, _entry, form)
    classnames = label_names(((e[1], e[2]) for e in trainval + test), cfg, lists)
    require_every_class(classnames, test, cfg, lists / "test.txt")
    return save_built_split(root, cfg, split_off_val(trainval, test, cfg, lists / "trainval.txt"),
                            f"{lists}/{{trainval,test}}.txt")
