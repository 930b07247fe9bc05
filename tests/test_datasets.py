"""Dataset readers on fabricated trees in their real layouts: splits, fallbacks and class-name rules.

The fabricators here are shared by the other ``test_datasets_*.py`` files.
"""

from __future__ import annotations

import io
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import plpp.datasets  # noqa: F401  (registers the readers)
from plpp.engine import DATASET_REGISTRY, get_cfg_default

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
ALL_NAMES = ["Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft", "SUN397",
             "DescribableTextures", "EuroSAT", "UCF101", "ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetA",
             "ImageNetR", "FashionMNIST"]
CONFIG_FILES = {"caltech101": "Caltech101", "oxford_pets": "OxfordPets", "stanford_cars": "StanfordCars",
                "oxford_flowers": "OxfordFlowers", "food101": "Food101", "fgvc_aircraft": "FGVCAircraft",
                "sun397": "SUN397", "dtd": "DescribableTextures", "eurosat": "EuroSAT", "ucf101": "UCF101",
                "imagenet": "ImageNet", "imagenetv2": "ImageNetV2", "imagenet_sketch": "ImageNetSketch",
                "imagenet_a": "ImageNetA", "imagenet_r": "ImageNetR", "fashion_mnist": "FashionMNIST"}

# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------

_IMAGE_BYTES: dict[str, bytes] = {}


def image_bytes(fmt: str = "JPEG") -> bytes:
    """A valid 8x8 RGB image, encoded once per format."""
    if fmt not in _IMAGE_BYTES:
        buf = io.BytesIO()
        Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3)).save(buf, format=fmt)
        _IMAGE_BYTES[fmt] = buf.getvalue()
    return _IMAGE_BYTES[fmt]


def write_image(path: Path, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(fmt))
    return path


def write_text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_cfg(root: Path | str, name: str, shots: int = -1, seed: int = 1, subsample: str = "all"):
    """The config a run builds data from: defaults with DATASET.ROOT/NAME, SEED and NUM_SHOTS set."""
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.SEED = seed
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    return cfg


def build(root: Path | str, name: str, **kwargs):
    """Build the registered reader ``name`` from :func:`make_cfg`."""
    return DATASET_REGISTRY.get(name)(make_cfg(root, name, **kwargs))


@pytest.fixture
def cfg_for(tmp_path):
    """``cfg_for(name, shots=..., seed=...)``: a config rooted at this test's tmp_path."""
    return lambda name, **kw: make_cfg(tmp_path, name, **kw)


@contextmanager
def plpp_log():
    """Collect the ``plpp`` logger's messages (independent of its propagate setting)."""
    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log = logging.getLogger("plpp")
    handler, old_level = _Collect(level=logging.DEBUG), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def rel(data, base: Path) -> list[tuple[str, int, str]]:
    return [(os.path.relpath(d.impath, base), d.label, d.classname) for d in data]


def make_class_folders(image_dir: Path, classes: list[str], per_class: int = 10, fmt: str = "JPEG") -> None:
    ext = "jpg" if fmt == "JPEG" else fmt.lower()
    for c in classes:
        for i in range(per_class):
            write_image(image_dir / c / f"{c}_{i:04d}.{ext}", fmt)


def make_split_dataset(root: Path, folder: str, image_dir: str, split_file: str, n_classes: int,
                       per_split: tuple[int, int, int] = (6, 3, 2)) -> Path:
    """A dataset with a fabricated split JSON: ``n_classes`` classes, ``per_split`` images per class."""
    base = root / folder
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label in range(n_classes):
        for key, n in zip(split, per_split):
            for i in range(n):
                path = f"class_{label:03d}/{key}_{i}.jpg"
                write_image(base / image_dir / path)
                split[key].append([path, label, f"class {label}"])
    (base / split_file).write_text(json.dumps(split, indent=4), encoding="utf-8")
    return base


def make_food101(root: Path, n_classes: int = 5, per_split: tuple[int, int, int] = (6, 3, 2)) -> Path:
    return make_split_dataset(root, "food-101", "images", "split_zhou_Food101.json", n_classes, per_split)


