"""Few-shot figure in the style of CoOp's: accuracy vs number of shots, one line per method.

The first panel is the average over datasets, then one panel per dataset (error bars: the ±
value of the tables). Published average curves, when given, are drawn dashed in the average panel.
The figure is drawn with the Agg canvas directly, without pyplot, so no display and no global
backend switch is needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .aggregate import FewShotSummary
from .names import dataset_order, display_name

logger = logging.getLogger(__name__)

PANEL_COLUMNS = 4


def plot_fewshot(
    summaries: Sequence[FewShotSummary],
    out: Path,
    published: dict[str, Any] | None = None,
    ci95: bool = False,
    dpi: int = 120,
) -> Path:
    """Write the accuracy-vs-shots figure of ``summaries`` to ``out`` (format from the suffix,
    normally PNG) and return the path."""
    datasets = dataset_order({d for s in summaries for d in s.datasets})
    panels: list[str | None] = [None, *datasets]  # None = average panel
    ncols = min(PANEL_COLUMNS, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    all_shots = sorted({k for s in summaries for k in s.shots})

    for ax, dataset in zip(axes, panels):
        for s in summaries:
            points: list[tuple[int, float | None, float | None]]
            if dataset is None:
                points = [(k, s.average(k)[0], None) for k in s.shots]
            else:
                points = [(k, s.stat(dataset, k).mean, s.stat(dataset, k).spread(ci95)) for k in s.shots]
            points = [p for p in points if p[1] is not None]
            if not points:
                continue
            xs, ys, es = zip(*points)
            yerr = None if dataset is None else list(es)
            ax.errorbar(xs, ys, yerr=yerr, marker="o", markersize=4, capsize=2, label=s.method.label)
        if dataset is None:
            for method, data in (published or {}).items():
                pts = sorted(
                    (int(k), v) for k, v in data["average"].items() if int(k) in all_shots or not all_shots
                )
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, linestyle="--", marker=".", label=f"{method} (published)")
        ax.set_title("Average over datasets" if dataset is None else display_name(dataset))
        ax.set_xscale("log", base=2)
        if all_shots:
            ax.set_xticks(all_shots, [str(k) for k in all_shots])
        ax.set_xlabel("Number of labeled training examples per class")
        ax.set_ylabel("Score (%)")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    logger.info("wrote %s", out)
    return out
