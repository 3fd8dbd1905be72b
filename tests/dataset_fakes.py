"""Tiny fakes of real datasets' on-disk layouts, shared by the dataset tests.

For every dataset: a few of its real class names, the shape of its image paths (below the image
folder), and for those whose split can be built, a writer of its raw files (class folders or the
official annotation lists) that also returns what a correct reader must find in them.
"""
from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from timm.data import ImageNetInfo

from common import UserError
from datasets import dataset_config

SPLITS = ("train", "val", "test")
WNIDS = ImageNetInfo().label_names()  # the 1000 ImageNet WordNet ids in class-index order


def jpeg(colour: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = jpeg()


def put_image(path: Path, data: bytes = JPEG) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def put_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def user_error(match: str):
    """pytest.raises for a UserError whose one-line message matches and points to DATASETS.md."""
    return pytest.raises(UserError, match=rf"(?s)^(?!.*\n).*(?:{match}).*see DATASETS\.md")


# ---------------------------------------------------------------- split files in the real format

@dataclass
class Built:
    """What a reader must find in a fake's raw files."""
    classnames: list[str]  # in label order
    labels: dict[str, int] = field(default_factory=dict)  # every image written (below image_dir) -> label
    sizes: dict[str, Counter] = field(default_factory=dict)  # split -> images per label
    fixed: dict[str, set[str]] = field(default_factory=dict)  # split -> its images, where official lists fix them
    same: dict[str, str] = field(default_factory=dict)  # split -> the split it repeats (ImageNet: val is test)

    def add(self, rel: str, label: int, split: str | None = None) -> str:
        self.labels[rel] = label
        if split:
            self.fixed.setdefault(split, set()).add(rel)
        return rel


@dataclass
class Fake:
    classnames: list[str]  # a few real class names, in label order
    image_path: Callable[[int, str, str, int], str]  # (label, classname, split, i) -> path below image_dir
    write_raw: Callable[[Path], Built] | None = None  # writes the raw files below the dataset folder
    needs_first: str = ""  # the first raw file a missing split is built from (below the dataset folder)


def write_split_dataset(data_root: Path, name: str, classnames: list[str] | None = None, per_class: int = 1) -> Path:
    """The dataset's tree with `per_class` images per class and split, and its split file."""
    cfg, fake = dataset_config(name), FAKES[name]
    root = data_root / cfg.folder
    split: dict[str, list] = {s: [] for s in SPLITS}
    for label, cname in enumerate(classnames or fake.classnames):
        for s in SPLITS:
            for i in range(per_class):
                rel = fake.image_path(label, cname, s, i)
                put_image(root / cfg.image_dir / rel)
                split[s].append([rel, label, cname])
    if cfg.split_file.endswith(".gz"):
        with gzip.open(root / cfg.split_file, "wt") as f:
            json.dump(split, f)
    else:
        (root / cfg.split_file).write_text(json.dumps(split))
    return root


# ---------------------------------------------------------------- raw files a split is built from

def _class_folder_dataset(folders: list[str], image_dir: str, image_name: Callable[[str, int], str],
                          rename: dict[str, str] | None = None, big: int = 0) -> Callable[[Path], Built]:
    """One folder of images per class: 4 images each (split 2/1/1), the first `big` classes 10 (5/2/3)."""
    def write(root: Path) -> Built:
        names = [(rename or {}).get(f, f) for f in sorted(folders)]
        built = Built(names, sizes={s: Counter() for s in SPLITS})
        for label, folder in enumerate(sorted(folders)):
            n = 10 if label < big else 4
            for i in range(n):
                put_image(root / image_dir / built.add(f"{folder}/{image_name(folder, i)}", label))
            for s, k in zip(SPLITS, (5, 2, 3) if n == 10 else (2, 1, 1)):
                built.sizes[s][label] = k
        return built
    return write


def _imagenet(parts: dict[str, str], image_dir: str, n_classes: int, folder_name: Callable[[int], str],
              image_name: Callable[[int, str, int], str], same: dict[str, str],
              extra_file: str = "") -> Callable[[Path], Built]:
    """Class folders of ImageNet classes (every `1000 // n_classes`-th): 1 image each, 2 in every 7th class."""
    def write(root: Path) -> Built:
        indices = range(0, 1000, 1000 // n_classes)  # WNIDS is sorted: label order is index order
        built = Built([IMAGENET_CLASSNAMES[k] for k in indices], sizes={s: Counter() for s in SPLITS}, same=same)
        for label, k in enumerate(indices):
            for sub in dict.fromkeys(parts.values()):
                n = 2 if label % 7 == 0 else 1
                for i in range(n):
                    rel = f"{sub}/{folder_name(k)}/{image_name(k, sub, i)}".removeprefix("./")
                    put_image(root / image_dir / built.add(rel, label))
                for s, p in parts.items():
                    if p == sub:
                        built.sizes[s][label] = n
        if extra_file:  # a file among the class folders (ImageNet-A/-R ship a README.txt)
            put_text(root / image_dir / extra_file, ["not a class"])
        return built
    return write


def _oxford_pets(root: Path) -> Built:
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 3, 1), ("yorkshire_terrier", 4, 2)]
    built = Built([b.lower() for b, _, _ in breeds], sizes={"train": Counter(), "val": Counter(), "test": Counter()})
    lines = {"trainval": [], "test": []}
    for n in range(1, 8):  # classes interleaved, as in the real lists; 5 trainval + 2 test images each
        for breed, class_id, species in breeds:
            part = "trainval" if n <= 5 else "test"
            lines[part].append(f"{breed}_{n} {class_id} {species} {n}")
            put_image(root / "images" / built.add(f"{breed}_{n}.jpg", class_id - 1, "test" if part == "test" else None))
    for label in range(len(breeds)):
        built.sizes["train"][label], built.sizes["val"][label], built.sizes["test"][label] = 4, 1, 2
    put_text(root / "annotations" / "trainval.txt", lines["trainval"])
    put_text(root / "annotations" / "test.txt", lines["test"])
    put_text(root / "annotations" / "list.txt", ["#Image CLASS-ID SPECIES BREED ID"])  # not read
    return built


