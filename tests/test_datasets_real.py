"""Readers of the paper's four datasets, on tiny fakes of their exact on-disk layouts.

Each test builds, in tmp_path, the folder tree of a real dataset with 8x8 JPEGs and either a split
file in the real (CoOp) format or the raw annotation files a missing split is built from.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from common import REPO, UserError
from dataset_fakes import CALTECH_RENAMED, SPLITS, jpeg, put_image, user_error, write_split_dataset
from datasets import ImageDataset, build_dataset, dataset_config
from datasets.base import load_rgb
from forget_cls import FORGET_CLASSES

REFERENCE = json.loads((REPO / "reference" / "zeroshot_openai_RN50.json").read_text())
REAL = ["StanfordDogs", "StanfordCars", "Caltech101", "OxfordFlowers"]
TEMPLATES = {"StanfordDogs": "a photo of a {}.", "StanfordCars": "a photo of a {}.",
             "Caltech101": "a photo of a {}.", "OxfordFlowers": "a photo of a {}, a type of flower."}


# ---------------------------------------------------------------- split files in the real format

@pytest.mark.parametrize("name", REAL)
def test_reader_with_split_file(name, tmp_path, capsys):
    classnames = list(REFERENCE[name])
    root = write_split_dataset(tmp_path, name, classnames)
    ds = build_dataset(name, tmp_path)
    cfg = dataset_config(name)
    assert ds.name == name and ds.root == root
    assert ds.classnames == classnames  # the paper's names, in label order
    assert ds.template == TEMPLATES[name] == cfg.template
    assert all(c in ds.classnames for c in FORGET_CLASSES[name])
    assert ds.prompt(classnames[0]) == TEMPLATES[name].format(classnames[0].replace("_", " "))
    split = json.loads((root / cfg.split_file).read_text())
    for s in SPLITS:
        items = ds.split(s)
        assert len(items) == len(classnames)
        assert [d.label for d in items] == list(range(len(classnames)))
        for d, (rel, label, cname) in zip(items, split[s]):
            assert d.impath == str(root / cfg.image_dir / rel) and Path(d.impath).is_file()
            assert (d.label, d.classname) == (label, cname) == (label, classnames[label])
    assert capsys.readouterr().out == ""  # nothing built


def test_case_insensitive_names_and_car_paths(tmp_path):
    root = write_split_dataset(tmp_path, "StanfordCars", list(REFERENCE["StanfordCars"])[:2])
    ds = build_dataset("stanfordcars", tmp_path)  # image_dir "." adds nothing to the paths
    assert ds.name == "StanfordCars"
    assert ds.test[0].impath == str(root / "cars_test" / "000200.jpg")
    assert ds.train[1].impath == str(root / "cars_train" / "001000.jpg")


# ---------------------------------------------------------------- splits built from raw annotations

def _caltech_tree(data_root: Path, per_class: int = 4, sizes: dict[str, int] | None = None,
                  drop: tuple[str, ...] = ()) -> Path:
    """101_ObjectCategories with all 102 original folders (BACKGROUND_Google, Faces_easy included)."""
    folders = [CALTECH_RENAMED.get(c, c) for c in REFERENCE["Caltech101"]] + ["BACKGROUND_Google", "Faces_easy"]
    image_root = data_root / "caltech-101" / "101_ObjectCategories"
    for folder in folders:
        if folder in drop:
            continue
        (image_root / folder).mkdir(parents=True)
        for i in range((sizes or {}).get(folder, per_class)):
            put_image(image_root / folder / f"image_{i + 1:04d}.jpg")
    return data_root / "caltech-101"


def _sizes(ds) -> dict[str, dict[str, int]]:
    return {s: {c: sum(d.classname == c for d in ds.split(s)) for c in ds.classnames} for s in SPLITS}


def test_caltech101_built_from_folders(tmp_path, capsys):
    root = _caltech_tree(tmp_path, sizes={"accordion": 10, "Faces": 7})
    (root / "101_ObjectCategories" / "accordion" / ".DS_Store").write_text("x")  # hidden: ignored
    ds = build_dataset("Caltech101", tmp_path)
    out = capsys.readouterr().out
    split_file = root / "split_zhou_Caltech101.json"
    assert out.count("\n") == 1 and f"built split file {split_file}" in out
    assert "(205/101/103 train/val/test images)" in out
    assert set(ds.classnames) == set(REFERENCE["Caltech101"]) and len(ds.classnames) == 100
    assert ds.classnames == list(REFERENCE["Caltech101"])  # folder order: Faces, Leopards, ... accordion
    assert all(c in ds.classnames for c in FORGET_CLASSES["Caltech101"])
    sizes = _sizes(ds)
    assert (sizes["train"]["accordion"], sizes["val"]["accordion"], sizes["test"]["accordion"]) == (5, 2, 3)
    assert (sizes["train"]["face"], sizes["val"]["face"], sizes["test"]["face"]) == (4, 1, 2)
    assert all((sizes["train"][c], sizes["val"][c], sizes["test"][c]) == (2, 1, 1)
               for c in ds.classnames if c not in ("accordion", "face"))
    paths = [d.impath for s in SPLITS for d in ds.split(s)]
    assert len(set(paths)) == len(paths) == 4 * 98 + 10 + 7  # disjoint, nothing lost
    assert not any("BACKGROUND_Google" in p or "Faces_easy" in p for p in paths)
    for d in ds.train + ds.val + ds.test:
        folder = Path(d.impath).parent.name
        assert CALTECH_RENAMED.get(d.classname, d.classname) == folder
        assert ds.classnames[d.label] == d.classname
    # written in the real format, read back without rebuilding, and deterministic
    text = split_file.read_text()
    assert json.loads(text)["train"][0][0].count("/") == 1
    again = build_dataset("Caltech101", tmp_path)
    assert capsys.readouterr().out == "" and again.test == ds.test
    split_file.unlink()
    build_dataset("Caltech101", tmp_path)
    assert split_file.read_text() == text


def test_oxford_flowers_built_from_imagelabels(tmp_path, capsys):
    root = tmp_path / "oxford_flowers"
    names = list(REFERENCE["OxfordFlowers"])
    labels = [k for _ in range(4) for k in range(1, 103)] + [1] * 6  # classes interleaved; class 1: 10
    for i in range(1, len(labels) + 1):
        put_image(root / "jpg" / f"image_{i:05d}.jpg")
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    (root / "cat_to_name.json").write_text(json.dumps({str(k + 1): n for k, n in enumerate(names)}))
    ds = build_dataset("OxfordFlowers", tmp_path)
    assert "OxfordFlowers: built split file" in capsys.readouterr().out
    assert ds.classnames == names and ds.template == "a photo of a {}, a type of flower."
    assert all(c in ds.classnames for c in FORGET_CLASSES["OxfordFlowers"])
    sizes = _sizes(ds)
    assert (sizes["train"][names[0]], sizes["val"][names[0]], sizes["test"][names[0]]) == (5, 2, 3)
    assert all((sizes["train"][c], sizes["val"][c], sizes["test"][c]) == (2, 1, 1) for c in names[1:])
    for d in ds.train + ds.val + ds.test:
        i = int(re.fullmatch(r"image_(\d{5})\.jpg", Path(d.impath).name).group(1))
        assert d.label == labels[i - 1] - 1 and d.classname == names[d.label]
        assert Path(d.impath).parent == root / "jpg"


def _mat_cells(strings: list[str], shape: tuple[int, int]) -> np.ndarray:
    cells = np.empty(shape, dtype=object)
    cells.flat[:] = strings
    return cells


def _car_annos(path: Path, pairs: list[tuple[str, int]]) -> None:
    """A devkit-style annotation file: a 1xN struct array with bbox_*, class and fname fields."""
    rec = np.zeros((1, len(pairs)), dtype=[(f, "O") for f in
                                            ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")])
    for j, (fname, cls) in enumerate(pairs):
        rec[0, j] = (np.array([[1]]), np.array([[1]]), np.array([[8]]), np.array([[8]]),
                     np.array([[cls]], dtype=np.uint8), fname)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"annotations": rec})


def test_stanford_cars_built_from_devkit(tmp_path, capsys):
    root = tmp_path / "stanford_cars"
    meta = ["AM General Hummer SUV 2000", "Spyker C8 Coupe 2009", "Dodge Ram Pickup 3500 Crew Cab 2010",
            "Ford Ranger SuperCab 2011"]
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": _mat_cells(meta, (1, 4))})
    train = [(f"{j:05d}.jpg", j % 4 + 1) for j in range(1, 21)]  # 5 per class
    test = [(f"{j:05d}.jpg", j % 4 + 1) for j in range(1, 9)]  # 2 per class
    _car_annos(root / "devkit" / "cars_train_annos.mat", train)
    _car_annos(root / "cars_test_annos_withlabels.mat", test)
    for fname, _ in train:
        put_image(root / "cars_train" / fname)
    for fname, _ in test:
        put_image(root / "cars_test" / fname)
    ds = build_dataset("StanfordCars", tmp_path)
    assert "StanfordCars: built split file" in capsys.readouterr().out
    assert ds.classnames == ["2000 AM General Hummer SUV", "2009 Spyker C8 Coupe",
                             "2010 Dodge Ram Pickup 3500 Crew Cab", "2011 Ford Ranger SuperCab"]
    assert all(c in ds.classnames for c in FORGET_CLASSES["StanfordCars"])
    sizes = _sizes(ds)
    assert all((sizes["train"][c], sizes["val"][c], sizes["test"][c]) == (4, 1, 2) for c in ds.classnames)
    assert {Path(d.impath).parent.name for d in ds.train + ds.val} == {"cars_train"}
    assert {Path(d.impath).parent.name for d in ds.test} == {"cars_test"}
    labels = dict(train)
    assert all(d.label == labels[Path(d.impath).name] - 1 for d in ds.train + ds.val)
    assert {Path(d.impath).name for d in ds.train + ds.val} == set(labels)


def test_stanford_dogs_built_from_lists(tmp_path, capsys):
    root = tmp_path / "stanford_dogs"
    folders = ["n02113624-toy_poodle", "n02086079-Pekinese", "n02097298-Scotch_terrier", "n02086240-Shih-Tzu"]
    files = {s: [f"{f}/{f.split('-')[0]}_{s}{i}.jpg" for f in folders for i in range(5 if s == "train" else 2)]
             for s in ("train", "test")}
    (root / "lists").mkdir(parents=True)
    for s, listed in files.items():
        for rel in listed:
            put_image(root / "Images" / rel)
        labels = [[sorted(folders).index(rel.split("/")[0]) + 1] for rel in listed]
        savemat(root / "lists" / f"{s}_list.mat", {"file_list": _mat_cells(listed, (len(listed), 1)),
                                                  "labels": np.array(labels)})
    ds = build_dataset("StanfordDogs", tmp_path)
    assert "StanfordDogs: built split file" in capsys.readouterr().out
    assert ds.classnames == ["Pekinese", "Shih", "Scotch terrier", "toy poodle"]  # synset order, paper's names
    assert [c for c in REFERENCE["StanfordDogs"] if c in ds.classnames] == ds.classnames
    assert all(c in ds.classnames for c in FORGET_CLASSES["StanfordDogs"])
    sizes = _sizes(ds)
    assert all((sizes["train"][c], sizes["val"][c], sizes["test"][c]) == (4, 1, 2) for c in ds.classnames)
    assert {str(Path(d.impath).relative_to(root / "Images")) for d in ds.test} == set(files["test"])


# ---------------------------------------------------------------- bad input

def test_unknown_dataset_name(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'StanfordDog'.*did you mean: StanfordDogs"):
        build_dataset("StanfordDog", tmp_path)


def test_missing_data_root_and_dataset_folder(tmp_path):
    with user_error(f"data root {tmp_path / 'nowhere'} does not exist"):
        build_dataset("Caltech101", tmp_path / "nowhere")
    with user_error(f"Caltech101: folder {tmp_path / 'caltech-101'} not found"):
        build_dataset("Caltech101", tmp_path)


@pytest.mark.parametrize("name,needed", [("StanfordDogs", "lists/train_list.mat"),
                                         ("StanfordCars", "devkit/cars_meta.mat"),
                                         ("Caltech101", "101_ObjectCategories"),
                                         ("OxfordFlowers", "imagelabels.mat")])
def test_missing_split_file_and_annotations(name, needed, tmp_path):
    cfg = dataset_config(name)
    root = tmp_path / cfg.folder
    root.mkdir()
    with user_error(re.escape(f"{name}: split file {root / cfg.split_file} not found, and {root / needed} "
                              f"to build it from is missing too")):
        build_dataset(name, tmp_path)
    assert not (root / cfg.split_file).exists()


def test_missing_image_of_split_file(tmp_path):
    root = write_split_dataset(tmp_path, "OxfordFlowers", ["a", "b"], per_class=2)
    (root / "jpg" / "image_001201.jpg").unlink()
    (root / "jpg" / "image_000000.jpg").unlink()
    with user_error(re.escape(f"OxfordFlowers: image listed in {root / 'split_zhou_OxfordFlowers.json'} "
                              f"is missing: {root / 'jpg' / 'image_000000.jpg'} (and 1 more)")):
        build_dataset("OxfordFlowers", tmp_path)


def test_unreadable_image(tmp_path):
    root = write_split_dataset(tmp_path, "Caltech101", ["accordion", "face"])
    bad = root / "101_ObjectCategories" / "Faces" / "image_2000.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = build_dataset("Caltech101", tmp_path)  # found when the image is read
    with user_error(f"cannot read image {re.escape(str(bad))}"):
        ImageDataset(ds.test, lambda im: im)[1]
    with user_error("cannot read image"):
        load_rgb(str(root / "101_ObjectCategories" / "accordion" / "missing.jpg"))
    assert ImageDataset(ds.test, lambda im: im.size)[0] == ((8, 8), 0)


def test_class_without_test_images(tmp_path):
    root = write_split_dataset(tmp_path, "StanfordDogs", ["Pekinese", "toy poodle", "Shih"])
    path = root / "split_alexey_stanford_dogs.json"
    split = json.loads(path.read_text())
    split["test"] = [e for e in split["test"] if e[1] != 1]
    path.write_text(json.dumps(split))
    with user_error(re.escape(f"StanfordDogs: class 'toy poodle' has no test image in {path}")):
        build_dataset("StanfordDogs", tmp_path)


@pytest.mark.parametrize("content,match", [
    ('{"train": [], "val": []}', r"lacks the lists \['test'\]"),
    ('[1, 2]', r"lacks the lists \['train', 'val', 'test'\]"),
    ('{"train": [["a.jpg", 0]], "val": [], "test": []}', r"entry \['a.jpg', 0\] in .* is not \[relative_path"),
    ('{"train": [["a.jpg", "x", "a"]], "val": [], "test": []}', r"entry .* is not \[relative_path"),
    ('{"train": [', "cannot read split file"),
])
def test_malformed_split_file(content, match, tmp_path):
    root = tmp_path / "stanford_cars"
    root.mkdir()
    (root / "split_zhou_StanfordCars.json").write_text(content)
    with user_error(match) as err:
        build_dataset("StanfordCars", tmp_path)
    assert str(root / "split_zhou_StanfordCars.json") in str(err.value)


def test_caltech_build_errors(tmp_path):
    _caltech_tree(tmp_path / "a", sizes={"minaret": 0})
    minaret = tmp_path / "a" / "caltech-101" / "101_ObjectCategories" / "minaret"
    with user_error(re.escape(f"class folder {minaret} holds no images")):
        build_dataset("Caltech101", tmp_path / "a")
    _caltech_tree(tmp_path / "b", sizes={"platypus": 2})
    with user_error("Caltech101: class 'platypus' has 2 images in .*101_ObjectCategories, too few to split"):
        build_dataset("Caltech101", tmp_path / "b")
    _caltech_tree(tmp_path / "c", drop=("euphonium", "ant"))
    with user_error("101_ObjectCategories holds 98 class folders, expected 100 \\(incomplete download\\?\\)"):
        build_dataset("Caltech101", tmp_path / "c")
    assert not any(tmp_path.glob("*/caltech-101/split_zhou_Caltech101.json"))


def test_flowers_build_errors(tmp_path):
    root = tmp_path / "oxford_flowers"
    root.mkdir()
    (root / "cat_to_name.json").write_text(json.dumps({"1": "a", "2": "b", "3": "c"}))
    labels = [1, 1, 1, 1, 3, 3, 3, 3]
    for i in range(1, 9):
        put_image(root / "jpg" / f"image_{i:05d}.jpg")
    savemat(root / "imagelabels.mat", {"labels": np.array([labels])})
    with user_error(re.escape(f"OxfordFlowers: class 'b' has no image in {root / 'imagelabels.mat'}")):
        build_dataset("OxfordFlowers", tmp_path)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels + [2] * 4])})  # images 9-12 absent
    with user_error(re.escape(f"OxfordFlowers: image {root / 'jpg' / 'image_00009.jpg'} listed in "
                              f"{root / 'imagelabels.mat'} is missing (and 3 more)")):
        build_dataset("OxfordFlowers", tmp_path)
    assert not (root / "split_zhou_OxfordFlowers.json").exists()  # nothing half-built is written
    (root / "imagelabels.mat").write_bytes(b"MATLAB 5.0 but truncated")
    with user_error(f"cannot read {re.escape(str(root / 'imagelabels.mat'))}"):
        build_dataset("OxfordFlowers", tmp_path)
    savemat(root / "imagelabels.mat", {"lables": np.array([labels])})
    with user_error("imagelabels.mat has no 'labels' entry"):
        build_dataset("OxfordFlowers", tmp_path)


# ---------------------------------------------------------------- zero-shot figures in the reference format

def test_compute_baselines_on_real_layout(tmp_path):
    from models import load_model
    from zeroshot import compare_to_reference, compute_baselines

    names = list(REFERENCE["OxfordFlowers"])[:2]
    root = write_split_dataset(tmp_path, "OxfordFlowers", names, per_class=2)
    for i, p in enumerate(sorted((root / "jpg").iterdir())):  # images that differ
        put_image(p, jpeg((40 * i % 256, 255 - 30 * i % 256, 90)))
    ds = build_dataset("OxfordFlowers", tmp_path)
    lm = load_model("RN50", pretrained="none")
    out = compute_baselines(lm, ds, "cpu")
    ref_keys = set(REFERENCE["OxfordFlowers"][names[0]])
    assert list(out) == ds.classnames == names  # class order = label order
    for figs in out.values():
        assert set(figs) == ref_keys == {"cls_acc_test", "no_cls_acc", "acc_train", "full_acc"}
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in figs.values())
    assert len({figs["full_acc"] for figs in out.values()}) == 1
    lines = compare_to_reference({"OxfordFlowers": out}, REFERENCE)
    assert all(re.match(r"OxfordFlowers/.+ \w+: ours \d\.\d{4}, paper \d\.\d{4}$", line) for line in lines)
    shutil.rmtree(root)
