"""What makes the engine surface work on real Dassl 0.6.3, without editing Dassl.

Under ``PLPP_ENGINE=dassl`` (or ``auto`` with Dassl importable) :mod:`plpp.engine` uses these pieces:

* :func:`make_trainer_x` turns Dassl's ``TrainerX`` into ours: the same class hierarchy (so Dassl's
  ``build_trainer`` and every ``isinstance`` check work), with this project's checkpoint I/O
  (:class:`~plpp.engine.trainer.CheckpointIO`: ``weights_only`` loading, no pickled scheduler) and the
  built-in trainer's methods for the training step, checkpointing and ``test()``. Those methods are
  *taken* from :mod:`plpp.engine.trainer`, not copied, so both backends run the same code. Together
  with our closed-form LR schedule (``build_lr_scheduler`` is always ours) this avoids Dassl's two
  breakages on torch ≥ 2.7: the warm-up scheduler's ``verbose`` argument and its pickled scheduler
  state. Dassl's own ``before_epoch`` (a no-op) and loaders stay: both engines draw batches from the
  global RNGs the same way, and our checkpoints carry those RNG states, so a resumed run repeats the
  batches of an uninterrupted one.
* :class:`HostRegistry` registers our trainers and datasets into Dassl's own registries, and only
  under names that are still free: inside a CoOp (or MaPLe, …) checkout whose ``train.py`` already
  registered ``CoOp``, ``OxfordPets``…, that checkout's classes are kept and ours are skipped.
* :func:`declare_default_keys` adds our config keys (``TRAINER.PLPP``, ``TRAINER.MAPLE``, …, absent
  ones only) to Dassl's default config, so a checkout's own ``get_cfg_default()`` → ``extend_cfg`` →
  ``merge_from_file`` accepts them.
* :func:`setup_logger` and :func:`route_logger_to_stdout` put our log lines and Dassl's ``print``
  output in the same ``log.txt``, whichever ``train.py`` runs; :func:`undo_logging_disable` undoes
  the process-wide ``logging.disable(WARNING)`` that importing Dassl performs.

Nothing here imports Dassl: the pure parts are tested without it.
"""

from __future__ import annotations

import inspect
import io
import logging
import sys
from typing import Any, Callable

from . import trainer as _builtin
from .config import add_engine_keys
from .data import first_per_class
from .trainer import CheckpointIO
from .utils import LOGGER_NAME, logger
from .utils import setup_logger as _setup_builtin_logger

# Methods of the built-in trainer that the Dassl-based TrainerX runs unchanged (name → defining class).
# Everything else (register_model, update_lr, run_epoch, before_train, …) stays Dassl's own.
BORROWED: dict[str, type] = {
    "detect_anomaly": _builtin.TrainerBase,  # (loss, terms): names the non-finite term
    "model_backward": _builtin.TrainerBase,  # (loss, terms), gradient scaler aware
    "model_update": _builtin.TrainerBase,  # gradient scaler aware
    "before_optimizer_step": _builtin.TrainerBase,  # hook on the averaged gradients (ProGrad's projection)
    "model_backward_and_update": _builtin.TrainerBase,  # (loss, names=None, terms=None)
    "after_epoch": _builtin.SimpleTrainer,  # a checkpoint every epoch, so a killed run resumes
    "_drop_previous_checkpoint": _builtin.SimpleTrainer,
    "after_train": _builtin.SimpleTrainer,  # marks the run as trained for results.json
    "test": _builtin.SimpleTrainer,  # calls before_test(split), writes results.json
    "before_test": _builtin.SimpleTrainer,
    "write_results_json": _builtin.SimpleTrainer,
    "parse_batch_train": _builtin.TrainerX,  # (img, label), as CLIP trainers expect (Dassl's adds domain)
}


def _borrowed_function(name: str, owner: type) -> Callable:
    fn = owner.__dict__.get(name)
    if fn is None:
        raise AttributeError(f"plpp.engine.trainer.{owner.__name__} no longer defines {name}(); update "
                             "plpp.engine.dassl_compat.BORROWED")
    if "__class__" in inspect.unwrap(fn).__code__.co_freevars:
        raise TypeError(f"{owner.__name__}.{name}() uses super(), so the Dassl backend cannot reuse it; "
                        "update plpp.engine.dassl_compat.BORROWED")
    return fn


