"""Published numbers of the peer methods, each table with its source, for ``plpp-results --compare published``.

Only numbers read in a primary source are here: the authors' README or project page, or a
peer-reviewed paper that reprints the original table (named beside each table). All are ViT-B/16,
3 seeds; base-to-new and the transfer protocols use 16 shots. Every base-to-new cell satisfies
HM = 2BN/(B+N) to 0.01, and each per-dataset column's mean reproduces the printed 11-dataset average
(``tests/test_results.py`` checks both). Methods are keyed by the trainer name this project uses for
them (``ZeroshotCLIP`` is CLIP's hand-crafted prompt, ``LinearProbeCLIP`` the linear probe); a second
setting of the same trainer gets its own row name.

Left out on purpose: ProDA's per-dataset base-to-new numbers (only one OCR'd reprint exists) and the
PLPP paper's own numbers (see docs/PROTOCOLS.md: no primary source gives them).

Comparisons are like with like: an average of the published numbers is only shown over the same
datasets as the average it stands beside, taken from the printed average when those are all the
protocol's datasets and recomputed from the per-dataset rows otherwise; a method with no per-dataset
rows gets no average over a subset (:func:`comparable_average`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .aggregate import harmonic_mean
from .names import BENCHMARK_DATASETS, DG_TARGETS, SOURCE_DATASET, XD_TARGETS

PROTOCOLS = ("fewshot", "base2new", "xd", "dg")

# Sources, as the papers and READMEs are named.
_REPRINT_B2N = "PromptKD (CVPR 2024) Table 1 and ATPrompt (ICCV 2025) Table 1 (reprints of the original tables)"
_XD_SOURCE = "ProText (Khattak et al.) Table 4; the same rows in ATPrompt Table 2 and PromptKD Table 2"
_DG_SOURCE = "ProText (Khattak et al.) Table 5; the same rows in ATPrompt Table 4 and PromptKD Table 9"
_FEWSHOT_SOURCE = ("the PromptSRC paper's few-shot table, as reprinted in the CasPL (ECCV 2024) README "
                   "(11-dataset averages only)")


@dataclass(frozen=True)
class Row:
    """One published method in one table: its numbers and where they were read.

    ``datasets`` maps dataset folder -> value (base-to-new: ``(base, new, HM)``; the others: accuracy);
    ``average`` is the printed average over all the protocol's datasets (base-to-new: ``(base, new,
    HM)``), ``None`` when only per-dataset rows are published.
    """

    name: str
    trainer: str
    source: str
    setting: str = ""
    datasets: dict[str, Any] = field(default_factory=dict)
    average: Any = None
    average_source: str = ""
    source_value: float | None = None  # transfer protocols: ImageNet (the training set) accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON form (without comparisons, which depend on the datasets of a run tree)."""
        out: dict[str, Any] = {"trainer": self.trainer, "setting": self.setting, "source": self.source}
        if self.average_source:
            out["average_source"] = self.average_source
        return out


def _b2n(values: list[tuple[float, float, float]]) -> dict[str, tuple[float, float, float]]:
    return dict(zip(BENCHMARK_DATASETS, values))


