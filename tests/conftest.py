"""Shared fixtures: the demo model and datasets are built once per test session (and cached)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random init of the demo config

from common import default_data_root  # noqa: E402


@pytest.fixture(scope="session")
def data_root() -> str:
    return default_data_root()


@pytest.fixture(scope="session")
def demo(data_root):
    """The trained demo CLIP (trained on first use, then read from the cache)."""
    from models import load_model
    return load_model("demo", device="cpu", data_root=data_root)


@pytest.fixture(scope="session")
def digits(data_root):
    from datasets import build_dataset
    return build_dataset("Digits", data_root)


@pytest.fixture(scope="session")
def shapes(data_root):
    from datasets import build_dataset
    return build_dataset("Shapes", data_root)


N_GENERATED = 16  # synthetic images per class in tests (64 in real runs)


@pytest.fixture(scope="session")
def generated(tmp_path_factory, demo, data_root):
    """datagen.py run once on the demo forget classes: (folder, metadata per class)."""
    import datagen
    out = tmp_path_factory.mktemp("generated")
    metas = datagen.main(["--out_dir", str(out), "--n_generated", str(N_GENERATED), "--data_root", data_root,
                          "--device", "cpu"])
    return out, metas


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, generated, data_root):
    """train.py run once on the demo forget classes, saving each class's changed tensors (models/, for
    audit.py): (results folder, logs)."""
    import train
    out = tmp_path_factory.mktemp("results") / "seed_0"
    logs = train.main(["--output_dir", str(out), "--generated_dir", str(generated[0]), "--n_samples", "5",
                       "--save_best_model", "1", "--data_root", data_root, "--device", "cpu"])
    return out, logs
