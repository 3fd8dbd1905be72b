"""Readers of the datasets beyond the paper's four, on tiny fakes of their real on-disk layouts.

ImageNet and its variants, CoOp's other datasets, CUB and the people datasets (PinsFaces, CelebFaces):
each is read from a split file in the real format and, where the split can be built, from its raw
files (class folders or official lists), in tmp_path with 8x8 JPEGs (tests/dataset_fakes.py).
"""
from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter

import pytest
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from datasets import build_dataset, dataset_config, known_datasets
from dataset_fakes import BUILDABLE, FAKES, NEW, SPLITS, WNIDS, put_image, put_text, user_error, write_split_dataset

TEMPLATES = {  # CoOp's zero-shot templates (trainers/zsclip.py); CUB: the paper's authors' (CLIP_fewshot_imo);
    # the people datasets: none published, CLIP's plain prompt
    "ImageNet": "a photo of a {}.", "ImageNetV2": "a photo of a {}.", "ImageNetSketch": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.", "ImageNetR": "a photo of a {}.",
    "OxfordPets": "a photo of a {}, a type of pet.", "Food101": "a photo of {}, a type of food.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.", "SUN397": "a photo of a {}.", "DTD": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.", "UCF101": "a photo of a person doing {}.",
    "CUB": "a photo of a {}, a type of bird.", "PinsFaces": "a photo of {}.", "CelebFaces": "a photo of {}.",
}


def test_every_new_dataset_is_registered_with_its_template():
    assert set(NEW) <= set(known_datasets()) and set(TEMPLATES) == set(NEW)
    for name in NEW:
        cfg = dataset_config(name)
        assert cfg.template == TEMPLATES[name]
        assert cfg.ensemble_templates == "openai_imagenet"


# ---------------------------------------------------------------- split files in the real format

@pytest.mark.parametrize("name", NEW)
def test_reader_with_split_file(name, tmp_path, capsys):
    root = write_split_dataset(tmp_path, name, per_class=2)
    cfg = dataset_config(name)
    ds = build_dataset(name, tmp_path)
    assert capsys.readouterr().out == ""  # read, nothing built
    assert ds.name == name and ds.root == root
    assert ds.classnames == FAKES[name].classnames and ds.template == TEMPLATES[name]
    assert len(ds.templates) == 80  # the CLIP ImageNet ensemble
    opener = gzip.open if cfg.split_file.endswith(".gz") else open
    with opener(root / cfg.split_file, "rt") as f:
        split = json.load(f)
    for s in SPLITS:
        items = ds.split(s)
        assert [d.label for d in items] == [k for k in range(3) for _ in range(2)]
        for d, (rel, label, cname) in zip(items, split[s]):
            assert d.impath == str(root / cfg.image_dir / rel) and os.path.isfile(d.impath)
            assert (d.label, d.classname) == (label, cname) == (label, ds.classnames[label])


# ---------------------------------------------------------------- splits built from the raw files

@pytest.mark.parametrize("name", BUILDABLE)
def test_split_built_from_raw_files(name, tmp_path, capsys):
    cfg = dataset_config(name)
    root = tmp_path / cfg.folder
    truth = FAKES[name].write_raw(root)
    ds = build_dataset(name, tmp_path)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"{name}: built split file {root / cfg.split_file} from " in out
    assert ds.classnames == truth.classnames
    image_root = root / cfg.image_dir
    rels = {s: [os.path.relpath(d.impath, image_root) for d in ds.split(s)] for s in SPLITS}
    for s in SPLITS:
        assert Counter(d.label for d in ds.split(s)) == truth.sizes[s], s
        assert all(truth.labels[r] == d.label and d.classname == truth.classnames[d.label]
                   for r, d in zip(rels[s], ds.split(s)))
        if s in truth.fixed:  # the official list decides
            assert set(rels[s]) == truth.fixed[s], s
    for s, other in truth.same.items():  # ImageNet: val is test; the variants: train is test (as CoOp)
        assert ds.split(s) == ds.split(other)
    distinct = [r for s in SPLITS if s not in truth.same for r in rels[s]]
    assert len(distinct) == len(set(distinct)) and set(distinct) == set(truth.labels)  # disjoint, nothing lost
    # written once in the real format, read back without rebuilding
    again = build_dataset(name, tmp_path)
    assert capsys.readouterr().out == "" and (again.train, again.val, again.test) == (ds.train, ds.val, ds.test)


