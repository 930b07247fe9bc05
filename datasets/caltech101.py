"""Caltech-101 (CoOp's 100-class version: the background and Faces_easy folders are left out)."""

from plpp.engine import DATASET_REGISTRY

from .base import ClassFolderDataset


@DATASET_REGISTRY.register()
class Caltech101(ClassFolderDataset):
    """``caltech-101/101_ObjectCategories/<category>/`` with ``split_zhou_Caltech101.json``."""

    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    ignored = ("BACKGROUND_Google", "Faces_easy")
    rename = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
    layout = ("caltech-101/\n"
              "  101_ObjectCategories/<category>/image_0001.jpg ...\n"
              "  split_zhou_Caltech101.json")