def make_imagenet(root: Path, wnids=("n01440764", "n01443537", "n01484850"), per_class: int = 5,
                  val_per_class: int = 2) -> Path:
    base = root / "imagenet"
    write_text(base / "classnames.txt", [f"{w} name of {w}" for w in wnids] + ["n99999999 unused class"])
    for w in wnids:
        for i in range(per_class):
            write_image(base / "images" / "train" / w / f"{w}_{i}.JPEG")
        for i in range(val_per_class):
            write_image(base / "images" / "val" / w / f"ILSVRC2012_val_{w}_{i}.JPEG")
    return base


# ---------------------------------------------------------------------------------------------------------
# Registry and configs
# ---------------------------------------------------------------------------------------------------------


def test_every_dassl_name_is_registered():
    assert set(ALL_NAMES) <= set(DATASET_REGISTRY.registered_names())


@pytest.mark.parametrize("stem,name", sorted(CONFIG_FILES.items()))
def test_dataset_config_files_name_the_reader(stem, name):
    cfg = get_cfg_default()
    cfg.merge_from_file(str(REPO / "configs" / "datasets" / f"{stem}.yaml"))
    assert cfg.DATASET.NAME == name


# ---------------------------------------------------------------------------------------------------------
# Class-folder datasets (Caltech101, Food101, DTD, EuroSAT)
# ---------------------------------------------------------------------------------------------------------


def test_caltech101_fallback_split_renames_and_ignores(tmp_path):
    folders = ["accordion", "airplanes", "BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes"]
    make_class_folders(tmp_path / "caltech-101" / "101_ObjectCategories", folders)
    with plpp_log() as log:
        ds = build(tmp_path, "Caltech101")
    assert ds.classnames == ["face", "leopard", "motorbike", "accordion", "airplane"]  # upper-case folders first
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (25, 10, 15)  # 5/2/3 of 10 per class
    split_path = tmp_path / "caltech-101" / "split_zhou_Caltech101.json"
    assert split_path.is_file() and any("not CoOp's published split" in m for m in log)
    split = json.loads(split_path.read_text())
    assert split["train"][0][0].count("/") == 1  # relative to 101_ObjectCategories
    again = build(tmp_path, "Caltech101")  # now read from the file
    assert rel(again.train_x, tmp_path) == rel(ds.train_x, tmp_path)
    other = tmp_path / "copy"  # the same folders elsewhere give the same split (no global RNG, sorted listing)
    make_class_folders(other / "caltech-101" / "101_ObjectCategories", folders)
    build(other, "Caltech101")
    assert json.loads((other / "caltech-101" / "split_zhou_Caltech101.json").read_text()) == split


def test_fallback_split_does_not_touch_global_random(tmp_path):
    import random

    make_class_folders(tmp_path / "dtd" / "images", ["banded", "blotchy"], per_class=5)
    random.seed(123)
    state = random.getstate()
    ds = build(tmp_path, "DescribableTextures")
    assert random.getstate() == state
    assert ds.classnames == ["banded", "blotchy"]


def test_eurosat_descriptive_names(tmp_path):
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]
    make_class_folders(tmp_path / "eurosat" / "2750", folders, per_class=4)
    ds = build(tmp_path, "EuroSAT")
    assert ds.classnames == ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                             "Industrial Buildings", "Pasture Land", "Permanent Crop Land", "Residential Buildings",
                             "River", "Sea or Lake"]


def test_food101_reads_split_json_and_folder_names(tmp_path):
    make_class_folders(tmp_path / "food-101" / "images", ["apple_pie", "baby_back_ribs"], per_class=5, fmt="PNG")
    ds = build(tmp_path, "Food101")
    assert ds.classnames == ["apple_pie", "baby_back_ribs"]
    base = make_food101(tmp_path / "r2", n_classes=3)
    ds = build(tmp_path / "r2", "Food101")
    assert (ds.num_classes, len(ds.train_x), len(ds.val), len(ds.test)) == (3, 18, 9, 6)
    assert ds.train_x[0].impath == str(base / "images" / "class_000" / "train_0.jpg")


# ---------------------------------------------------------------------------------------------------------
# Datasets with their own annotation files
# ---------------------------------------------------------------------------------------------------------


