"""Published numbers of the peer methods, for ``plpp-results ... --compare published``.

Transcribed from ``ANCHORS.md`` (ViT-B/16, 16 shots unless stated, 3 seeds). Most per-dataset
numbers were *recalled* from the PromptSRC paper's tables and only pass an arithmetic check (each HM
is 2BN/(B+N) and the per-dataset means reproduce the averages, see ``tests/test_results.py``):
confirm them against the papers before quoting them in a release note. Datasets are keyed by folder
name, like our results.
"""

from __future__ import annotations

from typing import Any

from .aggregate import harmonic_mean
from .names import BENCHMARK_DATASETS

SOURCE_NOTE = (
    "Published numbers from ANCHORS.md (CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC papers; per-dataset "
    "values recalled from the PromptSRC tables, few-shot averages lower confidence)."
)

# fmt: off
# Base-to-new per dataset: method -> dataset -> (base, new, HM).
_B2N_ROWS: dict[str, list[tuple[float, float, float]]] = {
    # order of rows: BENCHMARK_DATASETS (imagenet, caltech101, ..., ucf101)
    "CLIP": [
        (72.43, 68.14, 70.22), (96.84, 94.00, 95.40), (91.17, 97.26, 94.12), (63.37, 74.89, 68.65),
        (72.08, 77.80, 74.83), (90.10, 91.22, 90.66), (27.19, 36.29, 31.09), (69.36, 75.35, 72.23),
        (53.24, 59.90, 56.37), (56.48, 64.05, 60.03), (70.53, 77.50, 73.85),
    ],
    "CoOp": [
        (76.47, 67.88, 71.92), (98.00, 89.81, 93.73), (93.67, 95.29, 94.47), (78.12, 60.40, 68.13),
        (97.60, 59.67, 74.06), (88.33, 82.26, 85.19), (40.44, 22.30, 28.75), (80.60, 65.89, 72.51),
        (79.44, 41.18, 54.24), (92.19, 54.74, 68.69), (84.69, 56.05, 67.46),
    ],
    "CoCoOp": [
        (75.98, 70.43, 73.10), (97.96, 93.81, 95.84), (95.20, 97.69, 96.43), (70.49, 73.59, 72.01),
        (94.87, 71.75, 81.71), (90.70, 91.29, 90.99), (33.41, 23.71, 27.74), (79.74, 76.86, 78.27),
        (77.01, 56.00, 64.85), (87.49, 60.04, 71.21), (82.33, 73.45, 77.64),
    ],
    "ProDA": [
        (75.40, 70.23, 72.72), (98.27, 93.23, 95.68), (95.43, 97.83, 96.62), (74.70, 71.20, 72.91),
        (97.70, 68.68, 80.66), (90.30, 88.57, 89.43), (36.90, 34.13, 35.46), (78.67, 76.93, 77.79),
        (80.67, 56.48, 66.44), (83.90, 66.00, 73.88), (85.23, 71.97, 78.04),
    ],
    "KgCoOp": [
        (75.83, 69.96, 72.78), (97.72, 94.39, 96.03), (94.65, 97.76, 96.18), (71.76, 75.04, 73.36),
        (95.00, 74.73, 83.65), (90.50, 91.70, 91.09), (36.21, 33.55, 34.83), (80.29, 76.53, 78.36),
        (77.55, 54.99, 64.35), (85.64, 64.34, 73.48), (82.89, 76.67, 79.65),
    ],
    "MaPLe": [
        (76.66, 70.54, 73.47), (97.74, 94.36, 96.02), (95.43, 97.76, 96.58), (72.94, 74.00, 73.47),
        (95.92, 72.46, 82.56), (90.71, 92.05, 91.38), (37.44, 35.61, 36.50), (80.82, 78.70, 79.75),
        (80.36, 59.18, 68.16), (94.07, 73.23, 82.35), (83.00, 78.66, 80.77),
    ],
    "PromptSRC": [
        (77.60, 70.73, 74.01), (98.10, 94.03, 96.02), (95.33, 97.30, 96.30), (78.27, 74.97, 76.58),
        (98.07, 76.50, 85.95), (90.67, 91.53, 91.10), (42.73, 37.87, 40.15), (82.67, 78.47, 80.52),
        (83.37, 62.97, 71.75), (92.90, 73.90, 82.32), (87.10, 78.80, 82.74),
    ],
}

# fmt: on

#: Base-to-new per dataset: method -> dataset folder -> (base, new, HM).
B2N: dict[str, dict[str, tuple[float, float, float]]] = {
    method: dict(zip(BENCHMARK_DATASETS, rows)) for method, rows in _B2N_ROWS.items()
}

#: Base-to-new 11-dataset averages as printed in the papers: method -> (base, new, HM); ``None``
#: where only the HM was published (the withdrawn ICLR-2024 PLPP submission).
B2N_AVERAGE: dict[str, tuple[float | None, float | None, float]] = {
    "CLIP": (69.34, 74.22, 71.70),
    "CoOp": (82.69, 63.22, 71.66),
    "CoCoOp": (80.47, 71.69, 75.83),
    "KgCoOp": (80.73, 73.60, 77.00),
    "MaPLe": (82.28, 75.14, 78.55),
    "PromptSRC": (84.26, 76.10, 79.97),
    "CoOp (PLPP ICLR'24 repro)": (None, None, 71.07),
    "PLPP (ICLR'24, withdrawn)": (None, None, 71.44),
    "CoCoOp (PLPP ICLR'24 repro)": (None, None, 75.23),
    "CoPLPP (ICLR'24, withdrawn)": (None, None, 75.66),
}