# fmt: off
# Base-to-new per dataset, in BENCHMARK_DATASETS order (imagenet, caltech101, ..., ucf101): (base, new, HM).
_B2N_PER_DATASET: dict[str, tuple[str, list[tuple[float, float, float]]]] = {
    "ZeroshotCLIP": (_REPRINT_B2N, [
        (72.43, 68.14, 70.22), (96.84, 94.00, 95.40), (91.17, 97.26, 94.12), (63.37, 74.89, 68.65),
        (72.08, 77.80, 74.83), (90.10, 91.22, 90.66), (27.19, 36.29, 31.09), (69.36, 75.35, 72.23),
        (53.24, 59.90, 56.37), (56.48, 64.05, 60.03), (70.53, 77.50, 73.85),
    ]),
    "CoOp": (_REPRINT_B2N, [
        (76.47, 67.88, 71.92), (98.00, 89.81, 93.73), (93.67, 95.29, 94.47), (78.12, 60.40, 68.13),
        (97.60, 59.67, 74.06), (88.33, 82.26, 85.19), (40.44, 22.30, 28.75), (80.60, 65.89, 72.51),
        (79.44, 41.18, 54.24), (92.19, 54.74, 68.69), (84.69, 56.05, 67.46),
    ]),
    "CoCoOp": (_REPRINT_B2N, [
        (75.98, 70.43, 73.10), (97.96, 93.81, 95.84), (95.20, 97.69, 96.43), (70.49, 73.59, 72.01),
        (94.87, 71.75, 81.71), (90.70, 91.29, 90.99), (33.41, 23.71, 27.74), (79.74, 76.86, 78.27),
        (77.01, 56.00, 64.85), (87.49, 60.04, 71.21), (82.33, 73.45, 77.64),
    ]),
    "KgCoOp": ("DiscoVL Table 1, which reprints the KgCoOp paper's table", [
        (75.83, 69.96, 72.78), (97.72, 94.39, 96.03), (94.65, 97.76, 96.18), (71.76, 75.04, 73.36),
        (95.00, 74.73, 83.65), (90.50, 91.70, 91.09), (36.21, 33.55, 34.83), (80.29, 76.53, 78.36),
        (77.55, 54.99, 64.35), (85.64, 64.34, 73.48), (82.89, 76.67, 79.65),
    ]),
    "MaPLe": (_REPRINT_B2N, [
        (76.66, 70.54, 73.47), (97.74, 94.36, 96.02), (95.43, 97.76, 96.58), (72.94, 74.00, 73.47),
        (95.92, 72.46, 82.56), (90.71, 92.05, 91.38), (37.44, 35.61, 36.50), (80.82, 78.70, 79.75),
        (80.36, 59.18, 68.16), (94.07, 73.23, 82.35), (83.00, 78.66, 80.77),
    ]),
    "PromptSRC": (_REPRINT_B2N, [
        (77.60, 70.73, 74.01), (98.10, 94.03, 96.02), (95.33, 97.30, 96.30), (78.27, 74.97, 76.58),
        (98.07, 76.50, 85.95), (90.67, 91.53, 91.10), (42.73, 37.87, 40.15), (82.67, 78.47, 80.52),
        (83.37, 62.97, 71.75), (92.90, 73.90, 82.32), (87.10, 78.80, 82.74),
    ]),
}

# Base-to-new 11-dataset averages as printed: name -> (trainer, setting, (base, new, HM), source).
_B2N_AVERAGES: dict[str, tuple[str, str, tuple[float, float, float], str]] = {
    "ZeroshotCLIP": ("ZeroshotCLIP", "CLIP, hand-crafted prompts", (69.34, 74.22, 71.70),
                     "MaPLe and PromptSRC READMEs (authors)"),
    "CoOp": ("CoOp", "CoCoOp-paper setting, 200 epochs", (82.69, 63.22, 71.66), "MaPLe README (authors)"),
    "CoOp (ProGrad setting)": ("CoOp", "the ProGrad paper's CoOp setting", (82.63, 67.99, 74.60),
                               "KgCoOp README"),
    "CoCoOp": ("CoCoOp", "10 epochs", (80.47, 71.69, 75.83), "MaPLe README (authors)"),
    "ProGrad": ("ProGrad", "", (82.48, 70.75, 76.16), "KgCoOp README"),
    "ProDA": ("ProDA", "100 epochs", (81.56, 72.30, 76.65), "PromptSRC project page"),
    "KgCoOp": ("KgCoOp", "100 epochs", (80.73, 73.60, 77.00), "KgCoOp README (authors); epochs from its config"),
    "IVLP (PromptSRC setting)": ("IVLP", "4+4 context tokens, 20 epochs", (84.21, 71.79, 77.51),
                                 "PromptSRC README (authors)"),
    "IVLP (MaPLe setting)": ("IVLP", "MaPLe's setting, 5 epochs", (82.15, 74.07, 77.90), "MaPLe README (authors)"),
    "MaPLe": ("MaPLe", "5 epochs", (82.28, 75.14, 78.55), "MaPLe README (authors)"),
    "PromptSRC": ("PromptSRC", "20 epochs", (84.26, 76.10, 79.97), "PromptSRC README (authors)"),
    "CoPrompt": ("CoPrompt", "", (84.00, 77.23, 80.48), "CoPrompt README (authors)"),
}