def _fgvc_aircraft(root: Path) -> Built:
    variants = ["707-320", "A300B4", "F-16A/B", "Boeing 717"]
    built = Built(variants, sizes={s: Counter() for s in SPLITS})
    put_text(root / "variants.txt", variants)
    image_id = 1000
    for s, n in zip(SPLITS, (3, 2, 2)):
        lines = []
        for _ in range(n):
            for label, variant in enumerate(variants):
                image_id += 7
                lines.append(f"{image_id:07d} {variant}")
                put_image(root / "images" / built.add(f"{image_id:07d}.jpg", label, s))
                built.sizes[s][label] += 1
        put_text(root / f"images_variant_{s}.txt", lines)
    return built


SUN_FOLDERS = {"abbey": "a/abbey", "outdoor apartment_building": "a/apartment_building/outdoor",
               "shop bakery": "b/bakery/shop"}


def _sun397(root: Path) -> Built:
    built = Built(list(SUN_FOLDERS), sizes={"train": Counter(), "val": Counter(), "test": Counter()})
    put_text(root / "ClassName.txt", [f"/{f}" for f in SUN_FOLDERS.values()])
    lines = {"Training_01": [], "Testing_01": []}
    for label, folder in enumerate(SUN_FOLDERS.values()):
        for i in range(7):
            part = "Training_01" if i < 5 else "Testing_01"
            rel = built.add(f"{folder}/sun_{label}{i}abcdef.jpg", label, "test" if i >= 5 else None)
            lines[part].append(f"/{rel}")
            put_image(root / "SUN397" / rel)
        built.sizes["train"][label], built.sizes["val"][label], built.sizes["test"][label] = 4, 1, 2
    for part, listed in lines.items():
        put_text(root / f"{part}.txt", listed)
    return built


UCF_ACTIONS = ["ApplyEyeMakeup", "ApplyLipstick", "YoYo"]


def _ucf101(root: Path) -> Built:
    built = Built(["Apply_Eye_Makeup", "Apply_Lipstick", "Yo_Yo"], sizes={"train": Counter(), "val": Counter(),
                                                                            "test": Counter()})
    lists = root / "ucfTrainTestlist"
    put_text(lists / "classInd.txt", [f"{k + 1} {a}" for k, a in enumerate(UCF_ACTIONS)])
    train, test = [], []
    for label, action in enumerate(UCF_ACTIONS):
        for group in range(1, 8):
            video = f"v_{action}_g{group:02d}_c01"
            if group <= 2:
                test.append(f"{action}/{video}.avi")
            else:
                train.append(f"{action}/{video}.avi {label + 1}")
            rel = built.add(f"{built.classnames[label]}/{video}.jpg", label, "test" if group <= 2 else None)
            put_image(root / "UCF-101-midframes" / rel)
        built.sizes["train"][label], built.sizes["val"][label], built.sizes["test"][label] = 4, 1, 2
    put_text(lists / "trainlist01.txt", train)
    put_text(lists / "testlist01.txt", test)
    return built


