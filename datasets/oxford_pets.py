"""Oxford-IIIT Pets: 37 breeds named from the file names (``american_pit_bull_terrier``)."""

import os.path as osp

from plpp.engine import DATASET_REGISTRY

from .base import SplitDataset
from .splits import DatasetError, Entry, Split, read_lines, split_trainval


def breed_of(image_name: str) -> str:
    """``Abyssinian_100`` → ``abyssinian``: the file name without its number, lower-cased."""
    return "_".join(image_name.split("_")[:-1]).lower()


@DATASET_REGISTRY.register()
class OxfordPets(SplitDataset):
    """``oxford_pets/images/`` with ``split_zhou_OxfordPets.json`` (else ``annotations/`` lists, 20% val)."""

    dataset_dir = "oxford_pets"
    image_dir = "images"
    split_file = "split_zhou_OxfordPets.json"
    layout = ("oxford_pets/\n"
              "  images/Abyssinian_1.jpg ...\n"
              "  annotations/trainval.txt, annotations/test.txt\n"
              "  split_zhou_OxfordPets.json")

    def build_split(self, root: str, image_root: str, split_path: str) -> Split:
        files = [osp.join(root, "annotations", f) for f in ("trainval.txt", "test.txt")]
        self.need(split_path, image_root, *files)
        trainval, test = (self._read_list(f) for f in files)
        train, val = split_trainval(trainval, p_val=0.2)
        return {"train": train, "val": val, "test": test}

    @staticmethod
    def _read_list(path: str) -> list[Entry]:
        """``<image> <class id 1..37> <species> <breed id>`` lines → split entries."""
        entries = []
        for line in read_lines(path):
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise DatasetError(f"{path}: line '{line}' is not '<image> <class id> <species> <breed id>'.")
            entries.append([parts[0] + ".jpg", int(parts[1]) - 1, breed_of(parts[0])])
        return entries
