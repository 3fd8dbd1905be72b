"""SUN397 (CoOp layout): `sun397/SUN397/<letter>/<scene>[/<kind>]/*.jpg` + split_zhou_SUN397.json.

Without the split file, one is built as CoOp does from the official partition files next to the
images: classes are the lines of ClassName.txt in order (`/a/apartment_building/outdoor`), images
the lines of Training_01.txt and Testing_01.txt (`/a/abbey/sun_<id>.jpg`). A class is
named by its folders without the letter, last first (`outdoor apartment_building`); a seeded 20%
per class of the training images becomes val.
"""
from __future__ import annotations

from pathlib import Path

from datasets.base import DatasetConfig
from datasets.splitting import Entry, parse_lines, read_lines, require_every_class, save_built_split, split_off_val


def scene_name(folder: str) -> str:
    """'a/apartment_building/outdoor' -> 'outdoor apartment_building' (CoOp's class names)."""
    return " ".join(reversed(folder.split("/")[1:]))


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    folders = [line.lstrip("/") for line in read_lines(root / "ClassName.txt", root, cfg)]
    label = {folder: i for i, folder in enumerate(folders)}
    classnames = [scene_name(f) for f in folders]

    def entry(line: str) -> Entry:
        path = line.lstrip("/")
        folder = path.rpartition("/")[0]
        return [path, label[folder], classnames[label[folder]]]

    form = "/<letter>/<scene>/<image>.jpg"
    trainval = parse_lines(root / "Training_01.txt", root, cfg, entry, form)
    test = parse_lines(root / "Testing_01.txt", root, cfg, entry, form)
    require_every_class(classnames, test, cfg, root / "Testing_01.txt")
    return save_built_split(root, cfg, split_off_val(trainval, test, cfg, root / "Training_01.txt"),
                            f"{root}/{{ClassName,Training_01,Testing_01}}.txt")