@pytest.mark.parametrize("name", ["ImageNet", "ImageNetA"])
def test_imagenet_names_from_classnames_txt(name, tmp_path, capsys):
    """CoOp's classnames.txt (`<wnid> <name>`, 1000 lines) names the classes when present."""
    cfg = dataset_config(name)
    root = tmp_path / cfg.folder
    truth = FAKES[name].write_raw(root)
    put_text(root / "classnames.txt", [f"{w} {c} (from the file)" for w, c in zip(WNIDS, IMAGENET_CLASSNAMES)])
    ds = build_dataset(name, tmp_path)
    assert f"class names from {root / 'classnames.txt'}" in capsys.readouterr().out
    assert ds.classnames == [f"{c} (from the file)" for c in truth.classnames]


def test_imagenet_split_file_is_gzipped_json(tmp_path):
    root = tmp_path / "imagenet"
    FAKES["ImageNet"].write_raw(root)
    ds = build_dataset("ImageNet", tmp_path)
    with gzip.open(root / "split_ImageNet.json.gz", "rt") as f:
        split = json.load(f)
    assert [[os.path.join(root, "images", r), lab, c] for r, lab, c in split["test"]] == \
        [[d.impath, d.label, d.classname] for d in ds.test]
    assert split["train"][0] == [f"train/{WNIDS[0]}/{WNIDS[0]}_train0.JPEG", 0, "tench"]
    (root / "split_ImageNet.json.gz").write_bytes(b"\x1f\x8b truncated")
    with user_error(f"cannot read split file {re.escape(str(root / 'split_ImageNet.json.gz'))}"):
        build_dataset("ImageNet", tmp_path)


def test_read_only_dataset_folder_keeps_the_split_in_memory(tmp_path, capsys, monkeypatch):
    import datasets.splitting

    def refuse(path, split):
        raise PermissionError(13, "Permission denied", str(path))

    FAKES["ImageNetA"].write_raw(tmp_path / "imagenet-adversarial")
    monkeypatch.setattr(datasets.splitting, "write_split_file", refuse)
    ds = build_dataset("ImageNetA", tmp_path)
    out = capsys.readouterr().out
    assert "ImageNetA: cannot write the split file" in out and "(Permission denied)" in out
    assert "without saving it" in out and len(ds.classnames) == 200
    assert not (tmp_path / "imagenet-adversarial" / "split_ImageNetA.json.gz").exists()


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", NEW)
def test_missing_dataset_folder(name, tmp_path):
    cfg = dataset_config(name)
    with user_error(re.escape(f"{name}: folder {tmp_path / cfg.folder} not found")):
        build_dataset(name.lower(), tmp_path)


@pytest.mark.parametrize("name", BUILDABLE)
def test_missing_split_file_and_raw_files(name, tmp_path):
    cfg = dataset_config(name)
    root = tmp_path / cfg.folder
    root.mkdir()
    needed = root / FAKES[name].needs_first
    with user_error(re.escape(f"{name}: split file {root / cfg.split_file} not found, and {needed} "
                              f"to build it from is missing too")):
        build_dataset(name, tmp_path)


def test_cub_split_file_cannot_be_built(tmp_path):
    (tmp_path / "cub" / "images").mkdir(parents=True)
    with user_error(re.escape(f"CUB: split file {tmp_path / 'cub' / 'split_alexey_cub.json'} not found;")):
        build_dataset("CUB", tmp_path)


def test_imagenet_folder_errors(tmp_path):
    root = tmp_path / "imagenet-rendition"
    FAKES["ImageNetR"].write_raw(root)
    (root / "imagenet-r" / WNIDS[5]).rename(root / "imagenet-r" / "n99999999")
    with user_error(re.escape(f"ImageNetR: folder {root / 'imagenet-r' / 'n99999999'} is not an ImageNet class "
                              "in open_clip's IMAGENET_CLASSNAMES")):
        build_dataset("ImageNetR", tmp_path)
    (root / "imagenet-r" / "n99999999").rename(root / "imagenet-r" / ".trash")  # hidden: not a class
    with user_error(re.escape(f"{root / 'imagenet-r'} holds 199 class folders, expected 200 (incomplete download?)")):
        build_dataset("ImageNetR", tmp_path)
    v2 = tmp_path / "imagenetv2"
    FAKES["ImageNetV2"].write_raw(v2)
    images = v2 / "imagenetv2-matched-frequency-format-val"
    (images / "999").rename(images / "1000")
    with user_error(re.escape(f"ImageNetV2: folder {images / '1000'} is not a class index 0..999")):
        build_dataset("ImageNetV2", tmp_path)
    (images / "1000").rename(images / "999")
    for f in (images / "42").iterdir():
        f.unlink()
    with user_error(re.escape(f"ImageNetV2: class folder {images / '42'} holds no images")):
        build_dataset("ImageNetV2", tmp_path)
    assert not list(tmp_path.glob("*/split_*"))  # nothing half-built is written


