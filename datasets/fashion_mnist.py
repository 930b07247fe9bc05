"""Fashion-MNIST as an image-folder dataset: the embedded default for demos and tests.

The IDX files are taken from ``DATASET.ROOT/fashion-mnist/``, else from Debian's
``/usr/share/datasets/fashion-mnist/`` (package ``dataset-fashion-mnist``), else downloaded. The
70,000 images are written once as PNGs, ``fashion-mnist/images/{train,test}/<class>/<index>.png``,
with ``split_fashion_mnist.json`` (CoOp's split format) and an ``images/.done`` marker. Val is 10% of
each training class, drawn with a private RNG; test is the official 10,000-image test set.
"""

from __future__ import annotations

import os
import os.path as osp
import random
import time
from typing import Any

import numpy as np
from PIL import Image

from plpp.engine import DATASET_REGISTRY, DatasetBase
from plpp.engine.utils import logger, mkdir_if_missing, write_text_atomic

from .fewshot import build_lists
from .idx import locate_idx_files, read_pair
from .splits import SPLIT_SEED, DatasetError, Split, read_split, write_json_quietly

CLASSNAMES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
              "ankle boot"]
SPLIT_FILE = "split_fashion_mnist.json"
DONE_MARKER = ".done"
VAL_FRACTION = 0.1


def class_folder(classname: str) -> str:
    """A file-system-safe folder name: ``T-shirt/top`` → ``T-shirt_top``, ``ankle boot`` → ``ankle_boot``."""
    return classname.replace("/", "_").replace(" ", "_")


def _write_png(pixels: np.ndarray, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}.png"
    Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def _write_set(images: np.ndarray, labels: np.ndarray, image_root: str, subset: str) -> list[list]:
    """PNGs of one IDX set; returns ``[relative_path, label, classname]`` entries in file order."""
    for name in CLASSNAMES:
        mkdir_if_missing(osp.join(image_root, subset, class_folder(name)))
    entries = []
    for i, (pixels, label) in enumerate(zip(images, labels)):
        label = int(label)
        rel = f"{subset}/{class_folder(CLASSNAMES[label])}/{i:05d}.png"
        _write_png(pixels, osp.join(image_root, rel))
        entries.append([rel, label, CLASSNAMES[label]])
    return entries


def hold_out_val(entries: list[list], fraction: float = VAL_FRACTION) -> tuple[list[list], list[list]]:
    """Move ``fraction`` of each class (at least one image when it has two) to val, with a private RNG."""
    rng = random.Random(SPLIT_SEED)
    train, val = [], []
    for label in range(len(CLASSNAMES)):
        items = [e for e in entries if e[1] == label]
        rng.shuffle(items)
        n_val = max(round(len(items) * fraction), 1 if len(items) >= 2 else 0)
        chosen = {e[0] for e in items[:n_val]}
        val.extend(e for e in entries if e[0] in chosen)
        train.extend(e for e in entries if e[1] == label and e[0] not in chosen)
    return train, val


def materialize(dataset_dir: str) -> Split:
    """Write the PNGs and the split file once (guarded by ``images/.done``) and return the split."""
    image_root = osp.join(dataset_dir, "images")
    split_path = osp.join(dataset_dir, SPLIT_FILE)
    if osp.isfile(osp.join(image_root, DONE_MARKER)) and osp.isfile(split_path):
        return read_split(split_path)
    src = locate_idx_files(dataset_dir)
    train_set = read_pair(src["train_images"], src["train_labels"], len(CLASSNAMES))
    test_set = read_pair(src["test_images"], src["test_labels"], len(CLASSNAMES))
    start = time.perf_counter()
    logger.info(f"Fashion-MNIST: writing {len(train_set[0]) + len(test_set[0])} PNGs under {image_root} (once)")
    try:
        train, val = hold_out_val(_write_set(*train_set, image_root, "train"))
        test = _write_set(*test_set, image_root, "test")
        split: Split = {"train": train, "val": val, "test": test}
        if not write_json_quietly(split, split_path, "Fashion-MNIST split"):
            raise OSError(f"cannot write {split_path}")
        write_text_atomic(f"{len(train) + len(val)} train, {len(test)} test\n", osp.join(image_root, DONE_MARKER))
    except OSError as exc:
        raise DatasetError(f"Fashion-MNIST: cannot write the images under {image_root} ({exc}). Set DATASET.ROOT "
                           "to a writable folder.") from exc
    logger.info(f"Fashion-MNIST: wrote the images in {time.perf_counter() - start:.1f} s")
    return split


@DATASET_REGISTRY.register()
class FashionMNIST(DatasetBase):
    """``fashion-mnist/`` under ``DATASET.ROOT``: 10 clothing classes, 54,000/6,000/10,000 images."""

    dataset_dir = "fashion-mnist"
    layout = ("fashion-mnist/\n"
              "  train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz),\n"
              "  t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz)   (or apt install dataset-fashion-mnist)\n"
              "  images/{train,test}/<class>/<index>.png, split_fashion_mnist.json   (written on first use)")

    def __init__(self, cfg: Any) -> None:
        root = str(cfg.DATASET.ROOT or "")
        if not root:
            raise DatasetError("FashionMNIST: DATASET.ROOT is empty. Pass --root DIR; the images are written to "
                               "DIR/fashion-mnist/.")
        dataset_dir = osp.join(osp.abspath(osp.expanduser(root)), type(self).dataset_dir)
        self.dataset_dir = dataset_dir
        split = materialize(dataset_dir)
        image_root = osp.join(dataset_dir, "images")
        train, val, test = build_lists(self, cfg, split, image_root, dataset_dir,
                                       f"Split file {osp.join(dataset_dir, SPLIT_FILE)}")
        super().__init__(train_x=train, val=val, test=test)