class EvaluatorAdapter:
    """Gives a Dassl evaluator the two extras our ``test()`` uses: ``gather()`` and ``counts``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def gather(self) -> None:
        """Single process only: the Dassl backend refuses torchrun runs."""

    @property
    def counts(self) -> tuple[Any, Any]:
        return getattr(self._inner, "_total", None), getattr(self._inner, "_correct", None)


def adapt_evaluator(evaluator: Any) -> Any:
    if hasattr(evaluator, "gather") and hasattr(evaluator, "counts"):
        return evaluator
    return EvaluatorAdapter(evaluator)


def fill_missing_keys(cfg: Any, defaults: Any) -> tuple[Any, list[str]]:
    """``cfg`` plus every key of ``defaults`` it lacks (a clone, frozen like ``cfg``), and those keys.

    A checkout's ``extend_cfg`` replaces whole blocks such as ``TRAINER.COOP`` with its own, which may
    lack keys our trainers read (``TRAINER.COOP.TEXT_CHECKPOINT``); they get our defaults.
    """
    missing: list[tuple[Any, str, Any, str]] = []

    def walk(dst, src, prefix: str) -> None:
        for key, value in src.items():
            if key not in dst:
                missing.append((dst, key, value, prefix + key))
            elif hasattr(value, "items") and hasattr(dst[key], "items"):
                walk(dst[key], value, prefix + key + ".")

    walk(cfg, defaults, "")
    if not missing:
        return cfg, []
    was_frozen = cfg.is_frozen()
    out = cfg.clone()
    out.defrost()
    missing = []
    walk(out, defaults, "")
    for node, key, value, _ in missing:
        node[key] = value.clone() if hasattr(value, "clone") else value
    if was_frozen:
        out.freeze()
    return out, [name for *_, name in missing]


def make_trainer_x(base: type, rebuild_loader: Callable | None = None,
                   defaults: Callable[[], Any] | None = None) -> type:
    """``TrainerX`` for the engine surface: a subclass of ``base`` (Dassl's ``TrainerX``) with our pieces.

    ``rebuild_loader(cfg, items, like)`` returns a test loader over ``items`` built like the loader
    ``like``; it is used for ``DATASET.TEST_PER_CLASS``, which Dassl's DataManager does not know.
    ``defaults()`` returns the full default config: keys a host's ``train.py`` did not declare are
    taken from it (see :func:`fill_missing_keys`).
    """

    class TrainerX(CheckpointIO, base):
        """Dassl's TrainerX with PLPP's checkpoint I/O (RNG states included), training step and test()."""

        scaler = None  # a torch.amp.GradScaler when mixed precision needs one
        trained_this_run = False

        def __init__(self, cfg) -> None:
            if defaults is not None:
                cfg, added = fill_missing_keys(cfg, defaults())
                if added:
                    logger.info("PLPP: this train.py does not declare " + ", ".join(added) + "; using PLPP's "
                                "defaults (docs/INTEGRATION.md)")
            super().__init__(cfg)
            self.evaluator = adapt_evaluator(self.evaluator)

        def build_data_loader(self) -> None:
            super().build_data_loader()
            n = int(self.cfg.DATASET.get("TEST_PER_CLASS", -1))
            if n > 0 and rebuild_loader is not None:
                self.test_loader = rebuild_loader(self.cfg, first_per_class(self.dm.dataset.test, n),
                                                  self.test_loader)
                self.dm.test_loader = self.test_loader

    for name, owner in BORROWED.items():
        setattr(TrainerX, name, _borrowed_function(name, owner))
    TrainerX.__module__ = __name__
    return TrainerX


class HostRegistry:
    """Registers into a host registry (Dassl's), skipping names the host already has.

    ``@REG.register()`` keeps Dassl's spelling. A name that is already taken (a CoOp checkout's own
    ``CoOp`` or ``OxfordPets``) is left to its owner: the first such skip per registry is logged at
    INFO, the rest at DEBUG, and all are kept in ``skipped``; ``force=True`` replaces the owner's entry.
    Lookups go to the host registry, which is also what Dassl's ``build_trainer``/``build_dataset`` read.
    """

    def __init__(self, host: Any, kind: str) -> None:
        self.host = host
        self.kind = kind
        self.skipped: dict[str, Any] = {}  # name -> our object that was not registered

    def _add(self, obj: Any, force: bool) -> Any:
        name = obj.__name__
        if name in self and not force:
            current = self.host.get(name)
            if current is not obj:
                first = not self.skipped
                self.skipped[name] = obj
                log = logger.info if first else logger.debug
                log(f'PLPP: {self.kind} "{name}" is already registered by {getattr(current, "__module__", "?")}; '
                    f"keeping it{' (and every other name already taken there)' if first else ''}, PLPP's "
                    f"{obj.__module__}.{obj.__qualname__} is not registered under that name")
            return obj
        self.host.register(obj, force=force)
        return obj

    def register(self, obj: Any = None, force: bool = False):
        if obj is None:
            return lambda fn_or_class: self._add(fn_or_class, force)
        self._add(obj, force)
        return None

    def get(self, name: str) -> Any:
        return self.host.get(name)

    def registered_names(self) -> list[str]:
        return list(self.host.registered_names())

    def __contains__(self, name: str) -> bool:
        return name in self.host.registered_names()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.host, name)


def declare_default_keys(cfg_default: Any, *extenders: Callable[[Any], None]) -> None:
    """Add the engine keys and each ``extender(cfg)``'s keys to a host's default config, in place.

    Only absent keys are added (our ``add_config`` functions skip blocks that exist), so a checkout's
    own ``extend_cfg`` still declares and overrides its blocks (``TRAINER.COOP`` …) afterwards.
    """
    add_engine_keys(cfg_default)
    was_frozen = cfg_default.is_frozen()
    cfg_default.defrost()
    for extend in extenders:
        extend(cfg_default)
    if was_frozen:
        cfg_default.freeze()


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at emit time (Dassl's ``setup_logger`` replaces it with a tee)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def undo_logging_disable() -> None:
    """Re-enable INFO logging that importing Dassl switched off for the whole process.

    ``dassl/data/datasets/dg/wilds/wilds_base.py`` calls ``logging.disable(logging.WARNING)`` at import
    (to quiet WILDS), which also silences our log lines; only that exact level is undone.
    """
    if logging.root.manager.disable == logging.WARNING:
        logging.disable(logging.NOTSET)


def _shows_output(handler: logging.Handler) -> bool:
    """True for a handler that shows the log: ours, or a plain stream/file handler a ``setup_logger`` added.

    Subclasses such as a test harness's capture handlers (pytest ≥ 9 adds them to non-propagating
    loggers) only record, so they do not count.
    """
    return isinstance(handler, _StdoutHandler) or type(handler) in (logging.StreamHandler, logging.FileHandler)


def route_logger_to_stdout() -> None:
    """Unless a handler shows the log already, send the ``plpp`` logger's INFO lines to ``print``'s stream.

    In a checkout's own ``train.py`` only Dassl's ``setup_logger`` runs: our lines then reach its
    ``log.txt`` the way its ``print`` lines do. Our ``setup_logger`` replaces this handler.
    """
    log = logging.getLogger(LOGGER_NAME)
    if any(_shows_output(h) for h in log.handlers):
        return
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class PrintTee(io.TextIOBase):
    """``sys.stdout`` that also appends every ``print`` to the run's log file (the file handler's stream)."""

    def __init__(self, console: Any, handler: logging.FileHandler) -> None:
        self.console = console
        self.handler = handler

    def write(self, text: str) -> int:
        self.console.write(text)
        self.handler.acquire()
        try:
            stream = self.handler.stream
            if stream is not None and not stream.closed:
                stream.write(text)
                stream.flush()
        finally:
            self.handler.release()
        return len(text)

    def flush(self) -> None:
        self.console.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self.console, "encoding", "utf-8")


def setup_logger(output: str | None = None) -> logging.Logger:
    """Our ``setup_logger`` (log lines to stdout and ``log.txt``, appended) plus Dassl's ``print`` lines in it."""
    if isinstance(sys.stdout, PrintTee):
        sys.stdout = sys.stdout.console
    log = _setup_builtin_logger(output)
    files = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
    if files:
        sys.stdout = PrintTee(sys.stdout, files[0])
    return log


def dassl_test_loader(cfg, items, like):
    """A test loader over ``items`` built by Dassl's ``build_data_loader`` like the loader ``like``."""
    from dassl.data.data_manager import build_data_loader

    return build_data_loader(cfg, sampler_type=cfg.DATALOADER.TEST.SAMPLER, data_source=items,
                             batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=like.dataset.transform,
                             is_train=False, dataset_wrapper=type(like.dataset))