# fmt: off
_XD_COLUMNS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "average",
)
# fmt: on
_XD_ROWS: dict[str, tuple[float, ...]] = {
    "CoOp": (71.51, 93.70, 89.14, 64.51, 68.71, 85.30, 18.47, 64.15, 41.92, 46.39, 66.55, 63.88),
    "CoCoOp": (71.02, 94.43, 90.14, 65.32, 71.88, 86.06, 22.94, 67.36, 45.73, 45.37, 68.21, 65.74),
    "MaPLe": (70.72, 93.53, 90.49, 65.57, 72.23, 86.20, 24.74, 67.01, 46.49, 48.06, 68.69, 66.30),
    "PromptSRC": (71.27, 93.60, 90.25, 65.70, 70.25, 86.15, 23.90, 67.10, 46.87, 45.50, 68.75, 65.81),
}
#: Cross-dataset (train ImageNet, zero-shot on 10 targets): method -> column -> accuracy; the
#: ``average`` column is over the 10 targets (not ImageNet).
XD: dict[str, dict[str, float]] = {m: dict(zip(_XD_COLUMNS, r)) for m, r in _XD_ROWS.items()}

_DG_COLUMNS = ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r", "average")
_DG_ROWS: dict[str, tuple[float, ...]] = {
    "CLIP": (66.73, 60.83, 46.15, 47.77, 73.96, 57.18),
    "CoOp": (71.51, 64.20, 47.99, 49.71, 75.21, 59.28),
    "CoCoOp": (71.02, 64.07, 48.75, 50.63, 76.18, 59.91),
    "MaPLe": (70.72, 64.07, 49.15, 50.90, 76.98, 60.27),
    "PromptSRC": (71.27, 64.35, 49.55, 50.90, 77.80, 60.65),
}
#: Domain generalisation (train ImageNet, test its 4 variants): method -> column -> accuracy; the
#: ``average`` column is over the 4 variants.
DG: dict[str, dict[str, float]] = {m: dict(zip(_DG_COLUMNS, r)) for m, r in _DG_ROWS.items()}

#: Few-shot 11-dataset average accuracy: method -> shots -> accuracy (lower confidence).
FEWSHOT_AVERAGE: dict[str, dict[int, float]] = {
    m: dict(zip((1, 2, 4, 8, 16), r))
    for m, r in {
        "Linear-probe CLIP": (45.83, 57.98, 68.01, 74.47, 78.79),
        "CoOp": (67.56, 70.65, 74.02, 76.98, 79.89),
        "CoCoOp": (66.79, 67.65, 71.21, 72.96, 74.90),
        "MaPLe": (69.27, 72.58, 75.37, 78.89, 81.79),
        "PromptSRC": (72.32, 75.29, 78.35, 80.69, 82.87),
    }.items()
}


def b2n_average(method: str) -> tuple[float | None, float | None, float | None]:
    """Published 11-dataset average of a method; computed from its per-dataset rows (HM of the
    averages) when the papers give none, as for ProDA."""
    if method in B2N_AVERAGE:
        return B2N_AVERAGE[method]
    rows = B2N.get(method)
    if not rows:
        return (None, None, None)
    base = sum(r[0] for r in rows.values()) / len(rows)
    new = sum(r[1] for r in rows.values()) / len(rows)
    return (base, new, harmonic_mean(base, new))


def b2n_methods() -> list[str]:
    """Methods with published base-to-new numbers (per-dataset first, then average-only)."""
    return list(B2N) + [m for m in B2N_AVERAGE if m not in B2N]


def for_protocol(protocol: str, methods: list[str] | None = None) -> dict[str, Any]:
    """Published numbers of a protocol as JSON (``fewshot``, ``base2new``, ``xd`` or ``dg``),
    restricted to ``methods`` when given; the shapes mirror our own JSON output."""

    def keep(method: str) -> bool:
        return not methods or method in methods

    if protocol == "base2new":
        out: dict[str, Any] = {}
        for m in b2n_methods():
            if not keep(m):
                continue
            base, new, hm = b2n_average(m)
            rows = B2N.get(m, {})
            out[m] = {
                "datasets": {d: dict(zip(("base", "new", "hm"), v)) for d, v in rows.items()},
                "average": {"base": base, "new": new, "hm": hm},
            }
        return out
    if protocol in ("xd", "dg"):
        table = XD if protocol == "xd" else DG
        return {
            m: {
                "source": {"imagenet": v["imagenet"]},
                "targets": {d: a for d, a in v.items() if d not in ("imagenet", "average")},
                "average": v["average"],
            }
            for m, v in table.items()
            if keep(m)
        }
    if protocol == "fewshot":
        return {
            m: {"average": {str(k): a for k, a in v.items()}} for m, v in FEWSHOT_AVERAGE.items() if keep(m)
        }
    raise ValueError(f"unknown protocol {protocol!r}")


def all_methods(protocol: str) -> list[str]:
    """Names of the published methods of a protocol (for ``--published-methods`` validation)."""
    return list(for_protocol(protocol))
