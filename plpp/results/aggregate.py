"""Aggregate runs over seeds and datasets, and report what is missing.

Conventions (the ones CoOp's ``parse_test_res.py`` and the prompt-learning papers use):

* a cell (dataset x shots, dataset x base/new, transfer target) is summarised by the mean and the
  **population** standard deviation (``np.std``, ddof=0) of its seeds, and ``n`` the number of seeds
  with a result; the 95% confidence interval is ``1.96 * std / sqrt(n)``;
* base-to-new: the harmonic mean of a dataset is ``HM(mean base, mean new)`` -- the HM of the seed
  means, never the mean of per-seed HMs; the average row is the mean over datasets of the base means
  and of the new means, and its HM is the HM of those two averages;
* averages over datasets use each dataset's seed mean and only datasets that have a result; the
  number of datasets used is reported next to every average;
* a cell with one seed has no spread (``std`` is ``None``, never ``± 0.00``).

What is *expected* is what was asked (``--datasets``, ``--shots``, ``--seeds``) or else what the tree
itself implies: the datasets, shots and seeds found for the method (and, for the transfer protocols,
all of their targets). Nothing is dropped silently: every expected seed, cell or dataset without a
result becomes a :class:`Missing` entry (crashed runs are ``incomplete``, runs whose ``results.json``
contradicts their folder ``mismatched``), which the CLI logs and puts in the JSON. Each cell also keeps
the kind of backbone weights behind each of its values (:mod:`plpp.results.records`).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .layout import Method, Run, base2new_root, source_dir, transfer_roots
from .names import SOURCE_DATASET, dataset_order
from .records import backbone_id, weights_kind

logger = logging.getLogger(__name__)

CI95_Z = 1.96


def harmonic_mean(base: float, new: float) -> float:
    """``2·B·N/(B+N)``, the base-to-new harmonic mean (0 when both are 0)."""
    total = base + new
    return 0.0 if total == 0 else 2.0 * base * new / total


@dataclass(frozen=True)
class Stat:
    """Accuracies of one cell over seeds (percent)."""

    values: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    weights: tuple[str, ...] = ()  # kind of backbone behind each value (openai, random, ..., unrecorded)

    @property
    def n(self) -> int:
        """Number of seeds with a result."""
        return len(self.values)

    @property
    def mean(self) -> float | None:
        """Mean over seeds, ``None`` without results."""
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        """Population standard deviation over seeds (``np.std``, as CoOp's parser); ``None`` for fewer
        than 2 seeds (one seed has no spread)."""
        return float(np.std(self.values)) if self.n > 1 else None

    @property
    def ci95(self) -> float | None:
        """Half-width of the 95% confidence interval, ``1.96·std/√n``."""
        std = self.std
        return None if std is None else CI95_Z * std / math.sqrt(self.n)

    def spread(self, ci95: bool = False) -> float | None:
        """The ± value shown in tables: the CI95 half-width if requested, else the std."""
        return self.ci95 if ci95 else self.std

    @property
    def kinds(self) -> tuple[str, ...]:
        """The distinct kinds of backbone weights behind the values, sorted."""
        return tuple(sorted(set(self.weights)))

    def to_dict(self, ci95: bool = False) -> dict[str, Any]:
        """``{"mean", "std", "n", "seeds", "weights"}`` (plus ``"ci95"`` when requested)."""
        out: dict[str, Any] = {"mean": self.mean, "std": self.std, "n": self.n, "seeds": list(self.seeds)}
        if ci95:
            out["ci95"] = self.ci95
        out["weights"] = list(self.kinds)
        return out


def mean_of(values: Iterable[float | None]) -> tuple[float | None, int]:
    """Mean of the non-``None`` values and how many there were."""
    present = [v for v in values if v is not None]
    return (float(np.mean(present)) if present else None), len(present)


@dataclass(frozen=True)
class Missing:
    """An expected result that is absent: a seed dir, a whole cell/dataset, or a crashed run."""

    dataset: str
    reason: str  # "missing" (no run dir), "incomplete" (no result) or "mismatched" (record contradicts folder)
    seed: int | None = None
    shots: int | None = None
    part: str = ""
    path: Path | None = None
    detail: str = ""

    def where(self) -> str:
        """Dataset plus shots/part, e.g. ``oxford_pets 16 shots`` or ``dtd new``."""
        parts = [self.dataset]
        if self.shots is not None:
            parts.append(f"{self.shots} shots")
        if self.part:
            parts.append(self.part)
        return " ".join(parts)

    def message(self, method: Method) -> str:
        """One warning line naming the method, the cell and the directory."""
        head = f"{method.label}: {self.where()}"
        if self.reason == "mismatched":
            return f"{head}: seed {self.seed} left out: {self.detail}"
        if self.reason == "incomplete":
            return f"{head}: seed {self.seed} has no result (crashed or unfinished run): {self.path}"
        if self.seed is not None:
            return f"{head}: missing seed {self.seed} (no {self.path})"
        return f"{head}: no runs (expected {self.path})"

    def to_dict(self, method: Method) -> dict[str, Any]:
        """JSON entry of the ``missing`` list."""
        out: dict[str, Any] = {"dataset": self.dataset}
        if self.shots is not None:
            out["shots"] = self.shots
        if self.part:
            out["part"] = self.part
        out.update(
            seed=self.seed,
            reason=self.reason,
            path=str(self.path) if self.path else None,
            message=self.message(method),
        )
        return out


Key = tuple[str, Any]  # (dataset, shots | part)


def expected_seeds(runs: Iterable[Run], seeds: Iterable[int] | None) -> tuple[int, ...]:
    """Seeds every cell should have: ``seeds`` if given, else every seed found for the method."""
    if seeds is not None:
        return tuple(sorted(set(seeds)))
    return tuple(sorted({r.seed for r in runs}))


def found_seeds(stats: Iterable[Stat]) -> tuple[int, ...]:
    """The seeds that gave at least one counted result (what a table's header states)."""
    return tuple(sorted({s for stat in stats for s in stat.seeds}))


def backbones(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Counted runs grouped by the backbone file (SHA-256, else name) recorded for them."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.counted is not None:
            ident = backbone_id(run.counted.meta)
            if ident is not None:
                groups[ident].append(run)
    return dict(groups)


def group_by_method(runs: Iterable[Run]) -> dict[Method, list[Run]]:
    """Runs grouped per method, methods sorted."""
    groups: dict[Method, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.method].append(run)
    return dict(sorted(groups.items()))


def _cells(
    runs: list[Run],
    key_of: Callable[[Run], Key],
    expected: Iterable[Key],
    seeds: tuple[int, ...],
    cell_dir: Callable[[Key], Path],
) -> tuple[dict[Key, Stat], list[Missing]]:
    """Stats of every expected cell and the missing/incomplete seeds of each (seeds outside
    ``seeds`` are ignored)."""
    by_key: dict[Key, list[Run]] = defaultdict(list)
    for run in runs:
        if run.seed in seeds:
            by_key[key_of(run)].append(run)
    stats: dict[Key, Stat] = {}
    missing: list[Missing] = []
    for key in expected:
        dataset, sub = key
        shots = sub if isinstance(sub, int) else None
        part = sub if isinstance(sub, str) else ""
        cell = sorted(by_key.get(key, []), key=lambda r: r.seed)
        done = [r for r in cell if r.counted is not None]
        stats[key] = Stat(tuple(r.counted.accuracy for r in done if r.counted), tuple(r.seed for r in done),
                          tuple(weights_kind(r.counted.meta) for r in done if r.counted))
        if not cell:
            missing.append(Missing(dataset, "missing", None, shots, part, cell_dir(key)))
            continue
        for run in cell:
            if run.problem:
                missing.append(Missing(dataset, "mismatched", run.seed, shots, part, run.path, run.problem))
            elif run.result is None:
                missing.append(Missing(dataset, "incomplete", run.seed, shots, part, run.path))
        present = {r.seed for r in cell}
        parent = cell[0].path.parent
        for seed in seeds:
            if seed not in present:
                missing.append(Missing(dataset, "missing", seed, shots, part, parent / f"seed{seed}"))
    return stats, missing


# --------------------------------------------------------------------------------------------- few-shot


@dataclass
class FewShotSummary:
    """Few-shot results of one method: dataset x shots cells and per-shots averages over datasets."""

    method: Method
    seeds: tuple[int, ...]
    datasets: list[str]
    shots: list[int]
    stats: dict[Key, Stat]
    missing: list[Missing] = field(default_factory=list)

    @property
    def seeds_found(self) -> tuple[int, ...]:
        """Seeds with at least one counted result."""
        return found_seeds(self.stats.values())

    def average_datasets(self, shots: int) -> list[str]:
        """The datasets the average at ``shots`` is taken over (those with a result)."""
        return [d for d in self.datasets if self.stat(d, shots).n]

    def stat(self, dataset: str, shots: int) -> Stat:
        """Cell stats (empty when the cell has no run)."""
        return self.stats.get((dataset, shots), Stat())

    def average(self, shots: int) -> tuple[float | None, int]:
        """Mean over datasets of the seed means at ``shots``, and the number of datasets used."""
        return mean_of(self.stat(d, shots).mean for d in self.datasets)

    def to_dict(self, ci95: bool = False) -> dict[str, Any]:
        """``{trainer, cfg, variant, seeds, datasets: {ds: {shots: stat}}, average: {shots: {mean,
        n_datasets}}, missing: [...]}`` (shots keys are strings, as JSON requires)."""
        out: dict[str, Any] = {**self.method.to_dict(), "seeds": list(self.seeds),
                               "seeds_found": list(self.seeds_found)}
        out["datasets"] = {
            d: {str(k): self.stat(d, k).to_dict(ci95) for k in self.shots if (d, k) in self.stats}
            for d in self.datasets
        }
        out["average"] = {}
        for k in self.shots:
            mean, n = self.average(k)
            out["average"][str(k)] = {"mean": mean, "n_datasets": n, "datasets": self.average_datasets(k)}
        out["missing"] = [m.to_dict(self.method) for m in self.missing]
        return out


def summarize_fewshot(
    root: Path, runs: list[Run], seeds: Iterable[int] | None = None, datasets: Iterable[str] | None = None,
    shots: Iterable[int] | None = None,
) -> list[FewShotSummary]:
    """One :class:`FewShotSummary` per method found in ``runs``.

    Expected cells: every (dataset, shots) pair of the asked ``datasets`` and ``shots``, else of those
    the method was run with (a dataset that was never run is not expected unless asked for).
    """
    summaries = []
    for method, mruns in group_by_method(runs).items():
        want = expected_seeds(mruns, seeds)
        want_datasets = dataset_order(set(datasets) if datasets is not None else {r.dataset for r in mruns})
        want_shots = sorted(set(shots) if shots is not None else {r.shots for r in mruns if r.shots is not None})

        def cell_dir(key: Key, method: Method = method) -> Path:
            dataset, k = key
            return root / dataset / method.trainer / f"{method.cfg}_{k}shots" / method.variant

        expected = [(d, k) for d in want_datasets for k in want_shots]
        stats, missing = _cells(mruns, lambda r: (r.dataset, r.shots), expected, want, cell_dir)
        summaries.append(FewShotSummary(method, want, want_datasets, want_shots, stats, missing))
    return summaries


# ------------------------------------------------------------------------------------------ base-to-new


@dataclass
class Base2NewSummary:
    """Base-to-new results of one method."""

    method: Method
    seeds: tuple[int, ...]
    datasets: list[str]
    stats: dict[Key, Stat]
    missing: list[Missing] = field(default_factory=list)

    @property
    def seeds_found(self) -> tuple[int, ...]:
        """Seeds with at least one counted result."""
        return found_seeds(self.stats.values())

    def base(self, dataset: str) -> Stat:
        """Base-class accuracy over seeds (test at the end of training, ``train_base``)."""
        return self.stats.get((dataset, "base"), Stat())

    def new(self, dataset: str) -> Stat:
        """New-class accuracy over seeds (eval-only run, ``test_new``)."""
        return self.stats.get((dataset, "new"), Stat())

    def hm(self, dataset: str) -> float | None:
        """HM of the seed means of base and new; ``None`` if either is absent."""
        base, new = self.base(dataset).mean, self.new(dataset).mean
        return None if base is None or new is None else harmonic_mean(base, new)

    def complete_datasets(self) -> list[str]:
        """Datasets with both a base and a new result (the ones the average uses)."""
        return [d for d in self.datasets if self.hm(d) is not None]

    def average(self) -> dict[str, Any]:
        """``{base, new, hm, n_datasets}``: dataset means of base and new means, HM of those."""
        used = self.complete_datasets()
        base, _ = mean_of(self.base(d).mean for d in used)
        new, _ = mean_of(self.new(d).mean for d in used)
        hm = None if base is None or new is None else harmonic_mean(base, new)
        return {"base": base, "new": new, "hm": hm, "n_datasets": len(used), "datasets": used}

    def to_dict(self, ci95: bool = False) -> dict[str, Any]:
        """``{trainer, cfg, variant, seeds, datasets: {ds: {base: stat, new: stat, hm}}, average:
        {base, new, hm, n_datasets, datasets}, missing: [...]}``."""
        out: dict[str, Any] = {**self.method.to_dict(), "seeds": list(self.seeds),
                               "seeds_found": list(self.seeds_found)}
        out["datasets"] = {
            d: {"base": self.base(d).to_dict(ci95), "new": self.new(d).to_dict(ci95), "hm": self.hm(d)}
            for d in self.datasets
        }
        out["average"] = self.average()
        out["missing"] = [m.to_dict(self.method) for m in self.missing]
        return out


def summarize_base2new(
    root: Path, runs: list[Run], seeds: Iterable[int] | None = None, datasets: Iterable[str] | None = None
) -> list[Base2NewSummary]:
    """One :class:`Base2NewSummary` per method; every expected dataset (asked, else run) must have base
    and new runs for every expected seed."""
    b2n = base2new_root(root)
    summaries = []
    for method, mruns in group_by_method(runs).items():
        want = expected_seeds(mruns, seeds)
        want_datasets = dataset_order(set(datasets) if datasets is not None else {r.dataset for r in mruns})
        shots_dir = method.variant or "shots_16"

        def cell_dir(key: Key, method: Method = method, shots_dir: str = shots_dir) -> Path:
            dataset, part = key
            folder = "train_base" if part == "base" else "test_new"
            return b2n / folder / dataset / shots_dir / method.trainer / method.cfg

        expected = [(d, p) for d in want_datasets for p in ("base", "new")]
        stats, missing = _cells(mruns, lambda r: (r.dataset, r.part), expected, want, cell_dir)
        summaries.append(Base2NewSummary(method, want, want_datasets, stats, missing))
    return summaries


# ------------------------------------------------------------------------- cross-dataset / domain gen.


@dataclass
class TransferSummary:
    """Cross-dataset or domain-generalisation results of one method: ImageNet source + targets."""

    protocol: str  # "xd" or "dg"
    method: Method
    seeds: tuple[int, ...]
    targets: list[str]  # expected targets, in table order
    stats: dict[Key, Stat]
    missing: list[Missing] = field(default_factory=list)

    @property
    def seeds_found(self) -> tuple[int, ...]:
        """Seeds with at least one counted result."""
        return found_seeds(self.stats.values())

    def average_datasets(self) -> list[str]:
        """The targets the average is taken over (those with a result)."""
        return [d for d in self.targets if self.target(d).n]

    @property
    def source(self) -> Stat:
        """ImageNet accuracy of the training runs."""
        return self.stats.get((SOURCE_DATASET, "source"), Stat())

    def target(self, dataset: str) -> Stat:
        """Accuracy of the eval-only runs on a target dataset."""
        return self.stats.get((dataset, "target"), Stat())

    def average(self) -> tuple[float | None, int]:
        """Mean over targets (not ImageNet) of the seed means, and the number of targets used."""
        return mean_of(self.target(d).mean for d in self.targets)

    def to_dict(self, ci95: bool = False) -> dict[str, Any]:
        """``{trainer, cfg, variant, seeds, source: {imagenet: stat}, targets: {ds: stat}, average:
        {mean, n_datasets}, missing: [...]}``; ``targets`` lists only targets with a run dir."""
        out: dict[str, Any] = {**self.method.to_dict(), "seeds": list(self.seeds),
                               "seeds_found": list(self.seeds_found)}
        out["source"] = {SOURCE_DATASET: self.source.to_dict(ci95)}
        out["targets"] = {
            d: self.target(d).to_dict(ci95)
            for d in self.targets
            if self.target(d).n or not any(m.dataset == d and m.seed is None for m in self.missing)
        }
        mean, n = self.average()
        out["average"] = {"mean": mean, "n_datasets": n, "datasets": self.average_datasets()}
        out["missing"] = [m.to_dict(self.method) for m in self.missing]
        return out


def summarize_transfer(
    protocol: str, root: Path, runs: list[Run], targets: tuple[str, ...], seeds: Iterable[int] | None = None
) -> list[TransferSummary]:
    """One :class:`TransferSummary` per method; all ``targets`` and the source are expected."""
    eval_root, _ = transfer_roots(root)
    summaries = []
    for method, mruns in group_by_method(runs).items():
        want = expected_seeds(mruns, seeds)

        def cell_dir(key: Key, method: Method = method) -> Path:
            dataset, part = key
            if part == "source":
                return source_dir(root, method)
            return eval_root / method.trainer / method.cfg / method.variant / dataset

        expected = [(SOURCE_DATASET, "source")] + [(d, "target") for d in targets]
        stats, missing = _cells(mruns, lambda r: (r.dataset, r.part), expected, want, cell_dir)
        summaries.append(TransferSummary(protocol, method, want, list(targets), stats, missing))
    return summaries


def log_missing(summaries: Iterable[FewShotSummary | Base2NewSummary | TransferSummary]) -> int:
    """Log the missing/incomplete entries as warnings (datasets without any run share one line);
    return how many entries there were."""
    count = 0
    for summary in summaries:
        whole = [m for m in summary.missing if m.seed is None and m.shots is None and not m.part]
        if len(whole) > 1:
            names = ", ".join(m.dataset for m in whole)
            logger.warning(
                "%s: no runs for %d dataset(s): %s (e.g. expected %s)",
                summary.method.label,
                len(whole),
                names,
                whole[0].path,
            )
        for item in summary.missing:
            if len(whole) <= 1 or item not in whole:
                logger.warning("%s", item.message(summary.method))
        count += len(summary.missing)
    return count
