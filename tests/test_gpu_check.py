"""bench/gpu_check.sh on a GPU node's own Python (issue §5): where open_clip and submitit are missing and
there is no network, it installs them from a folder of wheels (pip --no-index --target) and puts them on
PYTHONPATH for every step; DEVICE=cpu skips the CUDA-only checks.

The node is simulated by a fresh virtual environment that sees this environment's packages (torch, pip, ...)
except open_clip_torch, ftfy, wcwidth and submitit, whose installed files are packed back into wheels."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

from common import REPO

MISSING = ("open_clip_torch", "ftfy", "wcwidth", "submitit")  # what the known GPU node lacks


def pack_wheel(name: str, folder: Path) -> Path:
    """The installed distribution `name` as a py3-none-any wheel (its files and dist-info, as installed)."""
    dist = importlib.metadata.distribution(name)
    wheel = folder / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for f in dist.files:
            # console scripts live outside site-packages; bytecode is made again on install
            if not str(f).startswith("..") and f.suffix != ".pyc":
                z.write(dist.locate_file(f), str(f))
    return wheel


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> tuple[Path, Path]:
    """(python of a simulated GPU node, folder of the wheels it lacks)."""
    tmp = tmp_path_factory.mktemp("node")
    hidden = {str(f).split("/")[0] for name in MISSING for f in importlib.metadata.distribution(name).files}
    site = tmp / "site"  # this environment's site-packages less the missing packages
    site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name not in hidden:
            (site / entry.name).symlink_to(entry)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "node.pth").write_text(f"import site; site.addsitedir({str(site)!r})\n")
    wheels = tmp / "wheels"
    wheels.mkdir()
    for name in MISSING:
        pack_wheel(name, wheels)
    return python, wheels


def gpu_check(python: Path, wheels: Path, out: Path) -> subprocess.CompletedProcess:
    """gpu_check.sh's environment check alone (no part), on the CPU."""
    env = {**os.environ, "PYTHON": str(python), "WHEELS": str(wheels), "OUT": str(out), "DEVICE": "cpu",
           "PARTS": ""}
    env.pop("PYTHONPATH", None)
    return subprocess.run(["sh", str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True)


def test_the_simulated_node_lacks_them(node):
    python, _ = node
    for module in ("open_clip", "ftfy", "submitit"):
        assert subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode != 0


def test_gpu_check_installs_the_wheels_offline_and_uses_them(node, tmp_path):
    python, wheels = node
    proc = gpu_check(python, wheels, tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    versions = {name: importlib.metadata.version(name) for name in ("open_clip_torch", "submitit")}
    # the node's own torch, the wheels' open_clip and submitit
    assert f"torch {torch.__version__} " in proc.stdout
    assert f"open_clip {versions['open_clip_torch']} submitit {versions['submitit']}" in proc.stdout
    assert "done: 0 step(s) failed" in proc.stdout
    for package in ("open_clip", "ftfy", "wcwidth", "submitit"):
        assert (tmp_path / "out" / "pylib" / package / "__init__.py").is_file()
    assert "== device" not in proc.stdout  # DEVICE=cpu: no nvidia-smi, no CUDA assertion


def test_gpu_check_without_wheels_says_how_to_get_them(node, tmp_path):
    python, _ = node
    proc = gpu_check(python, tmp_path / "no_wheels", tmp_path / "out")
    assert proc.returncode != 0
    assert "run sh bench/download_wheels.sh on a machine with network" in proc.stdout
    assert "done: 1 step(s) failed" in proc.stdout
