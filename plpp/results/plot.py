"""Few-shot figure in the style of CoOp's: accuracy vs number of shots, one line per method.

The first panel is the average over datasets, then one panel per dataset (error bars: the ±
value of the tables). Published average curves, when given, are drawn dashed in the average panel,
only at the shots where every plotted average covers the same datasets as the published one (the 11
benchmarks: only 11-dataset averages are published); otherwise the panel says why they are absent.
A method whose numbers come from weights that are not an OpenAI release says so in its legend entry
and in the figure's title (random weights: "not a result"). The figure is drawn with the Agg canvas
directly, without pyplot, so no display and no global backend switch is needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import published as pub
from .aggregate import FewShotSummary
from .names import dataset_order, display_name
from .tables import WEIGHT_LEGEND, summary_kinds

logger = logging.getLogger(__name__)

PANEL_COLUMNS = 4


def _label(summary: FewShotSummary) -> str:
    notes = [WEIGHT_LEGEND[k].split(" (")[0] for k in sorted(summary_kinds(summary)) if k in WEIGHT_LEGEND]
    return summary.method.label + (f" [{'; '.join(notes)}]" if notes else "")


def published_points(summaries: Sequence[FewShotSummary], row: pub.Row) -> list[tuple[int, float]]:
    """``(shots, published average)`` where every summary's average covers the published datasets."""
    points = []
    for k in sorted({k for s in summaries for k in s.shots}):
        comps = [pub.comparable_average("fewshot", row, s.average_datasets(k), k) for s in summaries if k in s.shots]
        if comps and all(c.values is not None for c in comps):
            points.append((k, comps[0].values))
    return points


def plot_fewshot(
    summaries: Sequence[FewShotSummary],
    out: Path,
    published: dict[str, pub.Row] | None = None,
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
            yerr = None if dataset is None else [math.nan if e is None else e for e in es]  # 1 seed: no bar
            ax.errorbar(xs, ys, yerr=yerr, marker="o", markersize=4, capsize=2, label=_label(s))
        if dataset is None and published:
            drawn = False
            for method, row in published.items():
                pts = published_points(summaries, row)
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, linestyle="--", marker=".", label=f"{method} (published)")
                    drawn = True
            if not drawn:
                covered = sorted({len(s.average_datasets(k)) for s in summaries for k in s.shots})
                ax.text(0.02, 0.02, "published 11-dataset averages not drawn:\nours cover "
                        f"{'/'.join(map(str, covered))} dataset(s)", transform=ax.transAxes, fontsize="small",
                        va="bottom")
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
    warnings = sorted({WEIGHT_LEGEND[k] for s in summaries for k in summary_kinds(s)
                       if k in ("random", "proxy_world")})
    if warnings:
        fig.suptitle("NOT A RESULT: " + "; ".join(warnings), color="red")

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    logger.info("wrote %s", out)
    return out
