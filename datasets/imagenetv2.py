"""ImageNetV2 matched-frequency (test only): folders ``0``..``999`` named by the *line order* of classnames.txt."""

import os.path as osp

from plpp.engine import DATASET_REGISTRY, DatasetBase

from .imagenet_common import find_classnames, read_classnames, warn_ignored_options
from .splits import DatasetError, dataset_folder, list_class_folders, list_images, require_dir, to_datums


@DATASET_REGISTRY.register()
class ImageNetV2(DatasetBase):
    """``imagenetv2/imagenetv2-matched-frequency-format-val/<label>/`` + ``classnames.txt`` (sorted-wnid order)."""

    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"
    layout = ("imagenetv2/\n"
              "  imagenetv2-matched-frequency-format-val/0/*.jpeg ... 999/\n"
              "  classnames.txt   (in sorted-wnid order: line k names folder k)")

    def __init__(self, cfg) -> None:
        root = dataset_folder(cfg, type(self).dataset_dir, "ImageNetV2", self.layout)
        self.dataset_dir = root
        names_path = find_classnames(root)
        names = list(read_classnames(names_path).values())
        image_root = require_dir(osp.join(root, self.image_dir), "ImageNetV2", self.layout)
        folders = set(list_class_folders(image_root))
        expected = {str(k) for k in range(len(names))}
        if folders != expected:
            odd = sorted(folders - expected)[:3]
            missing = sorted(expected - folders, key=int)[:3]
            raise DatasetError(
                f"ImageNetV2: the folders in {image_root} do not match {names_path}: it has {len(names)} lines, so "
                f"folders 0..{len(names) - 1} are expected (missing e.g. {missing}, unexpected e.g. {odd}). "
                "Use the matched-frequency release and CoOp's classnames.txt."
            )
        entries = [[f"{k}/{im}", k, names[k]] for k in range(len(names))
                   for im in list_images(osp.join(image_root, str(k)))]
        warn_ignored_options(cfg, "ImageNetV2")
        data = to_datums(entries, image_root, image_root)
        super().__init__(train_x=data, test=data)
