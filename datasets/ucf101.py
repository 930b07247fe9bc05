"""UCF101 middle frames: 101 actions, CamelCase split on capitals and joined by "_" ("Apply_Eye_Makeup")."""

import os.path as osp
import re

from plpp.engine import DATASET_REGISTRY

from .base import SplitDataset
from .splits import DatasetError, Entry, Split, read_lines, split_trainval


def action_name(camel: str) -> str:
    """``ApplyEyeMakeup`` → ``Apply_Eye_Makeup`` (also the folder name under UCF-101-midframes/)."""
    return "_".join(re.findall("[A-Z][^A-Z]*", camel))


@DATASET_REGISTRY.register()
class UCF101(SplitDataset):
    """``ucf101/UCF-101-midframes/<Action_Name>/`` with ``split_zhou_UCF101.json`` (else ucfTrainTestlist/)."""

    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    layout = ("ucf101/\n"
              "  UCF-101-midframes/Apply_Eye_Makeup/v_ApplyEyeMakeup_g01_c01.jpg ...\n"
              "  ucfTrainTestlist/classInd.txt, trainlist01.txt, testlist01.txt   (only to build a missing split)\n"
              "  split_zhou_UCF101.json")

    def build_split(self, root: str, image_root: str, split_path: str) -> Split:
        lists = osp.join(root, "ucfTrainTestlist")
        ind, train_file, test_file = (osp.join(lists, f) for f in ("classInd.txt", "trainlist01.txt", "testlist01.txt"))
        self.need(split_path, image_root, ind, train_file, test_file)
        label_of = {}
        for line in read_lines(ind):
            number, _, action = line.partition(" ")
            label_of[action.strip()] = int(number) - 1
        train, val = split_trainval(self._read_list(train_file, label_of), p_val=0.2)
        return {"train": train, "val": val, "test": self._read_list(test_file, label_of)}

    @staticmethod
    def _read_list(path: str, label_of: dict[str, int]) -> list[Entry]:
        """``Action/v_Action_g01_c01.avi [label]`` lines → entries for the matching middle frames."""
        entries = []
        for line in read_lines(path):
            action, _, video = line.split(" ")[0].partition("/")
            if action not in label_of:
                raise DatasetError(f"{path}: action '{action}' is not in classInd.txt.")
            name = action_name(action)
            entries.append([f"{name}/{osp.splitext(video)[0]}.jpg", label_of[action], name])
        return entries
