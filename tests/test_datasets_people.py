"""The people datasets of the paper's repository, PinsFaces and CelebFaces, on fakes of their public releases.

The generic reader tests (tests/test_datasets_more.py) read both from a split file and build both
from person folders; these tests check what is particular to people: a class is a person's full
name (PinsFaces' `pins_` prefix dropped), names share sub-word tokens ("Chris Evans", "Chris Pratt"),
the class order is the release's sorted folder order (the paper's), and mistakes in placing the
release are one-line errors.
"""
from __future__ import annotations

import json
import os
import re

import pytest

from common import UserError
from datasets import build_dataset, dataset_config
from dataset_fakes import CELEBS, FAKES, SPLITS, user_error

CHRIS = ["Chris Evans", "Chris Hemsworth", "Chris Pratt"]


def test_pins_classes_are_the_names_without_the_prefix_in_the_release_order(tmp_path, capsys):
    root = tmp_path / "pinsfaces"
    FAKES["PinsFaces"].write_raw(root)
    ds = build_dataset("PinsFaces", tmp_path)
    assert "PinsFaces: built split file" in capsys.readouterr().out
    # sorted by folder name, as the paper's 105 classes: capitalised names first, lower-case ones last
    assert len(ds.classnames) == 105 and ds.classnames[:3] == CHRIS
    assert ds.classnames[3] == "Person 000" and ds.classnames[-1] == "alycia dabnem carey"
    assert ds.prompt("Chris Pratt") == "a photo of Chris Pratt."
    with open(root / "split_alexey_pinsfaces.json") as f:
        split = json.load(f)
    for s in SPLITS:  # the file names the folders as they are on disk and the classes without the prefix
        assert all(rel.startswith(f"pins_{name}/") and rel.split("/")[1].startswith(name)
                   and ds.classnames[label] == name for rel, label, name in split[s])
    assert [[os.path.join(root, "Images", r), lab, c] for r, lab, c in split["train"]] == \
        [[d.impath, d.label, d.classname] for d in ds.train]
    again = build_dataset("PinsFaces", tmp_path)  # read back, not rebuilt
    assert capsys.readouterr().out == "" and (again.classnames, again.train, again.val, again.test) == \
        (ds.classnames, ds.train, ds.val, ds.test)


def test_celebfaces_classes_are_the_person_folders(tmp_path, capsys):
    FAKES["CelebFaces"].write_raw(tmp_path / "celeb_faces")
    ds = build_dataset("CelebFaces", tmp_path)
    assert "CelebFaces: built split file" in capsys.readouterr().out
    assert ds.classnames == CELEBS and ds.prompt("Tom Hanks") == "a photo of Tom Hanks."
    assert [len(ds.split(s)) for s in SPLITS] == [5 * 4, 2 * 4, 3 * 4]  # 10 images each: 50/20/30 per person


def test_pins_folder_without_the_prefix(tmp_path):
    images = tmp_path / "pinsfaces" / "Images"
    FAKES["PinsFaces"].write_raw(tmp_path / "pinsfaces")
    (images / "pins_Person 000").rename(images / "Person 000")
    with user_error(re.escape(f"PinsFaces: folder {images / 'Person 000'} is not a class folder "
                              "'pins_<class name>'")):
        build_dataset("PinsFaces", tmp_path)
    assert not (tmp_path / "pinsfaces" / "split_alexey_pinsfaces.json").exists()


@pytest.mark.parametrize("name, archive_folder, error", [
    # PinsFaces' count of 105 person folders catches it
    ("PinsFaces", "105_classes_pins_dataset", "PinsFaces: {images} holds 1 class folders, expected 105"),
    # CelebFaces has no count to check: the folder is read as the only person, one without images
    ("CelebFaces", "Celebrity Faces Dataset", "CelebFaces: class folder {images}/Celebrity Faces Dataset holds no "
                                              "images"),
])
def test_release_archive_folder_put_in_images(name, archive_folder, error, tmp_path):
    """The archives extract to one folder holding the person folders: those go in Images/, not it."""
    images = tmp_path / dataset_config(name).folder / "Images"
    FAKES[name].write_raw(tmp_path / "download")
    images.mkdir(parents=True)
    (tmp_path / "download" / "Images").rename(images / archive_folder)
    with user_error(re.escape(error.format(images=images))):
        build_dataset(name, tmp_path)


def test_zeroshot_on_built_people_splits(tmp_path, demo, monkeypatch, capsys):
    """zeroshot.py with the demo model on both datasets built from their person folders; people who share a
    first name keep distinct classifier weights (their full names reach the text encoder)."""
    import torch

    import zeroshot

    monkeypatch.setattr(zeroshot, "cache_dir", lambda: tmp_path / "cache")  # fake figures stay out of the cache
    data_root = tmp_path / "data"
    FAKES["PinsFaces"].write_raw(data_root / "pinsfaces")
    FAKES["CelebFaces"].write_raw(data_root / "celeb_faces")
    results = zeroshot.main(["--backbone_arch", "demo", "--run_ds", "PinsFaces,CelebFaces", "--data_root",
                             str(data_root), "--device", "cpu", "--out", str(tmp_path / "zeroshot.json")])
    printed = capsys.readouterr().out
    assert list(results["PinsFaces"])[:3] == CHRIS and list(results["CelebFaces"]) == CELEBS
    # test images: 3 for each of the 2 big classes, 1 for each other (PinsFaces); 3 per person (CelebFaces)
    assert re.search(r"demo PinsFaces: zero-shot test accuracy [0-9.]+ \(109 images, 105 classes\)", printed)
    assert re.search(r"demo CelebFaces: zero-shot test accuracy [0-9.]+ \(12 images, 4 classes\)", printed)
    ds = build_dataset("PinsFaces", data_root)
    w = zeroshot.classifier_weights(demo, ds, "cpu")[:, :3]
    chris = demo.tokenizer(["Chris"])[0][1]  # the token after start-of-text
    assert all(chris in demo.tokenizer([ds.prompt(c)])[0] for c in CHRIS)
    assert torch.cdist(w.T, w.T)[~torch.eye(3, dtype=torch.bool)].min() > 1e-4


def test_audit_tokens_reads_the_person_datasets(tmp_path, capsys):
    """audit.py --tokens --tokens_ds PinsFaces: every person's name, and the tokens only that name has among
    every class of the run; the three Chris share `chris`, so only their surnames are their own."""
    import audit
    FAKES["PinsFaces"].write_raw(tmp_path / "pinsfaces")
    FAKES["CelebFaces"].write_raw(tmp_path / "celeb_faces")
    capsys.readouterr()
    rows = audit.main(["--tokens", "--tokens_ds", "PinsFaces,CelebFaces", "--data_root", str(tmp_path)])["tokens"]
    by = {(r["ds"], r["name"]): r["token_rows"] for r in rows}
    assert len(rows) == 105 + len(CELEBS)
    assert by[("PinsFaces", "Chris Pratt")] == ["pratt"] and "chris" not in by[("PinsFaces", "Chris Evans")]
    assert "| PinsFaces | Chris Pratt |" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"unknown dataset 'PinsFace'; did you mean: PinsFaces\?"):
        audit.main(["--tokens", "--tokens_ds", "PinsFace", "--data_root", str(tmp_path)])
