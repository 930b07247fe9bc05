"""Dataset readers for PLPP. Importing this package registers every reader in ``DATASET_REGISTRY``
under the names CoOp users type (``DATASET.NAME``), plus ``FashionMNIST`` for demos and tests, and
``ProxyWorld`` and ``ProxyWorldDrawing``, the synthetic datasets of the proxy world (docs/PROXY.md)."""

from . import (  # noqa: F401  (imported for their registration side effect)
    caltech101,
    dtd,
    eurosat,
    fashion_mnist,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    proxy_world,
    stanford_cars,
    sun397,
    ucf101,
)
from .splits import DatasetError

__all__ = ["DatasetError"]
