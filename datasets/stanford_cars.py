"""Stanford Cars: 196 models, named year first ("2012 Tesla Model S Sedan").

Split paths are relative to the dataset folder (``cars_train/00001.jpg``), not to an image folder.
"""

import os.path as osp

from plpp.engine import DATASET_REGISTRY

from .base import SplitDataset
from .splits import DatasetError, Entry, Split, import_loadmat, split_trainval


def year_first(devkit_name: str) -> str:
    """``Tesla Model S Sedan 2012`` → ``2012 Tesla Model S Sedan``."""
    words = devkit_name.split(" ")
    return " ".join([words[-1]] + words[:-1])


@DATASET_REGISTRY.register()
class StanfordCars(SplitDataset):
    """``stanford_cars/{cars_train,cars_test}/`` with ``split_zhou_StanfordCars.json`` (else the devkit)."""

    dataset_dir = "stanford_cars"
    image_dir = ""
    split_file = "split_zhou_StanfordCars.json"
    layout = ("stanford_cars/\n"
              "  cars_train/00001.jpg ...   (not cars_train/cars_train/, as some mirrors nest it)\n"
              "  cars_test/00001.jpg ...\n"
              "  devkit/cars_meta.mat, devkit/cars_train_annos.mat\n"
              "  cars_test_annos_withlabels.mat\n"
              "  split_zhou_StanfordCars.json")

    def check_layout(self, root: str) -> None:
        for folder in ("cars_train", "cars_test"):
            nested = osp.join(root, folder, folder)
            if osp.isdir(nested):
                raise DatasetError(f"StanfordCars: images are nested one level too deep in {nested}. Split paths "
                                   f"are relative to {root} ('{folder}/00001.jpg'): move the images up into "
                                   f"{osp.join(root, folder)} and remove the empty inner folder.")

    def build_split(self, root: str, image_root: str, split_path: str) -> Split:
        meta = osp.join(root, "devkit", "cars_meta.mat")
        train_annos = osp.join(root, "devkit", "cars_train_annos.mat")
        test_annos = osp.join(root, "cars_test_annos_withlabels.mat")
        if not osp.exists(test_annos) and osp.exists(osp.join(root, "devkit", "cars_test_annos_withlabels.mat")):
            test_annos = osp.join(root, "devkit", "cars_test_annos_withlabels.mat")
        self.need(split_path, meta, train_annos, test_annos)
        loadmat = import_loadmat('the StanfordCars devkit (.mat files)')  # only this fallback needs scipy

        try:
            names = [str(n[0]) for n in loadmat(meta)["class_names"][0]]
            trainval = self._read_annos(loadmat(train_annos), "cars_train", names)
            test = self._read_annos(loadmat(test_annos), "cars_test", names)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise DatasetError(f"StanfordCars: the devkit .mat files in {root} are not in the expected format "
                               f"({exc}). Download split_zhou_StanfordCars.json instead.") from exc
        train, val = split_trainval(trainval, p_val=0.2)
        return {"train": train, "val": val, "test": test}

    @staticmethod
    def _read_annos(mat: dict, folder: str, names: list[str]) -> list[Entry]:
        entries = []
        for anno in mat["annotations"][0]:
            label = int(anno["class"][0, 0]) - 1
            entries.append([f"{folder}/{anno['fname'][0]}", label, year_first(names[label])])
        return entries
