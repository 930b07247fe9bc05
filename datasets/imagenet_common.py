"""What the ImageNet family shares: ``classnames.txt`` and one-folder-per-class (wnid) listings."""

from __future__ import annotations

import os.path as osp
from collections.abc import Iterable
from typing import Any

from plpp.engine import DatasetBase
from plpp.engine.utils import logger

from .splits import DatasetError, Entry, dataset_folder, list_class_folders, list_images, require_dir, to_datums

CLASSNAMES_FILE = "classnames.txt"


def read_classnames(path: str) -> dict[str, str]:
    """``<wnid> <class name>`` lines → an ordered ``wnid → name`` dict (the name is all after the first space)."""
    if not osp.isfile(path):
        raise DatasetError(f"Class-name file not found: {path}. Each ImageNet-family folder needs a copy of "
                           "CoOp's classnames.txt ('n01440764 tench' lines); see docs/DATASETS.md.")
    names: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            wnid, _, name = line.strip().partition(" ")
            if not name.strip() or wnid in names:
                problem = "has no class name" if not name.strip() else f"repeats {wnid}"
                raise DatasetError(f"{path}, line {number} {problem}; every line must be '<wnid> <class name>' "
                                   "with each wnid once.")
            names[wnid] = name.strip()
    return names


def find_classnames(dataset_dir: str) -> str:
    """``<dataset_dir>/classnames.txt``, else the one in the sibling ``imagenet/`` folder (logged)."""
    own = osp.join(dataset_dir, CLASSNAMES_FILE)
    shared = osp.join(osp.dirname(dataset_dir), "imagenet", CLASSNAMES_FILE)
    if not osp.isfile(own) and osp.isfile(shared):
        logger.info(f"{own} not found; using {shared}")
        return shared
    return own


def check_folders_named(folders: Iterable[str], classnames: dict[str, str], folder_dir: str, names_path: str) -> None:
    """Every class folder must have a line in the class-name file."""
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise DatasetError(f"{len(unknown)} folder(s) in {folder_dir} have no line in {names_path} "
                           f"(e.g. {', '.join(unknown[:3])}). The class-name file does not match the folders: "
                           "use CoOp's classnames.txt, with one '<wnid> <name>' line per class folder.")


def warn_ignored_options(cfg: Any, name: str) -> None:
    """Test-only sets ignore NUM_SHOTS and SUBSAMPLE_CLASSES, as in CoOp; say so when they are set."""
    if int(cfg.DATASET.NUM_SHOTS) >= 1 or cfg.DATASET.get("SUBSAMPLE_CLASSES", "all") != "all":
        logger.info(f"{name} is a test-only dataset: DATASET.NUM_SHOTS and SUBSAMPLE_CLASSES are ignored")


class WnidTestSet(DatasetBase):
    """A test-only ImageNet variant stored as ``<image_dir>/<wnid>/*``; labels follow the sorted folders.

    The same list is passed as ``train_x`` and ``test`` (there is no val), as CoOp does.
    """

    dataset_dir = ""
    image_dir = ""
    layout = ""

    def __init__(self, cfg: Any) -> None:
        name = type(self).__name__
        root = dataset_folder(cfg, type(self).dataset_dir, name, self.layout)
        self.dataset_dir = root
        names_path = find_classnames(root)
        classnames = read_classnames(names_path)
        image_root = require_dir(osp.join(root, self.image_dir), name, self.layout)
        folders = list_class_folders(image_root)
        if not folders:
            raise DatasetError(f"{name}: no class folders in {image_root}; expected {image_root}/<wnid>/<image>.")
        check_folders_named(folders, classnames, image_root, names_path)
        entries: list[Entry] = [[f"{wnid}/{im}", label, classnames[wnid]]
                                for label, wnid in enumerate(folders)
                                for im in list_images(osp.join(image_root, wnid))]
        warn_ignored_options(cfg, name)
        data = to_datums(entries, image_root, image_root)
        super().__init__(train_x=data, test=data)
