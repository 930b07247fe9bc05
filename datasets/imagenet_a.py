"""ImageNet-A (test only): 200 classes in ``imagenet-a/<wnid>/``, labelled 0..199 in sorted wnid order."""

from plpp.engine import DATASET_REGISTRY

from .imagenet_common import WnidTestSet


@DATASET_REGISTRY.register()
class ImageNetA(WnidTestSet):
    """``imagenet-adversarial/imagenet-a/<wnid>/`` + ``classnames.txt`` (README.txt is skipped)."""

    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"
    layout = ("imagenet-adversarial/\n"
              "  imagenet-a/n01498041/*.jpg ...   (200 folders, README.txt)\n"
              "  classnames.txt")
