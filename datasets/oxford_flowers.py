"""Oxford Flowers-102: class names from ``cat_to_name.json`` ("pink primrose")."""

import os.path as osp

from plpp.engine import DATASET_REGISTRY
from plpp.engine.utils import read_json

from .base import SplitDataset
from .splits import DatasetError, Split, import_loadmat, split_groups


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitDataset):
    """``oxford_flowers/jpg/`` with ``split_zhou_OxfordFlowers.json`` (else 50/20/30 of ``imagelabels.mat``)."""

    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    layout = ("oxford_flowers/\n"
              "  jpg/image_00001.jpg ...\n"
              "  imagelabels.mat, cat_to_name.json\n"
              "  split_zhou_OxfordFlowers.json")

    def build_split(self, root: str, image_root: str, split_path: str) -> Split:
        label_file, names_file = osp.join(root, "imagelabels.mat"), osp.join(root, "cat_to_name.json")
        self.need(split_path, image_root, label_file, names_file)
        loadmat = import_loadmat('imagelabels.mat')  # only this fallback needs scipy

        try:
            labels = [int(y) for y in loadmat(label_file)["labels"].ravel()]
        except (KeyError, ValueError, TypeError) as exc:
            raise DatasetError(f"{label_file} has no 'labels' array ({exc}); download it again.") from exc
        names = read_json(names_file)
        by_label: dict[int, list[str]] = {}
        for i, y in enumerate(labels):  # image_00001.jpg has the first label
            by_label.setdefault(y, []).append(f"image_{i + 1:05d}.jpg")
        missing = [y for y in by_label if str(y) not in names]
        if missing:
            raise DatasetError(f"{names_file} has no name for label(s) {missing[:5]}; it must map '1'..'102' "
                               "to flower names.")
        groups = [(y - 1, names[str(y)], by_label[y]) for y in sorted(by_label)]
        return split_groups(groups, image_root)
