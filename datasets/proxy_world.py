"""The proxy world's datasets: synthetic photos (``ProxyWorld``) and drawings (``ProxyWorldDrawing``).

Both are written by ``python -m plpp.tools.proxy_world --out DIR`` under ``DIR/data`` (the ``--root``)
in CoOp's split layout, 48 classes ("red circle", ...) with the 24 base classes first. They are a
controlled world for developing and testing methods with the proxy CLIP, never a benchmark.
"""

from __future__ import annotations

import os.path as osp
from typing import Any

from plpp.engine import DATASET_REGISTRY

from .base import SplitDataset
from .splits import DatasetError, Split

BUILD_HINT = ("It is written by `python -m plpp.tools.proxy_world --out DIR`; pass --root DIR/data "
              "(and MODEL.BACKBONE.NAME DIR/proxy-clip.pt). See docs/PROXY.md.")


class _ProxyDataset(SplitDataset):
    """A proxy-world style: ``<dataset_dir>/images/<class>/*.png`` with ``split_<dataset_dir>.json``."""

    image_dir = "images"

    def __init__(self, cfg: Any) -> None:
        root = str(cfg.DATASET.ROOT or "")
        folder = osp.join(osp.abspath(osp.expanduser(root)), self.dataset_dir) if root else ""
        if not folder or not osp.isdir(folder):
            where = f"{folder} does not exist" if folder else "DATASET.ROOT is empty"
            raise DatasetError(f"{type(self).__name__}: {where}. {BUILD_HINT}")
        super().__init__(cfg)

    def build_split(self, root: str, image_root: str, split_path: str) -> Split:
        raise DatasetError(f"{type(self).__name__}: split file not found: {split_path}. The build that wrote "
                           f"{root} is incomplete; run the tool again. {BUILD_HINT}")


@DATASET_REGISTRY.register()
class ProxyWorld(_ProxyDataset):
    """``proxy_world/``: filled shapes on plain backgrounds (the style the proxy CLIP mostly saw)."""

    dataset_dir = "proxy_world"
    split_file = "split_proxy_world.json"
    layout = "proxy_world/\n  images/<colour>_<shape>/<split>_<index>.png\n  split_proxy_world.json"


@DATASET_REGISTRY.register()
class ProxyWorldDrawing(_ProxyDataset):
    """``proxy_world_drawing/``: the same classes as coloured outlines on paper (cross-domain target)."""

    dataset_dir = "proxy_world_drawing"
    split_file = "split_proxy_world_drawing.json"
    layout = "proxy_world_drawing/\n  images/<colour>_<shape>/<split>_<index>.png\n  split_proxy_world_drawing.json"
