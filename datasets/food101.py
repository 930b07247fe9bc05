"""Food-101: 101 dishes, class names are the folder names (``apple_pie``)."""

from plpp.engine import DATASET_REGISTRY

from .base import ClassFolderDataset


@DATASET_REGISTRY.register()
class Food101(ClassFolderDataset):
    """``food-101/images/<dish>/`` with ``split_zhou_Food101.json``."""

    dataset_dir = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"
    layout = ("food-101/\n"
              "  images/<dish>/<id>.jpg ...\n"
              "  split_zhou_Food101.json")