_XD_COLUMNS = (SOURCE_DATASET, *XD_TARGETS, "average")
_XD_ROWS: dict[str, tuple[float, ...]] = {
    "CoOp": (71.51, 93.70, 89.14, 64.51, 68.71, 85.30, 18.47, 64.15, 41.92, 46.39, 66.55, 63.88),
    "CoCoOp": (71.02, 94.43, 90.14, 65.32, 71.88, 86.06, 22.94, 67.36, 45.73, 45.37, 68.21, 65.74),
    "MaPLe": (70.72, 93.53, 90.49, 65.57, 72.23, 86.20, 24.74, 67.01, 46.49, 48.06, 68.69, 66.30),
    "PromptSRC": (71.27, 93.60, 90.25, 65.70, 70.25, 86.15, 23.90, 67.10, 46.87, 45.50, 68.75, 65.81),
}

_DG_COLUMNS = (SOURCE_DATASET, *DG_TARGETS, "average")
_DG_ROWS: dict[str, tuple[str, tuple[float, ...]]] = {
    "ZeroshotCLIP": ("PromptKD Table 9 (ProText prints CLIP's ImageNet as 66.72)",
                     (66.73, 60.83, 46.15, 47.77, 73.96, 57.18)),
    "CoOp": (_DG_SOURCE, (71.51, 64.20, 47.99, 49.71, 75.21, 59.28)),
    "CoCoOp": (_DG_SOURCE, (71.02, 64.07, 48.75, 50.63, 76.18, 59.91)),
    "MaPLe": (_DG_SOURCE, (70.72, 64.07, 49.15, 50.90, 76.98, 60.27)),
    "PromptSRC": ("PromptKD Table 9", (71.27, 64.35, 49.55, 50.90, 77.80, 60.65)),
}

_FEWSHOT_ROWS: dict[str, tuple[float, ...]] = {  # 1, 2, 4, 8, 16 shots
    "LinearProbeCLIP": (45.83, 57.98, 68.01, 74.47, 78.79),
    "CoOp": (67.56, 70.65, 74.02, 76.98, 79.89),
    "CoCoOp": (66.79, 67.65, 71.21, 72.96, 74.90),
    "MaPLe": (69.27, 72.58, 75.37, 78.89, 81.79),
    "PromptSRC": (72.32, 75.29, 78.35, 80.69, 82.87),
}
# fmt: on

FEWSHOT_SHOTS = (1, 2, 4, 8, 16)


def _build() -> dict[str, dict[str, Row]]:
    b2n: dict[str, Row] = {}
    for name, (trainer, setting, avg, avg_source) in _B2N_AVERAGES.items():
        per = _B2N_PER_DATASET.get(name)
        source = f"per dataset: {per[0]}; average: {avg_source}" if per else avg_source
        b2n[name] = Row(name, trainer, source, setting, _b2n(per[1]) if per else {}, avg, avg_source)
    xd = {
        m: Row(m, m, _XD_SOURCE, "", dict(zip(XD_TARGETS, r[1:-1])), r[-1], source_value=r[0])
        for m, r in _XD_ROWS.items()
    }
    dg = {
        m: Row(m, m, src, "", dict(zip(DG_TARGETS, r[1:-1])), r[-1], source_value=r[0])
        for m, (src, r) in _DG_ROWS.items()
    }
    fewshot = {
        m: Row(m, m, _FEWSHOT_SOURCE, "", {}, dict(zip(FEWSHOT_SHOTS, r))) for m, r in _FEWSHOT_ROWS.items()
    }
    return {"base2new": b2n, "xd": xd, "dg": dg, "fewshot": fewshot}


