"""The one import surface that trainers and datasets use, on real Dassl or the built-in engine.

``PLPP_ENGINE=auto`` (default) uses Dassl when it can be imported, ``dassl`` requires it and
``builtin`` never uses it.  Optimizer and LR-schedule builders, checkpoint I/O and the config keys
this project adds are always ours: they avoid Dassl 0.6.3's breakages on torch ≥ 2.7.
"""

from __future__ import annotations

import os

from .config import add_engine_keys
from .optim import build_lr_scheduler, build_optimizer


def _choose_backend() -> str:
    choice = os.environ.get("PLPP_ENGINE", "auto").strip().lower() or "auto"
    if choice not in ("auto", "dassl", "builtin"):
        raise ValueError(f"PLPP_ENGINE='{choice}' is not valid; use auto, dassl or builtin")
    if choice == "builtin":
        return "builtin"
    try:
        import dassl  # noqa: F401
        import dassl.engine  # noqa: F401
    except ImportError as exc:
        if choice == "dassl":
            raise ImportError(f"PLPP_ENGINE=dassl but Dassl cannot be imported ({exc}). Install Dassl.pytorch "
                              "or set PLPP_ENGINE=builtin.") from exc
        return "builtin"
    return "dassl"


BACKEND = _choose_backend()

if BACKEND == "dassl":  # pragma: no cover - Dassl is not installable in CI
    from dassl.config import get_cfg_default as _dassl_cfg_default
    from dassl.data import DataManager
    from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
    from dassl.data.transforms import build_transform
    from dassl.engine import TRAINER_REGISTRY, TrainerX
    from dassl.engine import build_trainer as _dassl_build_trainer
    from dassl.metrics import compute_accuracy
    from dassl.utils import set_random_seed

    from .utils import collect_env_info, setup_logger

    def get_cfg_default():
        """Dassl's defaults plus the keys this project adds."""
        return add_engine_keys(_dassl_cfg_default())

    def build_trainer(cfg):
        return _dassl_build_trainer(cfg)

else:
    from .config import get_cfg_default
    from .data import DataManager, DatasetBase, Datum, build_transform
    from .registry import DATASET_REGISTRY, TRAINER_REGISTRY
    from .trainer import TrainerX, build_trainer
    from .utils import collect_env_info, compute_accuracy, set_random_seed, setup_logger

__all__ = [
    "BACKEND", "DATASET_REGISTRY", "DataManager", "DatasetBase", "Datum", "TRAINER_REGISTRY", "TrainerX",
    "add_engine_keys", "build_lr_scheduler", "build_optimizer", "build_trainer", "build_transform",
    "collect_env_info", "compute_accuracy", "get_cfg_default", "set_random_seed", "setup_logger",
]