EUROSAT_RENAME = {"AnnualCrop": "Annual Crop Land", "Forest": "Forest",
                  "HerbaceousVegetation": "Herbaceous Vegetation Land", "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
                  "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
                  "SeaLake": "Sea or Lake"}  # CoOp's class names
EUROSAT_FOLDER = {name: folder for folder, name in EUROSAT_RENAME.items()}
FOOD = ["apple_pie", "baby_back_ribs", "baklava"] + [f"dish_{k:03d}" for k in range(98)]
DTD = ["banded", "blotchy", "braided"] + [f"texture_{k:02d}" for k in range(44)]
CALTECH_RENAMED = {"airplane": "airplanes", "face": "Faces", "leopard": "Leopards", "motorbike": "Motorbikes"}
CUB = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
# people: names that share sub-word tokens. The Pins release has 105 `pins_<Name>` folders, some names in lower
# case (sorted after the capitalised ones, as in the paper's class order); image names as `Adriana Lima17_70.jpg`
PINS = ["pins_Chris Evans", "pins_Chris Hemsworth", "pins_Chris Pratt", "pins_alycia dabnem carey"] + \
    [f"pins_Person {k:03d}" for k in range(101)]
CELEBS = ["Brad Pitt", "Tom Cruise", "Tom Hanks", "Will Smith"]  # Kaggle's "Celebrity Faces Dataset" folders


