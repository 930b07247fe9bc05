"""Render summaries as text tables (tabulate), JSON documents and CSV rows.

Text tables show ``mean ± std`` (or ``± CI95``) with two decimals; a cell with fewer seeds than
expected gets ``[n=K]``; an en dash marks a cell without any result. Published numbers, when requested,
come from :func:`plpp.results.published.for_protocol` so the tables, JSON and CSV agree.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any, Union

from tabulate import tabulate

from .aggregate import Base2NewSummary, FewShotSummary, Stat, TransferSummary
from .names import SOURCE_DATASET, display_name

DASH = "\u2013"  # en dash
Summary = Union[FewShotSummary, Base2NewSummary, TransferSummary]  # runtime alias: Python 3.9


def fmt(value: float | None) -> str:
    """Two-decimal percentage, or a dash for ``None``."""
    return DASH if value is None else f"{value:.2f}"


def fmt_stat(stat: Stat, expected_n: int, ci95: bool = False, spread: bool = True) -> str:
    """``mean ± std`` (or CI95) with ``[n=K]`` when fewer seeds than expected have a result."""
    if stat.n == 0:
        return DASH
    text = fmt(stat.mean)
    if spread:
        text += f" ± {fmt(stat.spread(ci95))}"
    if stat.n < expected_n:
        text += f" [n={stat.n}]"
    return text


def spread_name(ci95: bool) -> str:
    """What the ± column means."""
    return "CI95 (1.96·std/√n)" if ci95 else "std (population, np.std)"


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(str(s) for s in seeds)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    return str(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))


# ------------------------------------------------------------------------------------------ text tables


def fewshot_table(
    summary: FewShotSummary, ci95: bool = False, published: dict[str, Any] | None = None
) -> str:
    """Rows: datasets then the average over datasets (and published averages); columns: shots."""
    n = len(summary.seeds)
    headers = ["Dataset"] + [f"{k} shot{'s' if k > 1 else ''}" for k in summary.shots]
    rows = [
        [display_name(d)] + [fmt_stat(summary.stat(d, k), n, ci95) for k in summary.shots]
        for d in summary.datasets
    ]
    avg_row = ["Average"]
    for k in summary.shots:
        mean, used = summary.average(k)
        avg_row.append(fmt(mean) + (f" ({used} ds)" if used != len(summary.datasets) else ""))
    rows.append(avg_row)
    for method, data in (published or {}).items():
        rows.append([f"{method} (published avg)"] + [fmt(data["average"].get(str(k))) for k in summary.shots])
    title = (
        f"Few-shot: {summary.method.label} — mean ± {spread_name(ci95)} over seeds {_seeds(summary.seeds)};"
        f" average over {len(summary.datasets)} dataset(s)"
    )
    return title + "\n" + _table(rows, headers)


def base2new_table(
    summary: Base2NewSummary, ci95: bool = False, published: dict[str, Any] | None = None
) -> str:
    """Per-dataset base/new/HM, the average row, then (with ``published``) a comparison of averages.

    Per-dataset published numbers are shown as HM columns; the averages table lists base/new/HM of
    every published method next to ours.
    """
    n = len(summary.seeds)
    pub_cols = [m for m, v in (published or {}).items() if v["datasets"]]
    headers = ["Dataset", "Base", "New", "HM", "seeds (base/new)"] + [f"{m} HM" for m in pub_cols]
    rows = []
    for d in summary.datasets:
        base, new = summary.base(d), summary.new(d)
        row = [display_name(d), fmt_stat(base, n, ci95), fmt_stat(new, n, ci95), fmt(summary.hm(d))]
        row.append(f"{base.n}/{new.n}")
        row += [fmt(published[m]["datasets"].get(d, {}).get("hm")) for m in pub_cols]  # type: ignore[index]
        rows.append(row)
    avg = summary.average()
    avg_row = ["Average", fmt(avg["base"]), fmt(avg["new"]), fmt(avg["hm"]), f"{avg['n_datasets']} ds"]
    avg_row += [fmt(published[m]["average"]["hm"]) for m in pub_cols]  # type: ignore[index]
    rows.append(avg_row)
    title = (
        f"Base-to-new: {summary.method.label} — mean ± {spread_name(ci95)} over seeds {_seeds(summary.seeds)}"
    )
    note = (
        "HM = 2·B·N/(B+N) of the seed means; Average = mean over datasets of base and of new, HM of those two"
    )
    text = title + "\n" + _table(rows, headers) + "\n" + note
    if published:
        comp = [
            [
                f"{summary.method.label} (ours, {avg['n_datasets']} ds)",
                fmt(avg["base"]),
                fmt(avg["new"]),
                fmt(avg["hm"]),
            ]
        ]
        comp += [
            [m, fmt(v["average"]["base"]), fmt(v["average"]["new"]), fmt(v["average"]["hm"])]
            for m, v in published.items()
        ]
        text += "\n\nAverage over datasets vs published (11 datasets)\n" + _table(
            comp, ["Method", "Base", "New", "HM"]
        )
    return text


def transfer_table(
    summaries: Sequence[TransferSummary], ci95: bool = False, published: dict[str, Any] | None = None
) -> str:
    """One table for all methods: ImageNet (source), each target, target average.

    Our methods take two rows: the means, then the ± values (``[n=K]`` marks short cells).
    """
    first = summaries[0]
    protocol = "Cross-dataset" if first.protocol == "xd" else "Domain generalisation"
    targets = first.targets
    headers = ["Method", display_name(SOURCE_DATASET)] + [display_name(d) for d in targets] + ["Average"]
    rows = []
    for s in summaries:
        n = len(s.seeds)
        cells = [s.source] + [s.target(d) for d in targets]
        mean, used = s.average()
        rows.append(
            [s.method.label]
            + [fmt_stat(c, n, spread=False) for c in cells]
            + [fmt(mean) + (f" ({used} ds)" if used != len(targets) else "")]
        )
        rows.append(
            [f"  ± {'CI95' if ci95 else 'std'} (seeds {_seeds(s.seeds)})"]
            + [fmt(c.spread(ci95)) for c in cells]
            + [""]
        )
    for method, data in (published or {}).items():
        rows.append(
            [f"{method} (published)", fmt(data["source"].get(SOURCE_DATASET))]
            + [fmt(data["targets"].get(d)) for d in targets]
            + [fmt(data["average"])]
        )
    title = f"{protocol}: trained on ImageNet, Average over the {len(targets)} targets (not ImageNet)"
    return title + "\n" + _table(rows, headers)


def render_tables(
    protocol: str, summaries: Sequence[Summary], ci95: bool = False, published: dict[str, Any] | None = None
) -> str:
    """All text tables of a protocol, one per method (one table for all methods in xd/dg)."""
    if protocol in ("xd", "dg"):
        return transfer_table(summaries, ci95, published)  # type: ignore[arg-type]
    render = fewshot_table if protocol == "fewshot" else base2new_table
    return "\n\n".join(render(s, ci95, published) for s in summaries)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- JSON


def to_json(
    summaries: Sequence[Summary], ci95: bool = False, published: dict[str, Any] | None = None
) -> dict[str, Any]:
    """JSON document: one method's dict at the top level, or ``{"methods": {label: dict}}`` when
    several methods are present; ``published`` (when requested) is added at the top level."""
    if len(summaries) == 1:
        doc = summaries[0].to_dict(ci95)
    else:
        doc = {"methods": {s.method.label: s.to_dict(ci95) for s in summaries}}
    if published is not None:
        doc["published"] = published
    return doc


# ----------------------------------------------------------------------------------------------- CSV

CSV_FIELDS: dict[str, list[str]] = {
    "fewshot": ["method", "trainer", "cfg", "variant", "dataset", "shots", "mean", "std", "n", "n_datasets"],
    "base2new": [
        "method",
        "trainer",
        "cfg",
        "variant",
        "dataset",
        "base_mean",
        "base_std",
        "base_n",
        "new_mean",
        "new_std",
        "new_n",
        "hm",
        "n_datasets",
    ],
    "xd": ["method", "trainer", "cfg", "variant", "dataset", "role", "mean", "std", "n", "n_datasets"],
}
CSV_FIELDS["dg"] = CSV_FIELDS["xd"]


def _stat_cols(stat: Stat, prefix: str = "", ci95: bool = False) -> dict[str, Any]:
    cols = {f"{prefix}mean": stat.mean, f"{prefix}std": stat.std, f"{prefix}n": stat.n}
    if ci95:
        cols[f"{prefix}ci95"] = stat.ci95
    return cols


def csv_rows(
    protocol: str, summaries: Sequence[Summary], ci95: bool = False, published: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per (method, dataset[, shots]) plus ``average`` rows (``n_datasets`` filled) and, with
    ``published``, rows whose method is ``published:<name>``."""
    rows: list[dict[str, Any]] = []
    for s in summaries:
        ident = {"method": s.method.label, **s.method.to_dict()}
        if isinstance(s, FewShotSummary):
            for d in s.datasets:
                rows += [
                    {**ident, "dataset": d, "shots": k, **_stat_cols(s.stat(d, k), ci95=ci95)}
                    for k in s.shots
                    if (d, k) in s.stats
                ]
            for k in s.shots:
                mean, used = s.average(k)
                rows.append({**ident, "dataset": "average", "shots": k, "mean": mean, "n_datasets": used})
        elif isinstance(s, Base2NewSummary):
            for d in s.datasets:
                rows.append(
                    {
                        **ident,
                        "dataset": d,
                        **_stat_cols(s.base(d), "base_", ci95),
                        **_stat_cols(s.new(d), "new_", ci95),
                        "hm": s.hm(d),
                    }
                )
            avg = s.average()
            rows.append(
                {
                    **ident,
                    "dataset": "average",
                    "base_mean": avg["base"],
                    "new_mean": avg["new"],
                    "hm": avg["hm"],
                    "n_datasets": avg["n_datasets"],
                }
            )
        else:
            rows.append(
                {**ident, "dataset": SOURCE_DATASET, "role": "source", **_stat_cols(s.source, ci95=ci95)}
            )
            rows += [
                {**ident, "dataset": d, "role": "target", **_stat_cols(s.target(d), ci95=ci95)}
                for d in s.targets
            ]
            mean, used = s.average()
            rows.append({**ident, "dataset": "average", "role": "average", "mean": mean, "n_datasets": used})
    for method, data in (published or {}).items():
        ident = {"method": f"published:{method}"}
        if protocol == "fewshot":
            rows += [
                {**ident, "dataset": "average", "shots": int(k), "mean": v}
                for k, v in data["average"].items()
            ]
        elif protocol == "base2new":
            rows += [
                {**ident, "dataset": d, "base_mean": v["base"], "new_mean": v["new"], "hm": v["hm"]}
                for d, v in data["datasets"].items()
            ]
            avg = data["average"]
            rows.append(
                {
                    **ident,
                    "dataset": "average",
                    "base_mean": avg["base"],
                    "new_mean": avg["new"],
                    "hm": avg["hm"],
                }
            )
        else:
            rows.append(
                {**ident, "dataset": SOURCE_DATASET, "role": "source", "mean": data["source"][SOURCE_DATASET]}
            )
            rows += [{**ident, "dataset": d, "role": "target", "mean": v} for d, v in data["targets"].items()]
            rows.append({**ident, "dataset": "average", "role": "average", "mean": data["average"]})
    return rows


def to_csv(
    protocol: str, summaries: Sequence[Summary], ci95: bool = False, published: dict[str, Any] | None = None
) -> str:
    """CSV text (header + rows); empty cells for values that do not apply or are absent."""
    fields = list(CSV_FIELDS[protocol])
    if ci95:
        fields += ["base_ci95", "new_ci95"] if protocol == "base2new" else ["ci95"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(protocol, summaries, ci95, published):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()
