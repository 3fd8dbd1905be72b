"""FGVCAircraft (CoOp layout): `fgvc_aircraft/images/<id>.jpg` and the official split lists.

CoOp reads the official lists at every start and has no split file; here they are turned into
split_FGVCAircraft.json once (nothing random: train, val and test are the official ones):
classes are the lines of variants.txt in order, and images_variant_{train,val,test}.txt hold
`<image id> <variant>` per line (variant names have spaces and slashes: `F-16A/B`, `Boeing 717`).
"""
from __future__ import annotations

from pathlib import Path

from datasets.base import SPLITS, DatasetConfig
from datasets.splitting import Entry, parse_lines, read_lines, require_every_class, save_built_split


def build_split(root: Path, cfg: DatasetConfig) -> dict:
    classnames = read_lines(root / "variants.txt", root, cfg)
    label = {name: i for i, name in enumerate(classnames)}

    def entry(line: str) -> Entry:
        image, name = line.split(" ", 1)
        return [f"{image}.jpg", label[name.strip()], name.strip()]

    lists = {s: root / f"images_variant_{s}.txt" for s in SPLITS}
    split = {s: parse_lines(path, root, cfg, entry, "<image id> <variant>") for s, path in lists.items()}
    require_every_class(classnames, split["test"], cfg, lists["test"])
    return save_built_split(root, cfg, split, f"{root}/images_variant_{{train,val,test}}.txt")