def test_annotation_list_errors(tmp_path):
    pets = tmp_path / "oxford_pets"
    FAKES["OxfordPets"].write_raw(pets)
    test_list = pets / "annotations" / "test.txt"
    put_text(test_list, ["Abyssinian_6 1 1 6", "Bengal_6"])
    with user_error(re.escape(f"OxfordPets: {test_list} line 2 ('Bengal_6') is not "
                              "'<image name> <class id> <species> <breed id>'")):
        build_dataset("OxfordPets", tmp_path)
    put_text(test_list, ["Abyssinian_6 1 1 6"])
    with user_error(re.escape(f"OxfordPets: class 'american_bulldog' has no image in {test_list}")):
        build_dataset("OxfordPets", tmp_path)
    planes = tmp_path / "fgvc_aircraft"
    FAKES["FGVCAircraft"].write_raw(planes)
    with open(planes / "images_variant_val.txt", "a") as f:
        f.write("1234567 Concorde\n")
    with user_error(re.escape(f"FGVCAircraft: {planes / 'images_variant_val.txt'} line 9 names the class 'Concorde', "
                              "which is not in the dataset's class list")):
        build_dataset("FGVCAircraft", tmp_path)
    ucf = tmp_path / "ucf101"
    FAKES["UCF101"].write_raw(ucf)
    frame = ucf / "UCF-101-midframes" / "Yo_Yo" / "v_YoYo_g01_c01.jpg"
    frame.unlink()
    with user_error(re.escape(f"UCF101: image {frame} listed in ")):
        build_dataset("UCF101", tmp_path)
    assert not list(tmp_path.glob("*/split_*"))


def test_class_folder_with_too_few_images(tmp_path):
    root = tmp_path / "eurosat"
    FAKES["EuroSAT"].write_raw(root)
    for f in sorted((root / "2750" / "River").iterdir())[1:]:
        f.unlink()
    put_image(root / "2750" / "River" / "notes.txt")  # not an image
    with user_error(re.escape("EuroSAT: class 'River' has 1 images in ") + ".*2750, too few to split"):
        build_dataset("EuroSAT", tmp_path)


# ---------------------------------------------------------------- the scripts on every new dataset

def test_forget_classes_of_a_new_dataset_come_from_forget_labels(tmp_path):
    from forget_cls import resolve_targets

    write_split_dataset(tmp_path, "Food101")
    ds = {"Food101": build_dataset("Food101", tmp_path)}
    assert resolve_targets(ds, None) == ([], ["no default forget classes for Food101: pass --forget_labels"])
    assert resolve_targets(ds, "baklava", "Food101") == ([("Food101", "baklava")], [])


def test_zeroshot_runs_on_every_new_dataset(tmp_path, demo, monkeypatch, capsys):
    """zeroshot.py with the demo model on a data root holding a fake of every new dataset."""
    import zeroshot

    monkeypatch.setattr(zeroshot, "cache_dir", lambda: tmp_path / "cache")  # fake figures stay out of the cache
    data_root = tmp_path / "data"
    for name in NEW:
        write_split_dataset(data_root, name, per_class=2)
    out_file = tmp_path / "zeroshot.json"
    results = zeroshot.main(["--backbone_arch", "demo", "--run_ds", ",".join(NEW), "--data_root", str(data_root),
                             "--device", "cpu", "--out", str(out_file)])
    printed = capsys.readouterr().out
    assert list(results) == NEW and json.loads(out_file.read_text()) == results
    for name in NEW:
        assert list(results[name]) == FAKES[name].classnames  # label order
        figs = list(results[name].values())
        assert all(set(f) == {"cls_acc_test", "no_cls_acc", "acc_train", "full_acc"} for f in figs)
        full = sum(f["cls_acc_test"] for f in figs) / len(figs)  # 2 test images in every class
        assert all(abs(f["full_acc"] - full) < 1e-6 for f in figs)
        assert re.search(rf"demo {name}: zero-shot test accuracy {full:.4f} \(6 images, 3 classes\)", printed)