def test_oxford_pets_from_annotations(tmp_path):
    base = tmp_path / "oxford_pets"
    breeds = [("Abyssinian", 1, 1), ("american_pit_bull_terrier", 2, 2)]
    trainval, test = [], []
    for breed, cid, species in breeds:
        for i in range(1, 9):
            write_image(base / "images" / f"{breed}_{i}.jpg")
            (trainval if i <= 5 else test).append(f"{breed}_{i} {cid} {species} 1")
    write_text(base / "annotations" / "trainval.txt", trainval)
    write_text(base / "annotations" / "test.txt", ["#Image CLASS-ID SPECIES BREED ID", *test])
    ds = build(tmp_path, "OxfordPets")
    assert ds.classnames == ["abyssinian", "american_pit_bull_terrier"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (8, 2, 6)  # 20% of 5 per class held out
    assert (base / "split_zhou_OxfordPets.json").is_file()


def _savemat_cars(base: Path, names: list[str], train: list[tuple[str, int]], test: list[tuple[str, int]]):
    from scipy.io import savemat

    def annos(items):
        arr = np.zeros((1, len(items)), dtype=[("fname", "O"), ("class", "O")])
        for i, (fname, cls) in enumerate(items):
            arr[0, i] = (fname, np.array([[cls]], dtype=np.uint8))
        return {"annotations": arr}

    (base / "devkit").mkdir(parents=True, exist_ok=True)
    class_names = np.empty((1, len(names)), dtype=object)
    class_names[0, :] = names
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": class_names})
    savemat(base / "devkit" / "cars_train_annos.mat", annos(train))
    savemat(base / "cars_test_annos_withlabels.mat", annos(test))


def test_stanford_cars_devkit_fallback_year_first_and_paths(tmp_path):
    base = tmp_path / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Tesla Model S Sedan 2012"]
    train = [(f"{i:05d}.jpg", 1 + i % 2) for i in range(1, 11)]
    test = [(f"{i:05d}.jpg", 1 + i % 2) for i in range(1, 5)]
    for fname, _ in train:
        write_image(base / "cars_train" / fname)
    for fname, _ in test:
        write_image(base / "cars_test" / fname)
    _savemat_cars(base, names, train, test)
    ds = build(tmp_path, "StanfordCars")
    assert ds.classnames == ["2000 AM General Hummer SUV", "2012 Tesla Model S Sedan"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (8, 2, 4)
    split = json.loads((base / "split_zhou_StanfordCars.json").read_text())
    assert split["test"][0][0].startswith("cars_test/")  # relative to the dataset folder
    assert ds.test[0].impath.startswith(str(base / "cars_test"))


def test_oxford_flowers_from_imagelabels(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "oxford_flowers"
    labels = [2, 1] * 10  # image_00001 has label 2
    for i in range(len(labels)):
        write_image(base / "jpg" / f"image_{i + 1:05d}.jpg")
    savemat(base / "imagelabels.mat", {"labels": np.array([labels])})
    (base / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid"}))
    ds = build(tmp_path, "OxfordFlowers")
    assert ds.classnames == ["pink primrose", "hard-leaved pocket orchid"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (10, 4, 6)
    assert {os.path.basename(d.impath) for d in ds.train_x if d.label == 1} <= {
        f"image_{i + 1:05d}.jpg" for i in range(0, 20, 2)}


def test_fgvc_aircraft_variant_lists(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "F-16A/B", "Cessna 172"]
    write_text(base / "variants.txt", variants)
    image_id = 1000000
    for key in ("train", "val", "test"):
        lines = []
        for v in variants:
            for _ in range(2):
                image_id += 1
                write_image(base / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {v}")
        write_text(base / f"images_variant_{key}.txt", lines)
    ds = build(tmp_path, "FGVCAircraft")
    assert ds.classnames == variants
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (6, 6, 6)
    assert not list(base.glob("split_zhou_*.json"))  # no JSON for FGVC, as in CoOp


def test_sun397_path_reversal(tmp_path):
    base = tmp_path / "sun397"
    cats = ["/a/abbey", "/b/bakery/shop", "/b/bakery/kitchen"]
    write_text(base / "ClassName.txt", cats)
    train, test = [], []
    for c in cats:
        for i in range(7):
            path = f"{c}/sun_{i}.jpg"
            write_image(base / "SUN397" / path.lstrip("/"))
            (train if i < 5 else test).append(path)
    write_text(base / "Training_01.txt", train)
    write_text(base / "Testing_01.txt", test)
    ds = build(tmp_path, "SUN397")
    assert ds.classnames == ["abbey", "shop bakery", "kitchen bakery"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 3, 6)


def test_ucf101_camel_case_names(tmp_path):
    base = tmp_path / "ucf101"
    actions = ["ApplyEyeMakeup", "YoYo"]
    write_text(base / "ucfTrainTestlist" / "classInd.txt", [f"{i + 1} {a}" for i, a in enumerate(actions)])
    train, test = [], []
    for i, a in enumerate(actions):
        folder = "_".join(["Apply", "Eye", "Makeup"]) if a == "ApplyEyeMakeup" else "Yo_Yo"
        for g in range(7):
            video = f"v_{a}_g{g:02d}_c01"
            write_image(base / "UCF-101-midframes" / folder / f"{video}.jpg")
            (train if g < 5 else test).append(f"{a}/{video}.avi" + (f" {i + 1}" if g < 5 else ""))
    write_text(base / "ucfTrainTestlist" / "trainlist01.txt", train)
    write_text(base / "ucfTrainTestlist" / "testlist01.txt", test)
    ds = build(tmp_path, "UCF101")
    assert ds.classnames == ["Apply_Eye_Makeup", "Yo_Yo"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (8, 2, 4)


# ---------------------------------------------------------------------------------------------------------
# ImageNet family
# ---------------------------------------------------------------------------------------------------------


def test_imagenet_wnid_folders_val_is_test(tmp_path):
    base = make_imagenet(tmp_path)
    ds = build(tmp_path, "ImageNet")
    assert ds.classnames == ["name of n01440764", "name of n01443537", "name of n01484850"]
    assert (len(ds.train_x), len(ds.test)) == (15, 6)
    assert ds.val is ds.test
    assert (base / "split_plpp_ImageNet.json").is_file()
    fewshot = build(tmp_path, "ImageNet", shots=2, subsample="base")
    assert len(fewshot.train_x) == 4 and len(fewshot.test) == 4 and fewshot.val is fewshot.test
    cache = json.loads((base / "split_fewshot" / "plpp_shot_2-seed_1.json").read_text())
    assert cache["val"] is None and len(cache["train"]) == 6  # ImageNet samples train only


def test_imagenet_variants_test_only(tmp_path):
    wnids = ["n01443537", "n01440764"]
    names = [f"{w} name {w}" for w in sorted(wnids)]
    write_text(tmp_path / "imagenet" / "classnames.txt", names)  # shared copy, used by Sketch below
    for folder, image_dir in [("imagenet-sketch", "images"), ("imagenet-adversarial", "imagenet-a"),
                              ("imagenet-rendition", "imagenet-r")]:
        for w in wnids:
            for i in range(3):
                write_image(tmp_path / folder / image_dir / w / f"{i}.jpg")
        if folder != "imagenet-sketch":
            write_text(tmp_path / folder / "classnames.txt", names)
    (tmp_path / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("readme")
    for i in range(2):
        for k in range(3):
            write_image(tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(k) / f"{i}.jpeg")
    write_text(tmp_path / "imagenetv2" / "classnames.txt", ["n0 tench", "n1 goldfish", "n2 great white shark"])
    for name in ("ImageNetSketch", "ImageNetA", "ImageNetR"):
        ds = build(tmp_path, name, shots=1, subsample="base")  # both ignored for test-only sets
        assert ds.classnames == ["name n01440764", "name n01443537"], name
        assert len(ds.test) == 6 and ds.train_x is ds.test and ds.val is None
    v2 = build(tmp_path, "ImageNetV2")
    assert v2.classnames == ["tench", "goldfish", "great white shark"] and len(v2.test) == 6