FAKES: dict[str, Fake] = {
    # the paper's four (their raw files are written in test_datasets_real.py)
    "StanfordDogs": Fake(["Pekinese", "toy poodle", "Scotch terrier"],
                         lambda label, c, s, i: f"n{label:08d}-{c.replace(' ', '_')}/n{label:08d}_{s}{i}.jpg"),
    "StanfordCars": Fake(["2009 Spyker C8 Coupe", "2011 Ford Ranger SuperCab"],
                         lambda label, c, s, i: f"cars_{'test' if s == 'test' else 'train'}/"
                                                f"{label:03d}{SPLITS.index(s)}{i:02d}.jpg"),
    "Caltech101": Fake(["accordion", "face", "minaret"],
                       lambda label, c, s, i: f"{CALTECH_RENAMED.get(c, c)}/image_{SPLITS.index(s)}{i:03d}.jpg"),
    "OxfordFlowers": Fake(["gazania", "tree mallow"],
                          lambda label, c, s, i: f"image_{label:03d}{SPLITS.index(s)}{i:02d}.jpg"),
    # ImageNet and its variants
    "ImageNet": Fake(list(IMAGENET_CLASSNAMES[:3]),
                     lambda label, c, s, i: f"{'train' if s == 'train' else 'val'}/{WNIDS[label]}/"
                                            f"{WNIDS[label]}_{SPLITS.index(s)}{i}.JPEG",
                     _imagenet({"train": "train", "val": "val", "test": "val"}, "images", 1000, WNIDS.__getitem__,
                               lambda k, sub, i: f"{WNIDS[k]}_{sub}{i}.JPEG", {"val": "test"}),
                     "images"),
    "ImageNetV2": Fake(list(IMAGENET_CLASSNAMES[:3]),
                       lambda label, c, s, i: f"{label}/{label:04x}{SPLITS.index(s)}{i}c0ffee.jpeg",
                       _imagenet({"train": ".", "test": "."}, "imagenetv2-matched-frequency-format-val", 1000, str,
                                 lambda k, sub, i: f"{k:04x}{i}c0ffee.jpeg", {"train": "test"}),
                       "imagenetv2-matched-frequency-format-val"),
    "ImageNetSketch": Fake(list(IMAGENET_CLASSNAMES[:3]),
                           lambda label, c, s, i: f"{WNIDS[label]}/sketch_{SPLITS.index(s)}{i}.JPEG",
                           _imagenet({"train": ".", "test": "."}, "images", 1000, WNIDS.__getitem__,
                                     lambda k, sub, i: f"sketch_{i}.JPEG", {"train": "test"}),
                           "images"),
    "ImageNetA": Fake([IMAGENET_CLASSNAMES[k] for k in (1, 6, 11)],
                      lambda label, c, s, i: f"{WNIDS[IMAGENET_CLASSNAMES.index(c)]}/0.{SPLITS.index(s)}{i}.jpg",
                      _imagenet({"train": ".", "test": "."}, "imagenet-a", 200, WNIDS.__getitem__,
                                lambda k, sub, i: f"0.{k}{i}.jpg", {"train": "test"}, "README.txt"),
                      "imagenet-a"),
    "ImageNetR": Fake([IMAGENET_CLASSNAMES[k] for k in (1, 2, 4)],
                      lambda label, c, s, i: f"{WNIDS[IMAGENET_CLASSNAMES.index(c)]}/art_{SPLITS.index(s)}{i}.jpg",
                      _imagenet({"train": ".", "test": "."}, "imagenet-r", 200, WNIDS.__getitem__,
                                lambda k, sub, i: f"cartoon_{i}.jpg", {"train": "test"}, "README.txt"),
                      "imagenet-r"),
    # CoOp's other datasets
    "OxfordPets": Fake(["abyssinian", "american_bulldog", "bengal"],
                       lambda label, c, s, i: f"{c}_{SPLITS.index(s)}{i}.jpg",
                       _oxford_pets, "annotations/trainval.txt"),
    "Food101": Fake(["apple_pie", "baby_back_ribs", "baklava"],
                    lambda label, c, s, i: f"{c}/{label}{SPLITS.index(s)}{i:04d}.jpg",
                    _class_folder_dataset(FOOD, "images", lambda f, i: f"{1000 + i}.jpg", big=2), "images"),
    "FGVCAircraft": Fake(["707-320", "A300B4", "F-16A/B"],
                         lambda label, c, s, i: f"{label:04d}{SPLITS.index(s)}{i:02d}.jpg",
                         _fgvc_aircraft, "variants.txt"),
    "SUN397": Fake(list(SUN_FOLDERS), lambda label, c, s, i: f"{SUN_FOLDERS[c]}/sun_{SPLITS.index(s)}{i}.jpg",
                   _sun397, "ClassName.txt"),
    "DTD": Fake(["banded", "blotchy", "braided"], lambda label, c, s, i: f"{c}/{c}_{SPLITS.index(s)}{i:03d}.jpg",
                _class_folder_dataset(DTD, "images", lambda f, i: f"{f}_{i + 1:04d}.jpg", big=1), "images"),
    "EuroSAT": Fake(["Annual Crop Land", "Forest", "Sea or Lake"],
                    lambda label, c, s, i: f"{EUROSAT_FOLDER[c]}/{EUROSAT_FOLDER[c]}_{SPLITS.index(s)}{i}.jpg",
                    _class_folder_dataset(list(EUROSAT_RENAME), "2750", lambda f, i: f"{f}_{i + 1}.jpg",
                                          EUROSAT_RENAME, big=3), "2750"),
    "UCF101": Fake(["Apply_Eye_Makeup", "Apply_Lipstick", "Yo_Yo"],
                   lambda label, c, s, i: f"{c}/v_{c.replace('_', '')}_g{SPLITS.index(s)}{i}_c01.jpg",
                   _ucf101, "ucfTrainTestlist/classInd.txt"),
    # the people datasets of the paper's repository: its authors' split files, or one built from the person folders
    "PinsFaces": Fake(["Chris Evans", "Chris Hemsworth", "Chris Pratt"],
                      lambda label, c, s, i: f"pins_{c}/{c}{SPLITS.index(s)}_{i}.jpg",
                      _class_folder_dataset(PINS, "Images", lambda f, i: f"{f.removeprefix('pins_')}{i}_{7 * i}.jpg",
                                            {f: f.removeprefix("pins_") for f in PINS}, big=2), "Images"),
    "CelebFaces": Fake(["Tom Cruise", "Tom Hanks", "Will Smith"],
                       lambda label, c, s, i: f"{c}/{SPLITS.index(s)}{i:02d}_c04300ef.jpg",
                       _class_folder_dataset(CELEBS, "Images", lambda f, i: f"{i + 1:03d}_fe3347c{i}.jpg", big=4),
                       "Images"),
    # the paper's authors' own split, which cannot be built
    "CUB": Fake(CUB, lambda label, c, s, i: f"{c}/{c.split('.')[1]}_00{SPLITS.index(s)}{i}_79613{label}.jpg"),
}
NEW = [n for n in FAKES if n not in ("StanfordDogs", "StanfordCars", "Caltech101", "OxfordFlowers")]
BUILDABLE = [n for n in NEW if FAKES[n].write_raw is not None]
