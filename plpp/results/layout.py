"""Find the run directories of each evaluation protocol in an output tree.

The trees follow the CoOp/CoCoOp/MaPLe/PromptSRC scripts (see ``/work/shared/ANCHORS.md``):

* few-shot: ``ROOT/<dataset>/<TRAINER>/<cfg>_<K>shots[/<variant>]/seed<S>`` where ``<variant>`` is
  CoOp's ``nctx<N>_csc<CSC>_ctp<CTP>`` level (PromptSRC omits it);
* base-to-new: ``ROOT[/base2new]/{train_base,test_new}/<dataset>/shots_<K>[_<W>]/<TRAINER>/<cfg>/seed<S>``
  (KgCoOp appends its weight ``_<W>`` to the shots level);
* cross-dataset and domain generalisation: targets in
  ``ROOT/evaluation/<TRAINER>/<cfg>_<K>shots[/<variant>]/<dataset>/seed<S>``, the ImageNet source in the
  matching training dir ``ROOT/imagenet/<TRAINER>/<cfg>_<K>shots[/<variant>]/seed<S>``.

Discovery only lists directories and reads their results; deciding what is missing is the job of
:mod:`plpp.results.aggregate`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .names import SOURCE_DATASET
from .parse import Mode, RunResult, load_run

logger = logging.getLogger(__name__)

SEED_RE = re.compile(r"^seed(\d+)$")
SHOTS_CFG_RE = re.compile(r"^(?P<cfg>.+)_(?P<shots>\d+)shots$")
B2N_SHOTS_RE = re.compile(r"^shots_(?P<shots>\d+)(?P<suffix>.*)$")

#: Top-level folders of an output root that are not few-shot dataset folders.
NON_DATASET_DIRS = frozenset({"base2new", "evaluation"})


class LayoutError(Exception):
    """The output root does not have the layout the protocol expects (a user error)."""


@dataclass(frozen=True, order=True)
class Method:
    """One trained configuration: trainer, config name and an optional extra folder level.

    ``variant`` is CoOp's ``nctx16_cscFalse_ctpend`` level in few-shot/evaluation trees, or a
    non-default shots folder (such as KgCoOp's ``shots_16_8.0``) in base-to-new trees.
    """

    trainer: str
    cfg: str
    variant: str = ""

    @property
    def label(self) -> str:
        """Human-readable ``TRAINER/cfg[/variant]``, also the key of multi-method JSON output."""
        return "/".join(p for p in (self.trainer, self.cfg, self.variant) if p)

    def to_dict(self) -> dict[str, str]:
        """JSON fields identifying the method."""
        return {"trainer": self.trainer, "cfg": self.cfg, "variant": self.variant}


@dataclass(frozen=True)
class Run:
    """One seed directory and its result (``None`` when the run has no result: crashed/unfinished).

    ``shots`` is set for few-shot runs; ``part`` is ``base``/``new`` for base-to-new runs and
    ``source``/``target`` for cross-dataset and domain-generalisation runs.
    """

    method: Method
    dataset: str
    seed: int
    path: Path
    result: RunResult | None
    shots: int | None = None
    part: str = ""


def subdirs(path: Path) -> list[Path]:
    """Sorted non-hidden sub-directories of ``path`` (empty if it is not a directory)."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def seed_dirs(path: Path) -> list[tuple[int, Path]]:
    """``(seed, dir)`` for every ``seed<S>`` child of ``path``, by seed."""
    found = []
    for child in subdirs(path):
        match = SEED_RE.match(child.name)
        if match:
            found.append((int(match.group(1)), child))
    return sorted(found)


def _seed_parents(cfg_dir: Path) -> Iterator[tuple[str, Path]]:
    """Yield ``(variant, dir)`` for ``cfg_dir`` itself and each child level holding seed dirs."""
    if seed_dirs(cfg_dir):
        yield "", cfg_dir
    for child in subdirs(cfg_dir):
        if not SEED_RE.match(child.name) and seed_dirs(child):
            yield child.name, child


def _runs_in(
    parent: Path, mode: Mode, method: Method, dataset: str, shots: int | None = None, part: str = ""
) -> Iterator[Run]:
    for seed, path in seed_dirs(parent):
        yield Run(method, dataset, seed, path, load_run(path, mode), shots=shots, part=part)


def require_dir(root: Path) -> Path:
    """Return ``root`` if it is a directory, else raise :class:`LayoutError` naming it."""
    if not root.exists():
        raise LayoutError(f"output root '{root}' does not exist")
    if not root.is_dir():
        raise LayoutError(f"output root '{root}' is not a directory")
    return root


def find_fewshot_runs(root: Path) -> list[Run]:
    """All few-shot runs under ``root`` (training runs: results follow the end of training)."""
    require_dir(root)
    runs: list[Run] = []
    for dataset_dir in subdirs(root):
        if dataset_dir.name in NON_DATASET_DIRS:
            continue
        for trainer_dir in subdirs(dataset_dir):
            for cfg_dir in subdirs(trainer_dir):
                match = SHOTS_CFG_RE.match(cfg_dir.name)
                if not match:
                    continue
                for variant, parent in _seed_parents(cfg_dir):
                    method = Method(trainer_dir.name, match["cfg"], variant)
                    runs += _runs_in(parent, "train", method, dataset_dir.name, shots=int(match["shots"]))
    return runs


def base2new_root(root: Path) -> Path:
    """Accept ``ROOT`` or ``ROOT/base2new`` and return the folder holding ``train_base``/``test_new``."""
    require_dir(root)
    for candidate in (root / "base2new", root):
        if (candidate / "train_base").is_dir() or (candidate / "test_new").is_dir():
            return candidate
    raise LayoutError(
        f"no base-to-new runs under '{root}': expected '{root}/base2new/train_base/<dataset>/shots_16/"
        "<TRAINER>/<cfg>/seed<S>' (or pass the base2new folder itself)"
    )


def _check_subsample(run: Run) -> None:
    """Warn when a ``results.json`` says its classes differ from its folder (base vs new)."""
    classes = run.result.meta.get("subsample_classes") if run.result else None
    if classes is not None and classes != run.part:
        logger.warning(
            "%s: results.json has subsample_classes=%r in a %r folder", run.path, classes, run.part
        )


def find_base2new_runs(root: Path) -> list[Run]:
    """All base-to-new runs: ``base`` from training runs in ``train_base`` (test at the end of
    training), ``new`` from eval-only runs in ``test_new``."""
    b2n = base2new_root(root)
    runs: list[Run] = []
    parts: tuple[tuple[str, str, Mode], ...] = (("base", "train_base", "train"), ("new", "test_new", "eval"))
    for part, folder, mode in parts:
        for dataset_dir in subdirs(b2n / folder):
            for shots_dir in subdirs(dataset_dir):
                match = B2N_SHOTS_RE.match(shots_dir.name)
                if not match:
                    continue
                variant = "" if shots_dir.name == "shots_16" else shots_dir.name
                for trainer_dir in subdirs(shots_dir):
                    for cfg_dir in subdirs(trainer_dir):
                        method = Method(trainer_dir.name, cfg_dir.name, variant)
                        for run in _runs_in(cfg_dir, mode, method, dataset_dir.name, part=part):
                            _check_subsample(run)
                            runs.append(run)
    return runs


def transfer_roots(root: Path) -> tuple[Path, Path]:
    """Return ``(evaluation dir, training root)``; accepts ``ROOT`` or ``ROOT/evaluation``."""
    require_dir(root)
    if root.name == "evaluation":
        return root, root.parent
    if (root / "evaluation").is_dir():
        return root / "evaluation", root
    raise LayoutError(
        f"no evaluation runs under '{root}': expected '{root}/evaluation/<TRAINER>/<cfg>_16shots/"
        f"<dataset>/seed<S>' next to the training runs in '{root}/imagenet/...'"
    )


def find_transfer_runs(root: Path, targets: tuple[str, ...]) -> list[Run]:
    """Runs of a transfer protocol (cross-dataset or domain generalisation).

    Targets are the eval-only runs under ``evaluation`` whose dataset is in ``targets``; for every
    method found there the ImageNet source runs come from the matching training folder. Evaluation
    folders of other datasets belong to the other transfer protocol and are skipped.
    """
    eval_root, train_root = transfer_roots(root)
    runs: list[Run] = []
    methods: dict[Method, Path] = {}
    for trainer_dir in subdirs(eval_root):
        for cfg_dir in subdirs(trainer_dir):
            if not SHOTS_CFG_RE.match(cfg_dir.name):
                continue
            for child in subdirs(cfg_dir):
                if seed_dirs(child):
                    levels = [("", child)]
                else:
                    levels = [(child.name, g) for g in subdirs(child) if seed_dirs(g)]
                for variant, dataset_dir in levels:
                    if dataset_dir.name not in targets:
                        logger.debug("skipping %s: not a target of this protocol", dataset_dir)
                        continue
                    method = Method(trainer_dir.name, cfg_dir.name, variant)
                    methods[method] = _source_dir(train_root, method)
                    runs += _runs_in(dataset_dir, "eval", method, dataset_dir.name, part="target")
    for method, source_dir in sorted(methods.items()):
        runs += _runs_in(source_dir, "train", method, SOURCE_DATASET, part="source")
    return runs


def _source_dir(train_root: Path, method: Method) -> Path:
    return train_root / SOURCE_DATASET / method.trainer / method.cfg / method.variant


def source_dir(root: Path, method: Method) -> Path:
    """Expected ImageNet training folder of a transfer method (used to name missing source runs).

    Transfer methods keep the whole ``<cfg>_<K>shots`` folder name as ``cfg``.
    """
    return _source_dir(transfer_roots(root)[1], method)
