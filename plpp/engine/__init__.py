"""The one import surface that trainers and datasets use, on real Dassl or the built-in engine.

``PLPP_ENGINE=auto`` (default) uses Dassl when it can be imported, ``dassl`` requires it and
``builtin`` never uses it.  Optimizer and LR-schedule builders, checkpoint I/O and the config keys
this project adds are always ours: they avoid Dassl 0.6.3's breakages on torch ≥ 2.7.

On Dassl, ``TrainerX`` is a subclass of Dassl's with our checkpointing, training step and
``test()``, and the registries are Dassl's own (ours register under names still free there); see
:mod:`plpp.engine.dassl_compat` and ``docs/INTEGRATION.md``.
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
    from dassl.config import cfg_default as _dassl_cfg_node
    from dassl.config import get_cfg_default as _dassl_cfg_default
    from dassl.data import DataManager
    from dassl.data.datasets import DATASET_REGISTRY as _DASSL_DATASETS
    from dassl.data.datasets import DatasetBase, Datum
    from dassl.data.transforms import build_transform
    from dassl.engine import TRAINER_REGISTRY as _DASSL_TRAINERS
    from dassl.engine import TrainerX as _DasslTrainerX
    from dassl.engine import build_trainer as _dassl_build_trainer
    from dassl.metrics import compute_accuracy
    from dassl.utils import set_random_seed

    from . import dassl_compat as _compat
    from .utils import collect_env_info

    setup_logger = _compat.setup_logger
    # Our trainers and datasets go into Dassl's own registries, under names still free there.
    TRAINER_REGISTRY = _compat.HostRegistry(_DASSL_TRAINERS, "trainer")
    DATASET_REGISTRY = _compat.HostRegistry(_DASSL_DATASETS, "dataset")
    _compat.undo_logging_disable()
    _compat.route_logger_to_stdout()

    def get_cfg_default():
        """Dassl's defaults plus the keys this project adds."""
        return add_engine_keys(_dassl_cfg_default())

    # A subclass of Dassl's TrainerX with our checkpoint I/O, training step and test().
    TrainerX = _compat.make_trainer_x(_DasslTrainerX, rebuild_loader=_compat.dassl_test_loader,
                                      defaults=get_cfg_default)

    def declare_default_keys(*extenders):
        """Add our keys (engine keys, then each ``extender(cfg)``) to Dassl's defaults, absent ones only.

        ``plpp.trainers`` calls this on import, so a Dassl checkout's own ``train.py`` (its
        ``get_cfg_default()``) accepts ``TRAINER.PLPP.*`` in YAML files and on the command line.
        """
        _compat.declare_default_keys(_dassl_cfg_node, *extenders)

    def build_trainer(cfg):
        return _dassl_build_trainer(cfg)

else:
    from .config import get_cfg_default as _builtin_cfg_default
    from .data import DataManager, DatasetBase, Datum, build_transform
    from .registry import DATASET_REGISTRY, TRAINER_REGISTRY
    from .trainer import TrainerX, build_trainer
    from .utils import collect_env_info, compute_accuracy, set_random_seed, setup_logger

    _DECLARED: list = []

    def get_cfg_default():
        """A fresh default config: Dassl's keys, ours, and those of every ``declare_default_keys`` call."""
        cfg = _builtin_cfg_default()
        for extend in _DECLARED:
            extend(cfg)
        return cfg

    def declare_default_keys(*extenders):
        """Make every later ``get_cfg_default()`` include each ``extender(cfg)``'s keys (absent ones only)."""
        _DECLARED.extend(e for e in extenders if e not in _DECLARED)

__all__ = [
    "BACKEND", "DATASET_REGISTRY", "DataManager", "DatasetBase", "Datum", "TRAINER_REGISTRY", "TrainerX",
    "add_engine_keys", "build_lr_scheduler", "build_optimizer", "build_trainer", "build_transform",
    "collect_env_info", "compute_accuracy", "declare_default_keys", "get_cfg_default", "set_random_seed",
    "setup_logger",
]
