"""Building a missing split file from a dataset's raw annotations, as CoOp does.

The readers collect `[relative_path, label, classname]` entries from their raw annotations (class
folders, text lists, MATLAB files) with these helpers, split them (per class, with a fixed seed),
check that every image is there, and write the split file next to the data. Split fractions and
the seed come from the dataset's YAML (`p_train`, `p_val`, `split_seed`).
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Collection, TypeVar

import numpy as np
from tqdm import tqdm

from common import DATASETS_DOC, UserError
from datasets.base import SPLITS, DatasetConfig, label_names, missing_files, write_split_file

T = TypeVar("T")

Entry = list  # [relative_path (below image_dir), label, classname]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def need(path: Path, root: Path, cfg: DatasetConfig) -> Path:
    """`path` if it exists; otherwise the error for a split file that cannot be built."""
    if not path.exists():
        raise UserError(f"{cfg.name}: split file {root / cfg.split_file} not found, and {path} "
                        f"to build it from is missing too; {DATASETS_DOC}")
    return path


def first_existing(paths: list[Path], root: Path, cfg: DatasetConfig) -> Path:
    """The first of `paths` that exists (mirrors place some files differently)."""
    for p in paths:
        if p.exists():
            return p
    return need(paths[0], root, cfg)


def load_mat(path: Path) -> dict[str, Any]:
    """A MATLAB file as a dict of arrays (1x1 dimensions squeezed); a broken file names itself."""
    from scipy.io import loadmat

    try:
        return loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises several types for truncated or foreign files
        raise UserError(f"cannot read {path}: {e}; {DATASETS_DOC}") from None


def mat_field(mat: dict[str, Any], key: str, path: Path) -> np.ndarray:
    """`mat[key]` as a 1-D array; a file without it is a user error naming the file."""
    if key not in mat:
        raise UserError(f"{path} has no '{key}' entry (not the expected annotation file?); {DATASETS_DOC}")
    return np.atleast_1d(mat[key])


def read_lines(path: Path, root: Path, cfg: DatasetConfig) -> list[str]:
    """The non-blank lines of a text annotation file, stripped; the file must exist."""
    try:
        text = need(path, root, cfg).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}; {DATASETS_DOC}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_lines(path: Path, root: Path, cfg: DatasetConfig, parse: Callable[[str], T], form: str) -> list[T]:
    """`parse` applied to every line of a text annotation file.

    A line `parse` cannot read (ValueError, IndexError) is an error naming the file, the line and
    the expected `form`; a KeyError is a class name missing from the dataset's class list.
    """
    out = []
    for n, line in enumerate(read_lines(path, root, cfg), start=1):
        try:
            out.append(parse(line))
        except KeyError as e:
            raise UserError(f"{cfg.name}: {path} line {n} names the class {e}, which is not in the "
                            f"dataset's class list; {DATASETS_DOC}") from None
        except (ValueError, IndexError):
            raise UserError(f"{cfg.name}: {path} line {n} ({line!r:.80}) is not '{form}'; {DATASETS_DOC}") from None
    return out


def class_folders(folder: Path, cfg: DatasetConfig, ignored: Collection[str] = ()) -> list[str]:
    """The visible sub-folders of `folder` by name, minus `ignored`, as many as `num_classes` says."""
    with os.scandir(folder) as entries:
        folders = sorted(e.name for e in entries
                         if e.is_dir() and not e.name.startswith(".") and e.name not in ignored)
    expected = int(cfg.extra.get("num_classes", len(folders)))
    if len(folders) != expected:
        raise UserError(f"{cfg.name}: {folder} holds {len(folders)} class folders, expected {expected} "
                        f"(incomplete download?); {DATASETS_DOC}")
    return folders


def folder_entries(image_root: Path, sub: str, folders: list[str], classnames: list[str],
                   cfg: DatasetConfig) -> list[Entry]:
    """[sub/folder/image, label, classname] for every image of the class folders below image_root/sub.

    The label of a folder is its position in `folders`; an empty class folder is an error.
    """
    entries = []
    prefix = "" if sub in ("", ".") else f"{sub.strip('/')}/"
    for label, (folder, classname) in enumerate(tqdm(list(zip(folders, classnames)), leave=False,
                                                     desc=f"{cfg.name}: listing {image_root / sub}",
                                                     disable=len(folders) < 200)):
        path = image_root / sub / folder
        with os.scandir(path) as found:
            images = sorted(e.name for e in found if not e.name.startswith(".")
                            and e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())
        if not images:
            raise UserError(f"{cfg.name}: class folder {path} holds no images; {DATASETS_DOC}")
        entries += [[f"{prefix}{folder}/{name}", label, classname] for name in images]
    return entries


def require_every_class(classnames: list[str], entries: list[Entry], cfg: DatasetConfig, source: Path | str) -> None:
    """Every class has at least one of `entries` (the test images of an official list)."""
    empty = sorted(set(range(len(classnames))) - {int(e[1]) for e in entries})
    if empty:
        raise UserError(f"{cfg.name}: class '{classnames[empty[0]]}' has no image in {source}; {DATASETS_DOC}")


def _sizes(n: int, fractions: list[float]) -> list[int]:
    """Images per part for a class of `n`: the rounded fractions, the last part takes the rest."""
    counts = [round(n * f) for f in fractions]
    return counts + [n - sum(counts)]


def _cut(entries: list[Entry], fractions: list[float], cfg: DatasetConfig,
         source: Path | str) -> list[list[Entry]]:
    """Shuffle one class's entries (seeded) and cut them into len(fractions) + 1 parts."""
    sizes = _sizes(len(entries), fractions)
    if min(sizes) < 1:
        raise UserError(f"{cfg.name}: class '{entries[0][2]}' has {len(entries)} images in {source}, "
                        f"too few to split; {DATASETS_DOC}")
    seed = cfg.extra.get("split_seed", 1)  # a seeded hash order: the same on every machine and version
    shuffled = sorted(entries, key=lambda e: hashlib.sha256(f"{seed}/{e[0]}".encode()).hexdigest())
    parts, start = [], 0
    for size in sizes:
        parts.append(sorted(shuffled[start:start + size]))
        start += size
    return parts


