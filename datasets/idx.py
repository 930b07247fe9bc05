"""Fashion-MNIST's raw files: find the four IDX files (plain or ``.gz``), download them, and decode them."""

from __future__ import annotations

import gzip
import hashlib
import os
import os.path as osp
import struct
import urllib.error
import urllib.request

import numpy as np

from plpp.engine.utils import logger, mkdir_if_missing

from .splits import DatasetError

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Debian/Ubuntu package ``dataset-fashion-mnist`` installs the four .gz files here.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
SYSTEM_DIRS = [DEBIAN_DIR]  # searched after DATASET.ROOT/fashion-mnist/
MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
]
MD5 = {  # of the .gz files, from the Fashion-MNIST README
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


def find_idx_files(folder: str) -> dict[str, str] | None:
    """The four IDX paths in ``folder`` (each plain or gzipped), or None unless all four are there."""
    found = {}
    for key, name in IDX_FILES.items():
        candidates = [osp.join(folder, name), osp.join(folder, name + ".gz")]
        path = next((p for p in candidates if osp.isfile(p)), None)
        if path is None:
            return None
        found[key] = path
    return found


def locate_idx_files(dataset_dir: str) -> dict[str, str]:
    """The IDX files: in ``dataset_dir``, else a system copy (``SYSTEM_DIRS``), else downloaded into ``dataset_dir``."""
    for folder in [dataset_dir, *SYSTEM_DIRS]:
        found = find_idx_files(folder)
        if found:
            logger.info(f"Fashion-MNIST: reading the IDX files in {folder}")
            return found
    return download_idx_files(dataset_dir)


def download_idx_files(folder: str, timeout: float = 30.0) -> dict[str, str]:
    """Download the four ``.gz`` files into ``folder`` (checked against their MD5), trying each mirror."""
    mkdir_if_missing(folder)
    errors = []
    for mirror in MIRRORS:
        try:
            for name in IDX_FILES.values():
                _download(mirror + name + ".gz", osp.join(folder, name + ".gz"), MD5[name + ".gz"], timeout)
            return find_idx_files(folder)  # type: ignore[return-value]
        except (urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(f"{mirror}: {exc}")
    raise DatasetError(
        "Fashion-MNIST files were not found and could not be downloaded (no network?):\n  "
        + "\n  ".join(errors)
        + f"\nPut train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and "
        f"t10k-labels-idx1-ubyte(.gz) in {folder}, or install the Debian/Ubuntu package dataset-fashion-mnist "
        f"(it puts them in {DEBIAN_DIR})."
    )


def _download(url: str, dst: str, md5: str, timeout: float) -> None:
    if osp.isfile(dst) and _md5(dst) == md5:
        return
    logger.info(f"Downloading {url}")
    tmp = f"{dst}.part.{os.getpid()}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
        if _md5(tmp) != md5:
            raise ValueError(f"checksum mismatch for {url}")
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_idx(path: str) -> np.ndarray:
    """Decode an unsigned-byte IDX file (gzipped when the name ends in ``.gz``) into a uint8 array."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"Cannot read IDX file {path} ({exc}); delete it and get a fresh copy.") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] == 0:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad header); delete it and get a fresh copy.")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DatasetError(f"{path} is truncated or padded: its header promises {expected} bytes of data, the file "
                           f"has {len(data) - header}. Delete it and get a fresh copy.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_pair(images_path: str, labels_path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W)`` and labels ``(N,)`` of one set, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{images_path} ({images.shape}) and {labels_path} ({labels.shape}) do not form an "
                           "image set: expected (N, H, W) images and N labels.")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DatasetError(f"{labels_path} has label {int(labels.max())}; Fashion-MNIST labels are 0..9.")
    return images, labels