#: protocol -> row name -> :class:`Row`.
TABLES: dict[str, dict[str, Row]] = _build()

#: The datasets each protocol's printed averages are taken over.
PROTOCOL_DATASETS: dict[str, tuple[str, ...]] = {
    "fewshot": BENCHMARK_DATASETS,
    "base2new": BENCHMARK_DATASETS,
    "xd": XD_TARGETS,
    "dg": DG_TARGETS,
}

#: The base-to-new CoOp baseline of the per-dataset table (the KgCoOp README's CoOp row is another setting).
COOP_BASELINE_NOTE = ("CoOp's base-to-new rows are the CoCoOp-paper setting (200 epochs; MaPLe README "
                      "average 82.69/63.22/71.66); 'CoOp (ProGrad setting)' is the KgCoOp README's row.")


def methods(protocol: str) -> list[str]:
    """Row names of a protocol's published table."""
    if protocol not in TABLES:
        raise ValueError(f"unknown protocol {protocol!r}")
    return list(TABLES[protocol])


def rows(protocol: str, names: list[str] | None = None) -> dict[str, Row]:
    """The published rows of a protocol, restricted to ``names`` when given (unknown names raise
    ``KeyError`` naming the known ones)."""
    table = TABLES[protocol]
    if not names:
        return dict(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise KeyError(f"no published {protocol} numbers for {', '.join(unknown)}; known: {', '.join(table)}")
    return {n: table[n] for n in names}


@dataclass(frozen=True)
class Comparable:
    """A published average over the same datasets as ours, or why there is none (``values`` ``None``)."""

    values: Any  # base-to-new: (base, new, HM); others: accuracy
    how: str  # "printed average over the 11 datasets" / "recomputed over 3 datasets from per-dataset rows"
    datasets: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        if self.values is None:
            return {"value": None, "how": self.how, "datasets": list(self.datasets)}
        if isinstance(self.values, tuple):
            base, new, hm = self.values
            return {"base": base, "new": new, "hm": hm, "how": self.how, "datasets": list(self.datasets)}
        return {"mean": self.values, "how": self.how, "datasets": list(self.datasets)}


def comparable_average(protocol: str, row: Row, datasets: list[str] | tuple[str, ...], shots: int | None = None
                       ) -> Comparable:
    """The average of ``row`` over exactly ``datasets`` (the ones our average used).

    The printed average when ``datasets`` are all the protocol's datasets; else the mean of the
    per-dataset rows (base-to-new: of base and of new, HM of those two, the papers' rule); else no value,
    with the reason. ``shots`` picks the few-shot column.
    """
    wanted = tuple(datasets)
    full = PROTOCOL_DATASETS[protocol]
    n = len(full)
    if not wanted:
        return Comparable(None, "no datasets to compare")
    printed = row.average
    if protocol == "fewshot":
        printed = (row.average or {}).get(shots)
    if set(wanted) == set(full) and printed is not None:
        return Comparable(printed, f"printed average over the {n} datasets", wanted)
    missing = [d for d in wanted if d not in row.datasets]
    if missing:
        if not row.datasets:
            why = f"only the {n}-dataset average is published"
        else:
            why = f"no published number for {', '.join(missing)}"
        return Comparable(None, f"not comparable: {why}", wanted)
    values = [row.datasets[d] for d in wanted]
    k = len(wanted)
    how = f"recomputed over these {k} dataset(s) from the per-dataset rows"
    if protocol == "base2new":
        base = sum(v[0] for v in values) / k
        new = sum(v[1] for v in values) / k
        return Comparable((base, new, harmonic_mean(base, new)), how, wanted)
    return Comparable(sum(values) / k, how, wanted)


def sources(protocol: str, names: list[str]) -> list[str]:
    """``names: source`` lines for the rows shown, one line per distinct source."""
    table = TABLES[protocol]
    by_source: dict[str, list[str]] = {}
    for name in names:
        row = table[name]
        by_source.setdefault(row.source, []).append(name + (f" ({row.setting})" if row.setting else ""))
    return [f"{', '.join(shown)}: {source}" for source, shown in by_source.items()]
