"""Shared fixtures: the demo model and datasets are built once per test session (and cached)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random init of the demo config

from common import default_data_root  # noqa: E402


# the oracle the tests audit against (test_oracle.py, test_audit.py): the demo CLIP retrained without it
ORACLE_LEFT_OUT = [("Shapes", "red star")]


# The test files that take longest, run first: with two workers (make test: pytest -n 2 --dist loadfile
# --no-loadscope-reorder) a file stays on one worker, so the longest one started last would leave the other
# worker idle at the end (test_sweep.py alone takes about 5 minutes; test_demo_vit.py trains demo-vit)
LONGEST_FIRST = ("test_sweep.py", "test_demo_vit.py", "test_protocols.py", "test_audit.py", "test_reliability.py",
                 "test_scale.py", "test_results.py", "test_datagen.py", "test_oracle.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


@pytest.fixture(scope="session")
def data_root() -> str:
    return default_data_root()


@pytest.fixture(scope="session", autouse=True)
def oracle_first_on_the_second_worker(data_root):
    """With two test workers (make test: pytest -n 2), the second trains the oracle while the first trains the
    demo CLIP, one thread each (configs/demo_world.yaml), instead of one after the other; both are cached."""
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw1":
        from models import load_demo_oracle
        load_demo_oracle(ORACLE_LEFT_OUT, data_root=data_root)


@pytest.fixture(scope="session")
def demo(data_root):
    """The trained demo CLIP (trained on first use, then read from the cache)."""
    from models import load_model
    return load_model("demo", device="cpu", data_root=data_root)


@pytest.fixture(scope="session")
def demo_vit(data_root):
    """The trained demo CLIP with a ViT image tower (trained on first use, then read from the cache)."""
    from models import load_model
    return load_model("demo-vit", device="cpu", data_root=data_root)


@pytest.fixture(scope="session")
def digits(data_root):
    from datasets import build_dataset
    return build_dataset("Digits", data_root)


@pytest.fixture(scope="session")
def shapes(data_root):
    from datasets import build_dataset
    return build_dataset("Shapes", data_root)


def zero_shot_bar(lm, ds) -> tuple[float, float]:
    """A demo CLIP's zero-shot test accuracy on a dataset (its bar: >= 0.90), and with every class named by its
    first alias, which shares no token with its name (bar: >= 0.80)."""
    from zeroshot import baselines, build_classifier, loader, predict
    full = next(iter(baselines(lm, ds, "cpu").values()))["full_acc"]
    w = build_classifier(lm.model, lm.tokenizer, [ds.aliases[c][0] for c in ds.classnames], ds.template, "cpu")
    preds, labels = predict(lm.model, loader(ds.test, lm.preprocess, "cpu"), w, "cpu")
    return full, (preds == labels).float().mean().item()


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


@pytest.fixture(scope="session")
def shape_sets(tmp_path_factory, data_root, shapes):
    """A forget set (6 images) and a held-out set (another noise seed) of the demo's Shapes forget class,
    made by datagen.py, and retain sets for the other Shapes classes (random images in the file format:
    the plumbing is tested with them, not the quality of the images)."""
    import datagen
    from forget_cls import FORGET_CLASSES
    from synthetic import read_synthetic, save_synthetic, synthetic_path
    shape, root = FORGET_CLASSES["Shapes"][0], tmp_path_factory.mktemp("shape_sets") / "gen"
    for out, extra in ((root, []), (root / "heldout", ["--noise_seed", "1000"])):
        datagen.main(["--backbone_arch", "demo", "--run_ds", "Shapes", "--forget_labels", shape, "--n_generated", "6",
                      "--out_dir", str(out), "--data_root", data_root, "--device", "cpu", *extra])
    meta = read_synthetic(synthetic_path(root, "Shapes", shape))["meta"]
    g = torch.Generator().manual_seed(0)
    for i, c in enumerate(shapes.classnames):
        save_synthetic(synthetic_path(root / "retain", "Shapes", c), torch.randn(2, 3, 32, 32, generator=g),
                       torch.ones(2), torch.ones(2, dtype=torch.long), torch.ones(2),
                       {**meta, "classname": c, "class_index": i})
    return root
