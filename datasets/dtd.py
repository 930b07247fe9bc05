"""Describable Textures (DTD): 47 textures, class names are the folder names (``banded``)."""

from plpp.engine import DATASET_REGISTRY

from .base import ClassFolderDataset


@DATASET_REGISTRY.register()
class DescribableTextures(ClassFolderDataset):
    """``dtd/images/<texture>/`` with ``split_zhou_DescribableTextures.json``."""

    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    layout = ("dtd/\n"
              "  images/<texture>/<texture>_0001.jpg ...\n"
              "  split_zhou_DescribableTextures.json")
