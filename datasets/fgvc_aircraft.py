"""FGVC-Aircraft (2013b), variant level: 100 classes such as "F-16A/B". No split JSON: the official
``images_variant_{train,val,test}.txt`` lists are the split."""

import os.path as osp

from plpp.engine import DATASET_REGISTRY

from .base import SplitDataset
from .splits import DatasetError, Entry, Split, read_lines


@DATASET_REGISTRY.register()
class FGVCAircraft(SplitDataset):
    """``fgvc_aircraft/`` = the ``data/`` folder of fgvc-aircraft-2013b."""

    dataset_dir = "fgvc_aircraft"
    image_dir = "images"
    split_file = None
    layout = ("fgvc_aircraft/            (the data/ folder of fgvc-aircraft-2013b)\n"
              "  images/1025794.jpg ...\n"
              "  variants.txt\n"
              "  images_variant_train.txt, images_variant_val.txt, images_variant_test.txt")

    def build_split(self, root: str, image_root: str, split_path: str) -> Split:
        files = {k: osp.join(root, f"images_variant_{k}.txt") for k in ("train", "val", "test")}
        variants_file = osp.join(root, "variants.txt")
        missing = [p for p in [variants_file, *files.values()] if not osp.isfile(p)]
        if missing:
            raise DatasetError(f"FGVCAircraft: missing {', '.join(missing)}. Point DATASET.ROOT's fgvc_aircraft/ "
                               "at the data/ folder of fgvc-aircraft-2013b.")
        label_of = {name: i for i, name in enumerate(read_lines(variants_file))}
        return {k: self._read_list(path, label_of) for k, path in files.items()}

    @staticmethod
    def _read_list(path: str, label_of: dict[str, int]) -> list[Entry]:
        """``<image id> <variant>`` lines → split entries."""
        entries = []
        for line in read_lines(path):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                raise DatasetError(f"{path}: variant '{variant}' (image {image_id}) is not in variants.txt.")
            entries.append([f"{image_id}.jpg", label_of[variant], variant])
        return entries
