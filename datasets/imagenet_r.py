"""ImageNet-R (test only): 200 classes in ``imagenet-r/<wnid>/``, labelled 0..199 in sorted wnid order."""

from plpp.engine import DATASET_REGISTRY

from .imagenet_common import WnidTestSet


@DATASET_REGISTRY.register()
class ImageNetR(WnidTestSet):
    """``imagenet-rendition/imagenet-r/<wnid>/`` + ``classnames.txt`` (README.txt is skipped)."""

    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
    layout = ("imagenet-rendition/\n"
              "  imagenet-r/n01443537/*.jpg ...   (200 folders, README.txt)\n"
              "  classnames.txt")
