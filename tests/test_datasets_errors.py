"""Bad data gives a DatasetError that names the path and says what to do, never a bare traceback."""

from __future__ import annotations

import json

import pytest
import torch

from plpp.datasets import DatasetError
from tests.test_datasets import build, make_food101, make_imagenet, write_image, write_text

torch.set_num_threads(1)


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def test_missing_dataset_folder_shows_expected_layout(tmp_path):
    with pytest.raises(DatasetError) as err:
        build(tmp_path, "OxfordPets")
    msg = str(err.value)
    assert str(tmp_path / "oxford_pets") in msg and "images/" in msg and "split_zhou_OxfordPets.json" in msg


def test_empty_root(tmp_path):
    with pytest.raises(DatasetError, match="DATASET.ROOT is empty"):
        build("", "Food101")


@pytest.mark.parametrize("name,folder", [("StanfordCars", "stanford_cars"), ("Caltech101", "caltech-101"),
                                         ("SUN397", "sun397"), ("UCF101", "ucf101")])
def test_missing_split_and_no_way_to_build_one(tmp_path, name, folder):
    (tmp_path / folder).mkdir()
    with pytest.raises(DatasetError) as err:
        build(tmp_path, name)
    msg = str(err.value)
    assert "split file not found" in msg and "cannot be built" in msg and str(tmp_path / folder) in msg


def test_split_entry_with_missing_image(tmp_path):
    base = make_food101(tmp_path, n_classes=2)
    missing = base / "images" / "class_001" / "val_1.jpg"
    missing.unlink()
    with pytest.raises(DatasetError) as err:
        build(tmp_path, "Food101")
    msg = str(err.value)
    assert str(missing) in msg and "split_zhou_Food101.json" in msg and "1 image(s)" in msg


def test_image_folder_missing_although_split_exists(tmp_path):
    base = make_food101(tmp_path, n_classes=2)
    (base / "images").rename(base / "imgs")
    with pytest.raises(DatasetError, match="folder not found: .*food-101/images"):
        build(tmp_path, "Food101")


def test_corrupt_split_file(tmp_path):
    base = make_food101(tmp_path, n_classes=2)
    (base / "split_zhou_Food101.json").write_text("{not json")
    with pytest.raises(DatasetError, match="Cannot read split file .*Delete it"):
        build(tmp_path, "Food101")
    (base / "split_zhou_Food101.json").write_text(json.dumps({"train": [["a.jpg", "zero", "x"]]}))
    with pytest.raises(DatasetError, match="entry 0 of 'train'"):
        build(tmp_path, "Food101")


def test_class_folder_too_small_for_a_split(tmp_path):
    write_image(tmp_path / "dtd" / "images" / "banded" / "a.jpg")
    with pytest.raises(DatasetError, match="banded.*1 images, too few"):
        build(tmp_path, "DescribableTextures")


def test_stanford_cars_nested_folder_trap(tmp_path):
    write_image(tmp_path / "stanford_cars" / "cars_train" / "cars_train" / "00001.jpg")
    with pytest.raises(DatasetError, match="nested one level too deep"):
        build(tmp_path, "StanfordCars")


def test_imagenet_flat_val_folder(tmp_path):
    base = make_imagenet(tmp_path)
    for wnid_dir in list((base / "images" / "val").iterdir()):
        for f in wnid_dir.iterdir():
            f.rename(base / "images" / "val" / f.name)
        wnid_dir.rmdir()
    with pytest.raises(DatasetError) as err:
        build(tmp_path, "ImageNet")
    msg = str(err.value)
    assert "images/val/<wnid>/" in msg and "empty" in msg and "valprep.sh" in msg
    assert not (base / "split_plpp_ImageNet.json").exists()


def test_imagenet_classnames_do_not_match_folders(tmp_path):
    base = make_imagenet(tmp_path)
    write_text(base / "classnames.txt", ["n01440764 tench"])
    with pytest.raises(DatasetError, match="no line in .*classnames.txt"):
        build(tmp_path, "ImageNet")
    (base / "classnames.txt").unlink()
    with pytest.raises(DatasetError, match="Class-name file not found"):
        build(tmp_path, "ImageNet")


def test_imagenet_val_class_missing_from_train(tmp_path):
    base = make_imagenet(tmp_path)
    write_image(base / "images" / "val" / "n09999999" / "x.JPEG")
    with pytest.raises(DatasetError, match="train and val must have the same wnid folders"):
        build(tmp_path, "ImageNet")


def test_imagenetv2_folders_must_match_classnames(tmp_path):
    base = tmp_path / "imagenetv2"
    for k in (0, 1, 3):
        write_image(base / "imagenetv2-matched-frequency-format-val" / str(k) / "a.jpeg")
    write_text(base / "classnames.txt", ["n0 tench", "n1 goldfish", "n2 shark"])
    with pytest.raises(DatasetError, match="do not match .*3 lines.*missing e.g. \\['2'\\].*unexpected e.g. \\['3'\\]"):
        build(tmp_path, "ImageNetV2")
