"""Two reader skeletons so each dataset file only states its folder names and how to build a split.

:class:`SplitDataset` reads ``DATASET.ROOT/<dataset_dir>/<split_file>`` (building and saving it from
the original annotations when absent), then applies few-shot sampling and base/new selection.
:class:`ClassFolderDataset` builds the missing split from ``<image_dir>/<class>/*`` folders.
Neither is registered; the concrete readers are.
"""

from __future__ import annotations

import os.path as osp
from typing import Any, ClassVar, Optional

from plpp.engine import DatasetBase

from .fewshot import build_lists
from .splits import (
    Split,
    dataset_folder,
    load_or_build_split,
    missing_split_error,
    require_dir,
    split_class_folders,
)


class SplitDataset(DatasetBase):
    """A dataset described by a CoOp split file.

    Subclasses set ``dataset_dir`` (folder under ``DATASET.ROOT``), ``image_dir`` (folder inside it
    that split paths are relative to; ``""`` for the dataset folder itself), ``split_file`` (``None``
    when the split is always rebuilt from annotation files, as for FGVCAircraft) and ``layout``
    (the expected tree, quoted in errors). They override :meth:`build_split` when a split can be
    made from the original files.
    """

    dataset_dir = ""
    image_dir: ClassVar[str] = ""
    split_file: ClassVar[Optional[str]] = None
    layout: ClassVar[str] = ""

    def __init__(self, cfg: Any) -> None:
        name = type(self).__name__
        root = dataset_folder(cfg, type(self).dataset_dir, name, self.layout)
        self.dataset_dir = root  # absolute, as Dassl readers leave it
        self.check_layout(root)
        image_root = osp.join(root, self.image_dir) if self.image_dir else root
        if self.split_file:
            split_path = osp.join(root, self.split_file)
            split = load_or_build_split(split_path, lambda: self.build_split(root, image_root, split_path), name)
            source = f"Split file {split_path}"
        else:
            split = self.build_split(root, image_root, "")
            source = f"{name} annotation files in {root}"
        require_dir(image_root, name, self.layout)
        train, val, test = build_lists(self, cfg, split, image_root, root, source)
        super().__init__(train_x=train, val=val, test=test)

    def check_layout(self, root: str) -> None:
        """Hook: raise a :class:`DatasetError` for a known wrong layout (default: nothing to check)."""

    def build_split(self, root: str, image_root: str, split_path: str) -> Split:
        """Make the split from the dataset's original files; by default there is no way to."""
        raise missing_split_error(type(self).__name__, split_path, [split_path])

    def need(self, split_path: str, *paths: str) -> None:
        """Raise the "no split file and cannot build one" error unless every path exists."""
        if not all(osp.exists(p) for p in paths):
            raise missing_split_error(type(self).__name__, split_path, paths)


class ClassFolderDataset(SplitDataset):
    """A split-file dataset whose fallback is a 50/20/30 split of ``<image_dir>/<class>/*``.

    ``ignored`` folders are skipped and ``rename`` maps folder names to class names.
    """

    ignored: ClassVar[tuple[str, ...]] = ()
    rename: ClassVar[dict[str, str]] = {}

    def build_split(self, root: str, image_root: str, split_path: str) -> Split:
        self.need(split_path, image_root)
        return split_class_folders(image_root, ignored=self.ignored, rename=self.rename)
