"""Small pieces every script shares: user errors, close-name suggestions, atomic writes, seeding."""
from __future__ import annotations

import argparse
import difflib
import fcntl
import hashlib
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

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
    """Run a script's main(); user errors become one line each on stderr and exit code 2.

    A traceback is shown only for bugs, or for user errors when --debug-errors is given.
    Out of GPU memory exits with 3 and advice, Ctrl-C with 130 (finished work is already saved).
    """
    if threading.current_thread() is threading.main_thread():  # from here on Ctrl-C is a KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--debug-errors" in argv
    if show_traceback:
        argv.remove("--debug-errors")
    try:
        main(argv)
        return
    except UserError as e:
        if show_traceback:
            raise
        lines, code = [f"error: {line}" for line in user_message(e).splitlines()], 2
    except torch.OutOfMemoryError as e:
        if show_traceback:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        lines, code = [f"error: out of GPU memory ({first}); rerun with a smaller --batch_size "
                       "(finished work is kept)"], 3
    except KeyboardInterrupt:
        lines, code = ["error: interrupted; finished work is saved: rerun the same command to continue"], 130
    # exit outside the except block: the error's traceback (and any DataLoader workers it keeps
    # alive) is freed now, not at interpreter exit, where shutting the workers down stalls
    print("\n".join(lines), file=sys.stderr)
    sys.exit(code)


def user_message(e: UserError) -> str:
    """The message of a UserError, also when a DataLoader worker re-raised it wrapped in its traceback
    ("Caught UserError in DataLoader worker process 0. Original Traceback ... common.UserError: msg")."""
    msg = str(e)
    if "Original Traceback" in msg:
        m = re.search(r"^(?:[\w.]+\.)?UserError: ", msg, flags=re.M)
        if m:
            return msg[m.end():].strip()
    return msg


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default once: appended unless the help text already speaks of its
    default, or the default is None (a help text then says what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error style: a bad command line is a UserError (one line, exit 2,
    through run_cli), so a caller such as sweep.py can validate a job's options without a subprocess."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(message)


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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files: give results the usual permissions
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:  # on disk before the rename: a crash leaves the old file or the new one
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    _atomic(Path(path), lambda p: p.write_text(json.dumps(obj, indent=1)))


def read_json(path: str | Path) -> Any:
    """A JSON file; a broken one is a user error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); move it away to start afresh") from None


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """An exclusive lock on `path` (through a lock file beside it), across processes on one machine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def update_json(path: str | Path, update: Callable[[dict], None]) -> dict:
    """Read a JSON object (or {}), let `update` change it in place, write it back atomically; the whole
    read-modify-write holds a lock, so several processes can add to one file. Returns the new object."""
    with locked(path):
        data = read_json(path) if Path(path).is_file() else {}
        update(data)
        atomic_write_json(path, data)
    return data


def torch_load(path: str | Path) -> Any:
    """torch.load of a file on the CPU, safely (weights_only: tensors and plain data, no pickled code).
    A file it cannot read raises ValueError with a short reason a user can act on (PyTorch's own
    messages are paragraphs, some advising weights_only=False, which is wrong advice here)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(unreadable_reason(path, e)) from None


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why torch.load failed on `path`, in a few words."""
    text = str(error)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty"
    if "TorchScript" in text:
        return "it is a TorchScript archive (OpenAI's original download is one): open_clip reads those by tag"
    if "Unsupported global" in text:
        return "it holds pickled code or objects other than tensors, which are never loaded"
    if head.startswith((b"PK", b"\x80")):  # torch.save's zip archive, or its older pickle format: cut short
        return "the file is truncated or damaged"
    return "not a PyTorch file (torch.save writes a zip archive)"


def file_hash(path: str | Path) -> str:
    """A short content hash of a file (which file a result came from)."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


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
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="arithmetic of the optimisation (evaluation stays fp32): fp32 = the paper's; tf32 "
                        "(CUDA) or bf16 trade exactness for speed on GPUs (default: %(default)s)")


PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(mode: str, device: str) -> list[str]:
    if mode == "tf32" and not str(device).startswith("cuda"):
        return [f"--precision tf32 is for CUDA devices (TF32 is an NVIDIA tensor-core format); --device is {device}"]
    return []


@contextmanager
def precision(mode: str, device: str) -> Iterator[None]:
    """Arithmetic of the optimisation inside: fp32 (PyTorch's defaults, as the paper ran), tf32 (TF32
    matmuls and convolutions on CUDA tensor cores) or bf16 (autocast to bfloat16; weights, optimiser
    state and gradients of the inputs stay fp32). Evaluations run outside, in fp32."""
    if mode == "bf16":
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            yield
    elif mode == "tf32":
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    else:
        yield


def check_writable(folder: str | Path) -> list[str]:
    """A problem line if `folder` cannot be created or written to.

    Really tries (a nameless temporary file in the nearest existing folder): os.access says yes
    to root even on read-only file systems, and a parent that is a file is no folder at all.
    """
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        return [f"output folder {folder} cannot be created: {p} is a file, not a folder"]
    try:
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        return [f"output folder {folder} is not writable ({p}: {e.strerror})"]
    return []


def check_device(device: str) -> list[str]:
    """A problem line if `device` is not a device torch has here (checked before loading anything)."""
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        return [f"unknown --device '{device}' (use cpu, cuda or cuda:N)"]
    if d.type == "cuda":
        if not torch.cuda.is_available():
            return [f"--device {device}: no CUDA GPU is available here; use --device cpu"]
        if d.index is not None and d.index >= torch.cuda.device_count():
            return [f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"]
    elif d.type == "mps" and not torch.backends.mps.is_available():
        return [f"--device {device}: MPS is not available here; use --device cpu"]
    elif d.type not in ("cpu", "cuda", "mps"):
        return [f"--device {device}: unsupported device type (use cpu, cuda or cuda:N)"]
    return []


def class_seed(seed: int, dataset: str, classname: str) -> int:
    """A seed per (run seed, class): a class's results do not depend on which others run."""
    return seed * 1_000_003 + zlib.crc32(f"{dataset}/{classname}".encode())
