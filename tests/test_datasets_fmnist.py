"""Fashion-MNIST from IDX files written by the test (plain and gzipped): PNGs, split, val, errors."""

from __future__ import annotations

import gzip
import random
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plpp.datasets import DatasetError, idx
from tests.test_datasets import build, plpp_log

torch.set_num_threads(1)
NAMES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, n_train: int = 20, n_test: int = 10, gz=(True, False, True, False)) -> dict:
    """Tiny IDX files: image i is filled with the value i, labels cycle 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for subset, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{subset}-images-idx3-ubyte"] = np.stack([np.full((28, 28), i, np.uint8) for i in range(n)])
        arrays[f"{subset}-labels-idx1-ubyte"] = np.arange(n, dtype=np.uint8) % 10
    for (name, array), zipped in zip(arrays.items(), gz):
        data = idx_bytes(array)
        if zipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.fixture
def no_system_copy(monkeypatch):
    """Hide Debian's /usr/share/datasets/fashion-mnist so only the test's files are seen."""
    monkeypatch.setattr(idx, "SYSTEM_DIRS", [])


@pytest.mark.parametrize("gz", [(True, True, True, True), (False, False, False, False), (True, False, False, True)])
def test_fmnist_from_idx_files(tmp_path, no_system_copy, gz):
    write_fmnist(tmp_path / "fashion-mnist", gz=gz)
    ds = build(tmp_path, "FashionMNIST")
    assert ds.classnames == NAMES
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (10, 10, 10)  # 2 per class: 1 held out for val
    base = tmp_path / "fashion-mnist"
    assert (base / "split_fashion_mnist.json").is_file() and (base / "images" / ".done").is_file()
    png = base / "images" / "test" / "T-shirt_top" / "00000.png"
    assert png.is_file() and ds.test[0].impath == str(png)
    pixels = np.asarray(Image.open(base / "images" / "train" / "trouser" / "00011.png"))
    assert pixels.shape == (28, 28) and (pixels == 11).all()


def test_fmnist_materializes_once_and_val_is_deterministic(tmp_path, no_system_copy):
    write_fmnist(tmp_path / "a" / "fashion-mnist", n_train=60)
    write_fmnist(tmp_path / "b" / "fashion-mnist", n_train=60)
    first = build(tmp_path / "a", "FashionMNIST")
    png = Path(first.test[0].impath)
    mtime = png.stat().st_mtime_ns
    with plpp_log() as log:
        again = build(tmp_path / "a", "FashionMNIST")
    assert png.stat().st_mtime_ns == mtime and not any("writing" in m for m in log)
    other = build(tmp_path / "b", "FashionMNIST")
    names = [Path(d.impath).name for d in first.val]
    assert names == [Path(d.impath).name for d in other.val] == [Path(d.impath).name for d in again.val]
    assert len(first.val) == 10 and len(first.train_x) == 50
    random.seed(1)
    few = build(tmp_path / "a", "FashionMNIST", shots=2, seed=1)
    assert len(few.train_x) == 20 and len(few.val) == 10


def test_fmnist_offline_without_files_is_a_clear_error(tmp_path, no_system_copy, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(idx.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError) as err:
        build(tmp_path, "FashionMNIST")
    msg = str(err.value)
    assert "could not be downloaded" in msg and "dataset-fashion-mnist" in msg
    assert str(tmp_path / "fashion-mnist") in msg


def test_fmnist_corrupt_idx(tmp_path, no_system_copy):
    base = tmp_path / "fashion-mnist"
    write_fmnist(base, gz=(False, False, False, False))
    (base / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03garbage")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte is not an unsigned-byte IDX file"):
        build(tmp_path, "FashionMNIST")
    data = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    (base / "train-images-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(DatasetError, match="truncated"):
        build(tmp_path, "FashionMNIST")
    (base / "train-images-idx3-ubyte").write_bytes(data)  # 3 images, 20 labels
    with pytest.raises(DatasetError, match="do not form an image set"):
        build(tmp_path, "FashionMNIST")
