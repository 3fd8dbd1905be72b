"""Small pieces every script shares: user errors, close-name suggestions, atomic writes, seeding."""
from __future__ import annotations

import difflib
import json
import os
import random
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parent
DATASETS_DOC = "see DATASETS.md"


class UserError(Exception):
    """A mistake in the user's input: reported as one line, without a traceback."""


def close_names(name: str, choices: Iterable[str], n: int = 3) -> str:
    """'; did you mean: a, b?' for the names of `choices` closest to `name` (case-insensitive)."""
    choices = list(choices)
    lower = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)
    if not hits:  # substring matches help with long names such as car models
        hits = [c for c in lower if name.lower() in c or c in name.lower()][:n]
    return f"; did you mean: {', '.join(lower[h] for h in hits)}?" if hits else ""


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """Run a script's main(); user errors become one line on stderr and exit code 2.

    A traceback is shown only for bugs, or for user errors when --debug-errors is given.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--debug-errors" in argv
    if show_traceback:
        argv.remove("--debug-errors")
    try:
        main(argv)
    except UserError as e:
        if show_traceback:
            raise
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except torch.OutOfMemoryError:
        if show_traceback:
            raise
        print("error: out of GPU memory; rerun with a smaller --batch_size", file=sys.stderr)
        sys.exit(3)


def check_all(problems: list[str]) -> None:
    """Raise one UserError listing every problem found (validation reports everything in one go)."""
    if problems:
        raise UserError("\n".join(problems))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    _atomic(Path(path), lambda p: p.write_text(json.dumps(obj, indent=1)))


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda p: p.write_text(text))


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    _atomic(Path(path), lambda p: torch.save(obj, p))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_dir() -> Path:
    """Where trained demo weights and zero-shot baselines are cached (never committed)."""
    return Path(os.environ.get("CLIP_FORGET_CACHE", REPO / ".cache"))


def default_data_root() -> str:
    return os.environ.get("CLIP_FORGET_DATA", str(REPO / "data"))


def add_common_args(p, run_ds: str = "Digits,Shapes", arch: str = "demo") -> None:
    """The options every script shares, with the same names and defaults everywhere."""
    p.add_argument("--run_ds", default=run_ds, help="comma-separated datasets (default: %(default)s)")
    p.add_argument("--forget_labels", default=None,
                   help="comma-separated class names to forget (default: forget_cls.py's classes)")
    p.add_argument("--backbone_arch", default=arch,
                   help="RN50, ViT-B/16, demo or any open_clip model (default: %(default)s)")
    p.add_argument("--pretrained", default=None,
                   help="weights: openai (default for open_clip models), another open_clip tag, "
                        "none (random), a checkpoint file; the demo uses its cached weights")
    p.add_argument("--data_root", default=default_data_root(),
                   help="folder holding the datasets (env CLIP_FORGET_DATA; default: %(default)s)")
    p.add_argument("--device", default=default_device(), help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="fixes every random choice (default: %(default)s)")


def check_writable(folder: str | Path) -> list[str]:
    """A problem line if `folder` (or the nearest existing parent) cannot be written."""
    p = Path(folder).resolve()
    while not p.exists():
        p = p.parent
    return [] if os.access(p, os.W_OK) else [f"output folder {folder} is not writable"]


def class_seed(seed: int, dataset: str, classname: str) -> int:
    """A seed per (run seed, class): a class's results do not depend on which others run."""
    return seed * 1_000_003 + zlib.crc32(f"{dataset}/{classname}".encode())
