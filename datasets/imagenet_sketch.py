"""ImageNet-Sketch (test only): 1000 classes in ``images/<wnid>/``."""

from plpp.engine import DATASET_REGISTRY

from .imagenet_common import WnidTestSet


@DATASET_REGISTRY.register()
class ImageNetSketch(WnidTestSet):
    """``imagenet-sketch/images/<wnid>/`` + ``classnames.txt``."""

    dataset_dir = "imagenet-sketch"
    image_dir = "images"
    layout = ("imagenet-sketch/\n"
              "  images/n01440764/sketch_0.JPEG ...\n"
              "  classnames.txt")
