"""The dataset interface shared by the paper's four datasets and the demo world.

Every dataset lives on disk in the CoOp/Dassl layout: a folder with the images and a split
JSON holding `train`/`val`/`test` lists of `[relative_path, label, classname]`. The class order
is the label order. `configs/datasets/<Name>.yaml` is the one source of truth for the folder,
image directory, split file and prompt template of each dataset.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from common import DATASETS_DOC, UserError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Datum:
    impath: str  # absolute path of the image file
    label: int
    classname: str


@dataclass
class DatasetConfig:
    name: str
    folder: str  # below --data_root
    image_dir: str  # below the dataset folder; split paths are relative to it
    split_file: str  # below the dataset folder
    template: str  # zero-shot prompt, e.g. "a photo of a {}."
    module: str  # the datasets/<module>.py that knows how to build a missing split
    extra: dict = field(default_factory=dict)  # reader-specific settings
    # every prompt template of the dataset, for the template-ensemble audit: a list of format strings,
    # or "openai_imagenet" for the 80 CLIP ImageNet templates that open_clip ships (default: [template])
    ensemble_templates: list | str | None = None
    # other names of classes, {classname: [alias, ...]}, for the alias audit: inline in the YAML, or
    # `aliases_file:` (below configs/) shared by several datasets
    aliases: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class DatasetSplits:
    """A dataset as the scripts use it: class names in label order, three splits, a template."""
    name: str
    classnames: list[str]
    template: str
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    root: Path
    templates: list = field(default_factory=list)  # the ensemble: format strings or callables (open_clip's)
    aliases: dict[str, list[str]] = field(default_factory=dict)  # {classname: [other names]}

    def split(self, which: str) -> list[Datum]:
        return {"train": self.train, "val": self.val, "test": self.test}[which]

    def prompt(self, classname: str) -> str:
        return self.template.format(classname.replace("_", " "))


def read_split_file(path: Path) -> dict[str, list]:
    """Read a CoOp split JSON; a broken file is a user error that names the file."""
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read split file {path}: {e}; {DATASETS_DOC}") from None
    missing = [s for s in SPLITS if not isinstance(split, dict) or not isinstance(split.get(s), list)]
    if missing:
        raise UserError(f"split file {path} lacks the lists {missing}; {DATASETS_DOC}")
    return split


def write_split_file(path: Path, split: dict[str, list]) -> None:
    from common import atomic_write_json
    atomic_write_json(path, {s: split[s] for s in SPLITS})


def splits_from_file(cfg: DatasetConfig, root: Path, split: dict[str, list]) -> DatasetSplits:
    """Turn split lists into a DatasetSplits, checking labels, class order and image files."""
    image_root = root / cfg.image_dir
    names: dict[int, str] = {}
    items: dict[str, list[Datum]] = {}
    missing: list[str] = []
    for s in SPLITS:
        items[s] = []
        for entry in split[s]:
            try:
                relpath, label, classname = str(entry[0]), int(entry[1]), str(entry[2])
            except (IndexError, KeyError, TypeError, ValueError):
                raise UserError(f"{cfg.name}: entry {entry!r:.80} in {root / cfg.split_file} is not "
                                f"[relative_path, label, classname]; {DATASETS_DOC}") from None
            if names.setdefault(label, classname) != classname:
                raise UserError(f"{cfg.name}: label {label} is both '{names[label]}' and '{classname}' "
                                f"in {root / cfg.split_file}; {DATASETS_DOC}")
            path = image_root / relpath
            if not path.is_file():
                missing.append(str(path))
            items[s].append(Datum(str(path), label, classname))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{cfg.name}: image listed in {root / cfg.split_file} is missing: "
                        f"{missing[0]}{more}; {DATASETS_DOC}")
    if sorted(names) != list(range(len(names))):
        raise UserError(f"{cfg.name}: labels in {root / cfg.split_file} are not 0..K-1; {DATASETS_DOC}")
    classnames = [names[i] for i in range(len(names))]
    tested = {d.label for d in items["test"]}
    empty = [c for i, c in enumerate(classnames) if i not in tested]
    if empty:
        raise UserError(f"{cfg.name}: class '{empty[0]}' has no test image in {root / cfg.split_file}"
                        f" ({len(empty)} such classes); {DATASETS_DOC}")
    return DatasetSplits(cfg.name, classnames, cfg.template, items["train"], items["val"],
                         items["test"], root, ensemble_templates(cfg),
                         {c: list(a) for c, a in cfg.aliases.items() if c in classnames})


def ensemble_templates(cfg: DatasetConfig) -> list:
    """The dataset's template ensemble (its own template first when it is a list of strings)."""
    if cfg.ensemble_templates == "openai_imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
        return list(OPENAI_IMAGENET_TEMPLATES)
    templates = list(cfg.ensemble_templates or [])
    return templates if cfg.template in templates else [cfg.template, *templates]


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; an unreadable file is a user error naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}; {DATASETS_DOC}") from None


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, label) pairs for a list of Datum, through a model's preprocessing."""

    def __init__(self, items: list[Datum], transform: Callable):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        d = self.items[i]
        return self.transform(load_rgb(d.impath)), d.label


GENERATOR_STAMP = "generator_stamp.txt"  # beside the split file of a generated dataset


def generator_stamp(cfg: DatasetConfig, source_file: str) -> str:
    """What a generated dataset's images depend on: its generator's code and settings."""
    h = hashlib.sha1(Path(source_file).read_bytes())
    h.update(json.dumps([cfg.image_dir, cfg.split_file, cfg.extra], sort_keys=True).encode())
    return h.hexdigest()[:12]


def materialise_generated(root: Path, cfg: DatasetConfig, source_file: str,
                          make: Callable[[], tuple[list[str], dict[str, list[tuple[Image.Image, int]]]]]) -> None:
    """Write a generated (demo) dataset unless the one on disk came from the same generator.

    `make()` returns (classnames, {split: [(image, label), ...]}). A dataset made by other code or
    settings (a stale stamp, or none) is deleted and made again, so a changed demo world never
    reads old images.
    """
    stamp = generator_stamp(cfg, source_file)
    stamp_file = root / GENERATOR_STAMP
    if (root / cfg.split_file).is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    for old in (stamp_file, root / cfg.split_file):
        old.unlink(missing_ok=True)
    shutil.rmtree(root / cfg.image_dir, ignore_errors=True)  # images of renamed classes must not linger
    classnames, splits = make()
    write_generated_dataset(root, cfg, classnames, splits)
    from common import atomic_write_text
    atomic_write_text(stamp_file, stamp)  # last: a dataset with a current stamp is complete


def write_generated_dataset(root: Path, cfg: DatasetConfig, classnames: list[str],
                            splits: dict[str, list[tuple[Image.Image, int]]]) -> None:
    """Write a generated (demo) dataset in the CoOp layout: PNGs per class + the split JSON.

    The split file is written last, so a dataset whose split file exists is complete.
    """
    lists: dict[str, list] = {s: [] for s in SPLITS}
    for s in SPLITS:
        for i, (img, label) in enumerate(splits[s]):
            rel = f"{classnames[label]}/{s}_{i:05d}.png"
            path = root / cfg.image_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
            lists[s].append([rel, label, classnames[label]])
    write_split_file(root / cfg.split_file, lists)
