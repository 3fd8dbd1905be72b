"""StanfordDogs: `stanford_dogs/Images/<synset>-<breed>/*.jpg` + split_alexey_stanford_dogs.json.

The paper uses its own split file. Without it, one is built from the official lists
(train_list.mat, test_list.mat, in `lists/` or next to `Images/`): classes are the image folders
in synset order, named as the paper's split file names them (the text between the first and second
'-', underscores as spaces: 'n02086240-Shih-Tzu' -> 'Shih'); a seeded 20% per class of the
official training images becomes val. Such a split need not match the paper's file: use that file
to compare figures with the paper's.
"""
from __future__ import annotations

from pathlib import Path

from common import DATASETS_DOC, UserError
from datasets.base import DatasetConfig
from datasets.splitting import (Entry, first_existing, load_mat, mat_field, require_every_class, save_built_split,
                                split_off_val)


def breed_name(folder: str) -> str:
    """'n02085782-Japanese_spaniel' -> 'Japanese spaniel'; 'n02086240-Shih-Tzu' -> 'Shih'."""
    parts = folder.split("-")
    if len(parts) < 2 or not parts[1]:
        raise UserError(f"StanfordDogs: image folder '{folder}' is not named <synset>-<breed>; {DATASETS_DOC}")
    return parts[1].replace("_", " ")


def _files(path: Path) -> list[str]:
    """Image paths (below Images/) listed in an official *_list.mat."""
    return [str(f).replace("\\", "/") for f in mat_field(load_mat(path), "file_list", path)]


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    lists = [root / "lists", root]
    train_list = first_existing([d / "train_list.mat" for d in lists], root, cfg)
    test_list = first_existing([d / "test_list.mat" for d in lists], root, cfg)
    train, test = _files(train_list), _files(test_list)
    folders = sorted({f.split("/")[0] for f in train + test})
    label = {folder: i for i, folder in enumerate(folders)}

    def entries(files: list[str]) -> list[Entry]:
        return [[f, label[f.split("/")[0]], breed_name(f.split("/")[0])] for f in files]

    test_entries = entries(test)
    require_every_class([breed_name(f) for f in folders], test_entries, cfg, test_list)
    return save_built_split(root, cfg, split_off_val(entries(train), test_entries, cfg, train_list),
                            f"{train_list.parent}/{{train,test}}_list.mat")
