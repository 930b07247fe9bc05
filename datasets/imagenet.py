"""ImageNet (ILSVRC-2012): train on ``images/train/<wnid>/``, test (and val) on ``images/val/<wnid>/``.

There is no official split file. The first run lists the folders (images in directory order, as
Dassl does, so few-shot picks match CoOp on the same disk) and freezes that listing in
``split_plpp_ImageNet.json``; later runs read it, and few-shot picks stay fixed even if the data is
copied elsewhere. Delete the file to list the folders again.
"""

from __future__ import annotations

import os.path as osp
from typing import Any

from plpp.engine import DATASET_REGISTRY, DatasetBase
from plpp.engine.utils import listdir_nohidden, logger

from .fewshot import build_lists
from .imagenet_common import CLASSNAMES_FILE, check_folders_named, read_classnames
from .splits import (
    IMAGE_EXTENSIONS,
    DatasetError,
    Split,
    dataset_folder,
    list_class_folders,
    list_images,
    read_split,
    require_dir,
    write_json_quietly,
)

LISTING_FILE = "split_plpp_ImageNet.json"


def check_val_layout(val_dir: str) -> None:
    """Refuse ``images/val/`` holding loose images: CoOp would read it as an empty test set."""
    loose = list_images(val_dir)
    if loose:
        raise DatasetError(
            f"ImageNet: {val_dir} holds {len(loose)} images directly (e.g. {loose[0]}), not one folder per "
            "class. The val images are the test set and must be in wnid folders, images/val/<wnid>/*.JPEG, "
            "as in images/train/ (otherwise the test set would silently be empty). Move each image into its "
            "class folder, e.g. with the valprep.sh script of PyTorch's ImageNet example, then run "
            "`python -m plpp.datasets.check --root ROOT --dataset ImageNet`."
        )


def _listing(folder: str) -> list[str]:
    """Image names in directory order (Dassl's order, which its few-shot picks depend on)."""
    return [f for f in listdir_nohidden(folder) if f.lower().endswith(IMAGE_EXTENSIONS)]


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    """``imagenet/images/{train,val}/<wnid>/`` + ``classnames.txt``; labels follow the sorted train folders."""

    dataset_dir = "imagenet"
    layout = ("imagenet/\n"
              "  images/train/n01440764/*.JPEG ...   (1000 wnid folders)\n"
              "  images/val/n01440764/*.JPEG ...     (the same wnid folders, NOT 50,000 loose files)\n"
              "  classnames.txt                       ('n01440764 tench' lines)")

    def __init__(self, cfg: Any) -> None:
        root = dataset_folder(cfg, type(self).dataset_dir, "ImageNet", self.layout)
        self.dataset_dir = root
        image_root = osp.join(root, "images")
        listing = osp.join(root, LISTING_FILE)
        if osp.isfile(listing):
            split = read_split(listing, required=("train", "test"))  # ImageNet's val is its test set
        else:
            split = self.scan_folders(image_root)
            write_json_quietly(split, listing, "ImageNet image listing", compact=True)
        train, val, test = build_lists(self, cfg, split, image_root, root, f"ImageNet listing {listing}",
                                       val_is_test=True)
        super().__init__(train_x=train, val=val, test=test)

    def scan_folders(self, image_root: str) -> Split:
        """Train and test entries from the wnid folders, after checking the layout and class names."""
        train_dir = require_dir(osp.join(image_root, "train"), "ImageNet", self.layout)
        val_dir = require_dir(osp.join(image_root, "val"), "ImageNet", self.layout)
        check_val_layout(val_dir)
        names_path = osp.join(self.dataset_dir, CLASSNAMES_FILE)
        classnames = read_classnames(names_path)
        wnids = list_class_folders(train_dir)
        val_wnids = list_class_folders(val_dir)
        if not wnids or not val_wnids:
            empty = train_dir if not wnids else val_dir
            raise DatasetError(f"ImageNet: no class folders in {empty}; expected {empty}/<wnid>/*.JPEG.")
        check_folders_named(wnids, classnames, train_dir, names_path)
        label_of = {wnid: i for i, wnid in enumerate(wnids)}
        extra = [w for w in val_wnids if w not in label_of]
        if extra:
            raise DatasetError(f"ImageNet: {val_dir} has class folders that images/train/ lacks "
                               f"(e.g. {', '.join(extra[:3])}); train and val must have the same wnid folders.")
        if len(val_wnids) < len(wnids):
            logger.warning(f"ImageNet: {val_dir} has {len(val_wnids)} class folders, train has {len(wnids)}")
        logger.info(f"Listing ImageNet images under {image_root} (once; saved to {LISTING_FILE})")
        split: Split = {"train": [], "val": [], "test": []}
        for key, folder, classes in (("train", "train", wnids), ("test", "val", val_wnids)):
            for wnid in classes:
                split[key].extend([f"{folder}/{wnid}/{im}", label_of[wnid], classnames[wnid]]
                                  for im in _listing(osp.join(image_root, folder, wnid)))
        return split
