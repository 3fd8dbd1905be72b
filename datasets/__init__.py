"""Dataset registry: `build_dataset(name, data_root)` for every dataset in configs/datasets/."""
from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import Path

import yaml

from common import DATASETS_DOC, REPO, UserError, close_names
from datasets.base import Datum, DatasetConfig, DatasetSplits, ImageDataset, read_split_file, splits_from_file

__all__ = ["Datum", "DatasetSplits", "ImageDataset", "build_dataset", "dataset_config", "known_datasets"]


# Datasets of the paper's repository (its Dassl registry names) that this project does not read, and why
NOT_READ = {name: "the authors' split file, which says which images and class names it has, is not public"
            for name in ("BirdsImnet", "DogsImnet", "VehiclesImnet", "WebSamples")}
NOT_READ["PLANTDOC"] = "its public split file names images that the public PlantDoc release does not have"


@lru_cache(maxsize=None)
def _configs() -> dict[str, DatasetConfig]:
    cfgs = {}
    for f in sorted((REPO / "configs" / "datasets").glob("*.yaml")):
        raw = yaml.safe_load(f.read_text())
        known = {k: raw.pop(k) for k in ("name", "folder", "image_dir", "split_file", "template")}
        known["other_names"] = list(raw.pop("other_names", None) or [])
        known["module"] = raw.pop("module", None)  # none: the dataset is read from its split file only
        aliases = raw.pop("aliases", None) or {}
        if "aliases_file" in raw:  # shared by several datasets: {dataset: {classname: [alias, ...]}}
            shared = yaml.safe_load((REPO / "configs" / raw.pop("aliases_file")).read_text()) or {}
            aliases = {**shared.get(known["name"], {}), **aliases}
        ensemble = raw.pop("ensemble_templates", None)
        cfgs[known["name"]] = DatasetConfig(**known, extra=raw, ensemble_templates=ensemble,
                                            aliases={c: [a] if isinstance(a, str) else list(a) for c, a in aliases.items()})
    return cfgs


def known_datasets() -> list[str]:
    return list(_configs())


def dataset_config(name: str) -> DatasetConfig:
    """The config of a dataset by name or other name (e.g. the paper's DescribableTextures for DTD),
    case-insensitive; unknown names list the known ones."""
    cfgs = _configs()
    by_lower = {n.lower(): k for k, cfg in cfgs.items() for n in (k, *cfg.other_names)}
    if name.lower() in by_lower:
        return cfgs[by_lower[name.lower()]]
    paper = {k.lower(): k for k in NOT_READ}
    if name.lower() in paper:
        raise UserError(f"{paper[name.lower()]} is a dataset of the paper's repository that this project does not "
                        f"read: {NOT_READ[paper[name.lower()]]}; {DATASETS_DOC} (not supported)")
    names = [n for cfg in cfgs.values() for n in (cfg.name, *cfg.other_names)]
    raise UserError(f"unknown dataset '{name}'{close_names(name, names)} (known: {', '.join(cfgs)})")


def build_dataset(name: str, data_root: str | Path) -> DatasetSplits:
    """Read a dataset from `data_root/<folder>` in the CoOp layout.

    A missing split file is built from the raw annotations where the dataset's module knows how
    (as CoOp does); the demo datasets are generated on first use.
    """
    cfg = dataset_config(name)
    module = importlib.import_module(f"datasets.{cfg.module}") if cfg.module else None
    data_root = Path(data_root)
    root = data_root / cfg.folder
    if data_root.exists() and not data_root.is_dir():
        raise UserError(f"data root {data_root} is a file, not a folder; {DATASETS_DOC}")
    if hasattr(module, "materialise"):  # demo datasets: made by the code, deterministically
        module.materialise(root, cfg)
    if not data_root.is_dir():
        raise UserError(f"data root {data_root} does not exist; {DATASETS_DOC}")
    if not root.is_dir():
        raise UserError(f"{cfg.name}: folder {root} not found; {DATASETS_DOC}")
    split_path = root / cfg.split_file
    if not split_path.is_file():
        build = getattr(module, "build_split", None)
        if build is None:
            raise UserError(f"{cfg.name}: split file {split_path} not found; {DATASETS_DOC}")
        split = build(root, cfg)  # raises a UserError naming what is missing
    else:
        split = read_split_file(split_path)
    return splits_from_file(cfg, root, split)


def build_datasets(names: str | list[str], data_root: str | Path) -> tuple[dict[str, DatasetSplits], list[str]]:
    """Build several datasets (comma-separated names), collecting every problem instead of stopping."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out, problems = {}, []
    if not names:
        problems.append("no dataset given (--run_ds)")
    for n in names:
        try:
            ds = build_dataset(n, data_root)
            out[ds.name] = ds
        except UserError as e:
            problems.append(str(e))
    return out, problems
