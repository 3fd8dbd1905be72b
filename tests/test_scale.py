"""The paper's benchmark at its real scale, structurally: its four datasets with their real class
counts and names (fakes in the CoOp layout, one 8x8 image per class and split) and the 80-template
ensemble, with a random-weight open_clip model. Bugs here hide at demo scale (10 + 16 classes):
a classifier of StanfordCars' 196 classes x 80 templates encoded in one text batch needs ~40 GB.

The bound asserted: no text-tower forward pass gets more than zeroshot.PROMPTS_PER_BATCH prompts,
whatever the number of classes, on every path that encodes the class prompts in many templates (the
audit, textspace's keep set with --adapt blocks, projedit) and in train.py's evaluation; and the
shipped paper.yaml passes the sweep's pre-check on data with the paper's classes.
"""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest

import audit
import sweep
import train
from common import REPO
from dataset_fakes import write_split_dataset
from zeroshot import PROMPTS_PER_BATCH

PAPER = json.loads((REPO / "reference" / "zeroshot_openai_RN50.json").read_text())  # the paper's class lists
CARS = "StanfordCars"
FORGET = "2009 Spyker C8 Coupe"


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory) -> Path:
    """A data root with the paper's four datasets, every class of each (196 cars, 120 dogs, ...)."""
    root = tmp_path_factory.mktemp("paper_data")
    for name, classes in PAPER.items():
        write_split_dataset(root, name, list(classes))
    return root


@pytest.fixture
def text_rows(monkeypatch) -> list[int]:
    """The number of prompts of every text-tower forward pass, of any open_clip CLIP, while a test runs."""
    rows: list[int] = []
    encode = open_clip.model.CLIP.encode_text

    def counted(self, text, normalize: bool = False):
        rows.append(len(text))
        return encode(self, text, normalize=normalize)
    monkeypatch.setattr(open_clip.model.CLIP, "encode_text", counted)
    return rows


def unlearn_cars(out: Path, paper_root: Path, *options: str) -> dict:
    return train.main(["--backbone_arch", "demo", "--pretrained", "none", "--run_ds", CARS, "--eval_ds", CARS,
                       "--forget_labels", FORGET, "--data_root", str(paper_root), "--device", "cpu",
                       "--output_dir", str(out), "--save_best_model", "1", *options])


def test_fakes_have_the_papers_class_counts(paper_root):
    from datasets import build_dataset
    counts = {name: len(build_dataset(name, paper_root).classnames) for name in PAPER}
    assert counts == {"StanfordDogs": 120, "StanfordCars": 196, "Caltech101": 100, "OxfordFlowers": 102}
    assert len(build_dataset(CARS, paper_root).templates) == 80


def test_text_passes_stay_bounded_in_unlearning_and_audit(paper_root, tmp_path, text_rows):
    """improved (textspace, keep set = 195 classes x 80 templates), then the audit's template ensemble
    of 196 x 80 prompts for the original and the unlearned model: every pass at most PROMPTS_PER_BATCH."""
    out = tmp_path / "improved" / "seed_0"
    logs = unlearn_cars(out, paper_root, "--method", "improved", "--max_steps", "2")
    assert logs[CARS][FORGET]["final_results"] and (out / "models" / CARS / f"{FORGET}.pt").is_file()
    n_train = len(text_rows)
    audit.main([str(out), "--relearn_steps", "1", "--device", "cpu"])
    entry = json.loads((out / "audit.json").read_text())[CARS][FORGET]
    assert entry["changed_towers"] == ["text"] and 0 <= entry["unlearned"]["ensemble"] <= 1
    # the audit encoded at least the two ensembles (the original's and the unlearned model's) ...
    assert sum(text_rows[n_train:]) >= 2 * 196 * 80
    # ... and nothing anywhere in more than one bounded pass
    assert max(text_rows) <= PROMPTS_PER_BATCH, max(text_rows)


def test_textspace_blocks_encodes_its_keep_set_in_bounded_chunks(paper_root, tmp_path, text_rows):
    """--adapt blocks runs the keep set (195 classes x 80 templates + unrelated prompts) through the text
    tower with gradients at every step: in chunks, not in one pass."""
    logs = unlearn_cars(tmp_path / "blocks" / "seed_0", paper_root, "--method", "textspace", "--adapt", "blocks",
                        "--max_steps", "1", "--margin", "1000")  # a margin no step meets: the step runs
    assert logs[CARS][FORGET]["summary"]["steps"] == 1
    assert sum(text_rows) >= 195 * 80 and max(text_rows) <= PROMPTS_PER_BATCH, max(text_rows)


def test_projedit_on_all_classes_and_templates_is_bounded(paper_root, tmp_path, text_rows):
    logs = unlearn_cars(tmp_path / "projedit" / "seed_0", paper_root, "--method", "projedit")
    summary = logs[CARS][FORGET]["summary"]
    assert summary["text_keep_rows"] == 195 and summary["text_soft_rows"] >= 195 * 79
    assert max(text_rows) <= PROMPTS_PER_BATCH, max(text_rows)


def test_the_shipped_paper_sweep_passes_its_precheck_on_the_papers_classes(paper_root, monkeypatch):
    monkeypatch.setenv("CLIP_FORGET_DATA", str(paper_root))
    s = sweep.load_sweep(REPO / "configs" / "sweeps" / "paper.yaml")  # check_data: the 12 classes looked up
    assert len(s.classes) == 12 and s.tags == ["RN50", "ViT-B-16"]
    jobs = sweep.expand(s, "/tmp/not-written")
    assert sum(j.kind == "train" for j in jobs) == 2 * 12 * 3 * 2  # backbones x classes x seeds x methods
