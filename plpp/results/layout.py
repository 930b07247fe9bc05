"""Find the run directories of each evaluation protocol in an output tree.

The trees follow the output folders of the CoOp/CoCoOp/MaPLe/PromptSRC scripts:

* few-shot: ``ROOT/<dataset>/<TRAINER>/<cfg>_<K>shots[/<variant>]/seed<S>`` where ``<variant>`` is
  CoOp's ``nctx<N>_csc<CSC>_ctp<CTP>`` level (PromptSRC omits it);
* base-to-new: ``ROOT[/base2new]/{train_base,test_new}/<dataset>/shots_<K>[_<W>]/<TRAINER>/<cfg>/seed<S>``
  (KgCoOp appends its weight ``_<W>`` to the shots level);
* cross-dataset and domain generalisation: targets in
  ``ROOT/evaluation/<TRAINER>/<cfg>_<K>shots[/<variant>]/<dataset>/seed<S>``, the ImageNet source in the
  matching training dir ``ROOT/imagenet/<TRAINER>/<cfg>_<K>shots[/<variant>]/seed<S>``.

Discovery lists directories, reads their results and checks each ``results.json`` against its folder
(:mod:`plpp.results.records`): a run whose record contradicts its folder keeps its number out of the
tables and carries the reason in ``Run.problem``. Only a seed folder's own ``results.json`` or log is
read: records in sub-folders of a run (an evaluation of that run written beside it) are never taken
for runs. Deciding what is missing is the job of :mod:`plpp.results.aggregate`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .names import SOURCE_DATASET
from .parse import RESULTS_JSON, Mode, RunResult, load_run
from .records import FolderFacts, folder_mismatches

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
    ``source``/``target`` for cross-dataset and domain-generalisation runs. ``problem`` says why a
    result does not count (its ``results.json`` contradicts its folder); such a run is left out.
    """

    method: Method
    dataset: str
    seed: int
    path: Path
    result: RunResult | None
    shots: int | None = None
    part: str = ""
    problem: str | None = None

    @property
    def counted(self) -> RunResult | None:
        """The result that enters the tables: ``None`` when absent or mismatched."""
        return None if self.problem else self.result


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


#: What each part of a protocol expects of its runs: (subsample_classes, eval_only).
PART_FACTS: dict[str, tuple[str, bool]] = {
    "": ("all", False),  # few-shot training runs
    "base": ("base", False),
    "new": ("new", True),
    "source": ("all", False),
    "target": ("all", True),
}


def _runs_in(
    parent: Path, mode: Mode, method: Method, dataset: str, shots: int | None = None, part: str = "",
    folder_shots: int | None = None,
) -> Iterator[Run]:
    """The seed runs under ``parent``; ``folder_shots`` is the shots count the folder names (checked
    against ``results.json``)."""
    subsample, eval_only = PART_FACTS[part]
    for seed, path in seed_dirs(parent):
        result = load_run(path, mode)
        problem = None
        if result is not None and result.source.name == RESULTS_JSON:
            variant = method.variant if part in ("", "source", "target") else ""
            facts = FolderFacts(method.trainer, dataset, seed, folder_shots, subsample, eval_only, variant)
            mismatches = folder_mismatches(path, result.meta, facts)
            if mismatches:
                problem = f"{path / RESULTS_JSON} does not match its folder: " + "; ".join(mismatches)
        yield Run(method, dataset, seed, path, result, shots=shots, part=part, problem=problem)


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
                    shots = int(match["shots"])
                    runs += _runs_in(parent, "train", method, dataset_dir.name, shots=shots, folder_shots=shots)
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
                        runs += _runs_in(cfg_dir, mode, method, dataset_dir.name, part=part,
                                         folder_shots=int(match["shots"]))
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
    shots_of: dict[Method, int] = {}
    for trainer_dir in subdirs(eval_root):
        for cfg_dir in subdirs(trainer_dir):
            cfg_match = SHOTS_CFG_RE.match(cfg_dir.name)
            if not cfg_match:
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
                    shots_of[method] = int(cfg_match["shots"])
                    runs += _runs_in(dataset_dir, "eval", method, dataset_dir.name, part="target")
    for method, source_dir in sorted(methods.items()):
        runs += _runs_in(source_dir, "train", method, SOURCE_DATASET, part="source", folder_shots=shots_of[method])
    return runs


def _source_dir(train_root: Path, method: Method) -> Path:
    return train_root / SOURCE_DATASET / method.trainer / method.cfg / method.variant


def source_dir(root: Path, method: Method) -> Path:
    """Expected ImageNet training folder of a transfer method (used to name missing source runs).

    Transfer methods keep the whole ``<cfg>_<K>shots`` folder name as ``cfg``.
    """
    return _source_dir(transfer_roots(root)[1], method)