def _by_label(entries: list[Entry]) -> dict[int, list[Entry]]:
    groups: dict[int, list[Entry]] = defaultdict(list)
    for e in entries:
        groups[int(e[1])].append(e)
    return dict(sorted(groups.items()))


def split_three_ways(entries: list[Entry], cfg: DatasetConfig, source: Path | str) -> dict[str, list[Entry]]:
    """Per class: `p_train` train, `p_val` val, the rest test (CoOp: 50/20/30)."""
    fractions = [float(cfg.extra.get("p_train", 0.5)), float(cfg.extra.get("p_val", 0.2))]
    split: dict[str, list[Entry]] = {s: [] for s in SPLITS}
    for group in _by_label(entries).values():
        for s, part in zip(SPLITS, _cut(group, fractions, cfg, source)):
            split[s] += part
    return split


def split_off_val(trainval: list[Entry], test: list[Entry], cfg: DatasetConfig,
                  source: Path | str) -> dict[str, list[Entry]]:
    """Per class: `p_val` of the official training images become val (CoOp: 20%)."""
    split: dict[str, list[Entry]] = {"train": [], "val": [], "test": sorted(test, key=lambda e: (e[1], e[0]))}
    for group in _by_label(trainval).values():
        val, train = _cut(group, [float(cfg.extra.get("p_val", 0.2))], cfg, source)
        split["train"] += train
        split["val"] += val
    return split


def save_built_split(root: Path, cfg: DatasetConfig, split: dict[str, list[Entry]], source: str) -> dict:
    """Check the built split (images there, one name per label), write it next to the data, say so in one line.

    Nothing is written when an image is missing, so a split file on disk is always complete. A
    read-only dataset folder (a shared ImageNet) keeps the split in memory: it is rebuilt at each start.
    """
    image_root = str(root / cfg.image_dir)
    missing = missing_files(os.path.join(image_root, e[0]) for s in SPLITS for e in split[s])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{cfg.name}: image {missing[0]} listed in {source} is missing{more}; {DATASETS_DOC}")
    label_names(((int(e[1]), str(e[2])) for s in SPLITS for e in split[s]), cfg, source)
    path = root / cfg.split_file
    sizes = "/".join(str(len(split[s])) for s in SPLITS)
    try:
        write_split_file(path, split)
    except OSError as e:
        print(f"{cfg.name}: cannot write the split file {path} ({e.strerror or e}); using the split built from "
              f"{source} ({sizes} train/val/test images) without saving it")
        return split
    print(f"{cfg.name}: built split file {path} from {source} ({sizes} train/val/test images)")
    return split
