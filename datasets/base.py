"""The dataset interface shared by every dataset (the paper's, CoOp's, the demo world).

Every dataset lives on disk in the CoOp/Dassl layout: a folder with the images and a split
JSON holding `train`/`val`/`test` lists of `[relative_path, label, classname]`. The class order
is the label order. `configs/datasets/<Name>.yaml` is the one source of truth for the folder,
image directory, split file and prompt template of each dataset.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

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
    module: str | None  # the datasets/<module>.py that knows how to build a missing split (None: it cannot be built)
    other_names: list[str] = field(default_factory=list)  # other spellings it is asked for by, e.g. the paper's
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
    """Read a CoOp split JSON (gzipped when it ends in .gz); a broken file is a user error that names it."""
    try:
        with (gzip.open(path, "rt") if Path(path).suffix == ".gz" else open(path)) as f:
            split = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read split file {path}: {e}; {DATASETS_DOC}") from None
    missing = [s for s in SPLITS if not isinstance(split, dict) or not isinstance(split.get(s), list)]
    if missing:
        raise UserError(f"split file {path} lacks the lists {missing}; {DATASETS_DOC}")
    return split


def write_split_file(path: Path, split: dict[str, list]) -> None:
    """Write a split file atomically; a .gz name gets compact gzipped JSON (ImageNet's would be ~100 MB)."""
    from common import _atomic, atomic_write_json  # common has no public atomic bytes writer
    split = {s: split[s] for s in SPLITS}
    if Path(path).suffix == ".gz":
        data = gzip.compress(json.dumps(split, separators=(",", ":")).encode(), compresslevel=6, mtime=0)
        _atomic(Path(path), lambda p: p.write_bytes(data))
    else:
        atomic_write_json(path, split)


def missing_files(paths: Iterable[str]) -> list[str]:
    """The paths that are not files, in order.

    One directory listing per folder instead of one stat per image: ImageNet's 1.3M images are
    checked at every start, and on network storage a stat each would take minutes.
    """
    listed: dict[str, set[str]] = {}
    missing = []
    for path in paths:
        folder, _, name = path.rpartition(os.sep)
        if folder not in listed:
            try:
                with os.scandir(folder or ".") as entries:
                    listed[folder] = {e.name for e in entries if e.is_file()}
            except OSError:  # no such folder (or unreadable): its images are missing
                listed[folder] = set()
        if name not in listed[folder] and not os.path.isfile(path):  # isfile: case-insensitive file systems
            missing.append(path)
    return missing


def label_names(pairs: Iterable[tuple[int, str]], cfg: DatasetConfig, source: Path | str) -> list[str]:
    """Class names in label order from (label, classname) pairs: one name per label, labels 0..K-1."""
    names: dict[int, str] = {}
    for label, classname in pairs:
        if names.setdefault(label, classname) != classname:
            raise UserError(f"{cfg.name}: label {label} is both '{names[label]}' and '{classname}' "
                            f"in {source}; {DATASETS_DOC}")
    if sorted(names) != list(range(len(names))):
        raise UserError(f"{cfg.name}: labels in {source} are not 0..K-1; {DATASETS_DOC}")
    return [names[i] for i in range(len(names))]


def splits_from_file(cfg: DatasetConfig, root: Path, split: dict[str, list]) -> DatasetSplits:
    """Turn split lists into a DatasetSplits, checking labels, class order and image files."""
    image_root = str(root / cfg.image_dir)  # joined as strings: pathlib costs seconds on ImageNet
    source = root / cfg.split_file
    items: dict[str, list[Datum]] = {}
    for s in SPLITS:
        try:
            items[s] = [Datum(os.path.join(image_root, str(e[0])), int(e[1]), str(e[2])) for e in split[s]]
        except (IndexError, KeyError, TypeError, ValueError):
            bad = next(e for e in split[s] if not _is_entry(e))
            raise UserError(f"{cfg.name}: entry {bad!r:.80} in {source} is not "
                            f"[relative_path, label, classname]; {DATASETS_DOC}") from None
    every = [d for s in SPLITS for d in items[s]]
    classnames = label_names(((d.label, d.classname) for d in every), cfg, source)
    missing = missing_files(d.impath for d in every)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{cfg.name}: image listed in {source} is missing: {missing[0]}{more}; {DATASETS_DOC}")
    tested = {d.label for d in items["test"]}
    empty = [c for i, c in enumerate(classnames) if i not in tested]
    if empty:
        raise UserError(f"{cfg.name}: class '{empty[0]}' has no test image in {source}"
                        f" ({len(empty)} such classes); {DATASETS_DOC}")
    return DatasetSplits(cfg.name, classnames, cfg.template, items["train"], items["val"],
                         items["test"], root, ensemble_templates(cfg),
                         {c: list(a) for c, a in cfg.aliases.items() if c in classnames})


def _is_entry(e) -> bool:
    try:
        str(e[0]), int(e[1]), str(e[2])
        return True
    except (IndexError, KeyError, TypeError, ValueError):
        return False


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
