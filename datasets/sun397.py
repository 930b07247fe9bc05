"""SUN397: 397 scenes named from their path, reversed without the letter ("b/bakery/shop" → "shop bakery")."""

import os.path as osp

from plpp.engine import DATASET_REGISTRY

from .base import SplitDataset
from .splits import DatasetError, Entry, Split, read_lines, split_trainval


def scene_name(category: str) -> str:
    """``/b/bakery/shop`` or ``b/bakery/shop`` → ``shop bakery``."""
    return " ".join(category.strip("/").split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(SplitDataset):
    """``sun397/SUN397/`` with ``split_zhou_SUN397.json`` (else ClassName.txt + Training_01/Testing_01)."""

    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    layout = ("sun397/\n"
              "  SUN397/a/abbey/sun_*.jpg ...\n"
              "  ClassName.txt, Training_01.txt, Testing_01.txt   (only to build a missing split)\n"
              "  split_zhou_SUN397.json")

    def build_split(self, root: str, image_root: str, split_path: str) -> Split:
        names_file, train_file, test_file = (osp.join(root, f) for f in
                                             ("ClassName.txt", "Training_01.txt", "Testing_01.txt"))
        self.need(split_path, image_root, names_file, train_file, test_file)
        label_of = {line.strip("/"): i for i, line in enumerate(read_lines(names_file))}
        train, val = split_trainval(self._read_list(train_file, label_of), p_val=0.2)
        return {"train": train, "val": val, "test": self._read_list(test_file, label_of)}

    @staticmethod
    def _read_list(path: str, label_of: dict[str, int]) -> list[Entry]:
        """``/a/abbey/sun_xxx.jpg`` lines → split entries."""
        entries = []
        for line in read_lines(path):
            rel = line.strip("/")
            category = osp.dirname(rel)
            if category not in label_of:
                raise DatasetError(f"{path}: category '{category}' of {rel} is not in ClassName.txt.")
            entries.append([rel, label_of[category], scene_name(category)])
        return entries
