"""Render summaries as text tables (tabulate), JSON documents and CSV rows.

Text tables show ``mean ± std`` (or ``± CI95``) with two decimals; a cell with fewer seeds than
expected gets ``[n=K]`` and a single seed shows no ``±`` at all; an en dash marks a cell without any
result. A cell that holds numbers from weights that are not an OpenAI release carries a tag
(``[random]``, ``[proxy]``, ``[other]``; ``[?]`` where the weights were not recorded), explained under
the table. Published numbers, when requested, come from :mod:`plpp.results.published` and are only
averaged over the same datasets as ours; their sources are printed with them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any, Union

from tabulate import tabulate

from . import published as pub
from .aggregate import Base2NewSummary, FewShotSummary, Stat, TransferSummary
from .names import SOURCE_DATASET, display_name
from .records import UNRECORDED

DASH = "\u2013"  # en dash
Summary = Union[FewShotSummary, Base2NewSummary, TransferSummary]  # runtime alias: Python 3.9
Published = dict[str, pub.Row]

#: Tag shown in a cell per kind of backbone weights (OpenAI releases get none).
WEIGHT_TAGS: dict[str, str] = {"random": "[random]", "proxy_world": "[proxy]", "other": "[other]", UNRECORDED: "[?]"}
#: What each tag means (the labels of plpp.provenance, repeated here so this module needs no torch).
WEIGHT_LEGEND: dict[str, str] = {
    "random": "random weights: not a result",
    "proxy_world": "synthetic proxy world: not a result on real data",
    "other": "weights that are not an OpenAI release (see backbone_weights in results.json)",
    UNRECORDED: "backbone weights not recorded (result read from log.txt or an older results.json)",
}


def fmt(value: float | None) -> str:
    """Two-decimal percentage, or a dash for ``None``."""
    return DASH if value is None else f"{value:.2f}"


def weight_tags(kinds: Iterable[str]) -> str:
    """The tags of the non-OpenAI kinds among ``kinds`` (``""`` when all are OpenAI releases)."""
    return "".join(WEIGHT_TAGS.get(k, f"[{k}]") for k in sorted(set(kinds)) if k != "openai")


def fmt_stat(stat: Stat, expected_n: int, ci95: bool = False, spread: bool = True) -> str:
    """``mean ± std`` (or CI95; none for one seed), ``[n=K]`` when fewer seeds than expected, and the
    weights tag."""
    if stat.n == 0:
        return DASH
    text = fmt(stat.mean)
    if spread and stat.n > 1:
        text += f" ± {fmt(stat.spread(ci95))}"
    if stat.n < expected_n:
        text += f" [n={stat.n}]"
    tags = weight_tags(stat.kinds)
    return f"{text} {tags}" if tags else text


def spread_name(ci95: bool) -> str:
    """What the ± column means."""
    return "CI95 (1.96·std/√n)" if ci95 else "std (population, np.std)"


def _seeds(seeds: Sequence[int]) -> str:
    return ",".join(str(s) for s in seeds) or "none"


def seeds_header(summary: Summary) -> str:
    """``seeds 1,2 found (expected 1,2,3)``: the seeds that gave results, and the expected ones if they differ."""
    found = summary.seeds_found
    text = f"seed{'s' if len(found) != 1 else ''} {_seeds(found)}"
    if tuple(found) != tuple(summary.seeds):
        text += f" (expected {_seeds(summary.seeds)})"
    return text


def stat_header(summary: Summary, ci95: bool) -> str:
    """What the cells hold: ``mean ± <spread> over seeds ...``, or the single seed's value."""
    if len(summary.seeds) <= 1 and len(summary.seeds_found) <= 1:
        return f"one run per cell ({seeds_header(summary)}): no spread"
    return f"mean ± {spread_name(ci95)} over {seeds_header(summary)}"


def summary_kinds(summary: Summary) -> set[str]:
    """Every kind of backbone weights behind a summary's numbers."""
    return {k for stat in summary.stats.values() for k in stat.weights}


def weights_legend(kinds: Iterable[str]) -> list[str]:
    """One line per non-OpenAI tag present, saying what it means."""
    return [f"{WEIGHT_TAGS.get(k, f'[{k}]')} {WEIGHT_LEGEND.get(k, k)}" for k in sorted(set(kinds)) if k != "openai"]


def _title(text: str, kinds: Iterable[str]) -> str:
    """The table title, preceded by a ``NOT A RESULT`` line when random or proxy-world weights are in it."""
    bad = [k for k in kinds if k in ("random", "proxy_world")]
    if bad:
        text = "NOT A RESULT: " + "; ".join(sorted({WEIGHT_LEGEND[k] for k in bad})) + "\n" + text
    return text


def _legend_block(kinds: Iterable[str]) -> str:
    lines = weights_legend(kinds)
    return ("\n" + "\n".join(lines)) if lines else ""


def _table(rows: list[list[str]], headers: list[str]) -> str:
    return str(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))


def _dedupe(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))


# ------------------------------------------------------------------------------------------ text tables


def fewshot_table(summary: FewShotSummary, ci95: bool = False, published: Published | None = None) -> str:
    """Rows: datasets then the average over datasets (and published averages over the same datasets);
    columns: shots."""
    n = len(summary.seeds)
    headers = ["Dataset"] + [f"{k} shot{'s' if k > 1 else ''}" for k in summary.shots]
    rows = [
        [display_name(d)] + [fmt_stat(summary.stat(d, k), n, ci95) for k in summary.shots]
        for d in summary.datasets
    ]
    avg_row = ["Average"]
    for k in summary.shots:
        mean, used = summary.average(k)
        tags = weight_tags(k_ for d in summary.datasets for k_ in summary.stat(d, k).weights)
        avg_row.append(fmt(mean) + (f" ({used} ds)" if used != len(summary.datasets) else "")
                       + (f" {tags}" if tags and mean is not None else ""))
    rows.append(avg_row)
    notes: list[str] = []
    for name, row in (published or {}).items():
        comps = [pub.comparable_average("fewshot", row, summary.average_datasets(k), k) for k in summary.shots]
        if any(c.values is not None for c in comps):
            rows.append([f"{name} (published)"] + [fmt(c.values) for c in comps])
        notes += [f"{name}: {c.how}" for c in comps if c.values is None]
    title = _title(
        f"Few-shot: {summary.method.label} — {stat_header(summary, ci95)};"
        f" Average = mean over the datasets with a result",
        summary_kinds(summary),
    )
    text = title + "\n" + _table(rows, headers) + _legend_block(summary_kinds(summary))
    if notes:
        text += "\nPublished averages not shown (they would cover other datasets than ours):\n  " + \
            "\n  ".join(_dedupe(notes))
    return text


def base2new_table(summary: Base2NewSummary, ci95: bool = False, published: Published | None = None) -> str:
    """Per-dataset base/new/HM, the average row, then (with ``published``) a comparison of averages over
    the same datasets.

    Per-dataset published numbers are shown as HM columns; the comparison lists base/new/HM of every
    published method whose numbers cover our datasets.
    """
    n = len(summary.seeds)
    pub_cols = [m for m, r in (published or {}).items() if any(d in r.datasets for d in summary.datasets)]
    headers = ["Dataset", "Base", "New", "HM", "seeds (base/new)"] + [f"{m} HM" for m in pub_cols]
    rows = []
    for d in summary.datasets:
        base, new = summary.base(d), summary.new(d)
        row = [display_name(d), fmt_stat(base, n, ci95), fmt_stat(new, n, ci95), fmt(summary.hm(d))]
        row.append(f"{base.n}/{new.n}")
        row += [fmt(published[m].datasets[d][2]) if d in published[m].datasets else DASH  # type: ignore[index]
                for m in pub_cols]
        rows.append(row)
    avg = summary.average()
    tags = weight_tags(k for d in avg["datasets"] for k in summary.base(d).weights + summary.new(d).weights)
    avg_row = ["Average", fmt(avg["base"]), fmt(avg["new"]), fmt(avg["hm"]) + (f" {tags}" if tags else ""),
               f"{avg['n_datasets']} ds"]
    for m in pub_cols:
        comp = pub.comparable_average("base2new", published[m], avg["datasets"])  # type: ignore[index]
        avg_row.append(DASH if comp.values is None else fmt(comp.values[2]))
    rows.append(avg_row)
    kinds = summary_kinds(summary)
    title = _title(f"Base-to-new: {summary.method.label} — {stat_header(summary, ci95)}", kinds)
    note = (
        "HM = 2·B·N/(B+N) of the seed means; Average = mean over the datasets with both halves of base and of "
        "new, HM of those two"
    )
    text = title + "\n" + _table(rows, headers) + _legend_block(kinds) + "\n" + note
    if published:
        used = avg["datasets"]
        comp_rows = [[f"{summary.method.label} (ours)", fmt(avg["base"]), fmt(avg["new"]), fmt(avg["hm"]), ""]]
        left_out = []
        for m, row_ in published.items():
            comp = pub.comparable_average("base2new", row_, used)
            if comp.values is None:
                left_out.append(f"{m}: {comp.how}")
                continue
            comp_rows.append([m, *(fmt(v) for v in comp.values), comp.how])
        text += f"\n\nAverage over the same {len(used)} dataset(s) ({', '.join(map(display_name, used)) or 'none'})" \
                ": ours vs published\n" + _table(comp_rows, ["Method", "Base", "New", "HM", "published average"])
        if left_out:
            text += "\nPublished averages not shown (they would cover other datasets than ours):\n  " + \
                "\n  ".join(left_out)
    return text


def transfer_table(summaries: Sequence[TransferSummary], ci95: bool = False,
                   published: Published | None = None) -> str:
    """One table for all methods: ImageNet (source), each target, target average.

    Our methods take two rows: the means, then the ± values (``[n=K]`` marks short cells). Published
    averages are recomputed over the targets our averages cover (when all our methods cover the same).
    """
    first = summaries[0]
    protocol = "Cross-dataset" if first.protocol == "xd" else "Domain generalisation"
    targets = first.targets
    headers = ["Method", display_name(SOURCE_DATASET)] + [display_name(d) for d in targets] + ["Average"]
    rows = []
    kinds: set[str] = set()
    for s in summaries:
        n = len(s.seeds)
        cells = [s.source] + [s.target(d) for d in targets]
        mean, used = s.average()
        tags = weight_tags(k for d in targets for k in s.target(d).weights)
        rows.append(
            [s.method.label]
            + [fmt_stat(c, n, spread=False) for c in cells]
            + [fmt(mean) + (f" ({used} ds)" if used != len(targets) else "") + (f" {tags}" if tags else "")]
        )
        rows.append(
            [f"  ± {'CI95' if ci95 else 'std'} ({seeds_header(s)})"]
            + [fmt(c.spread(ci95)) for c in cells]
            + [""]
        )
        kinds |= summary_kinds(s)
    covered = {tuple(s.average_datasets()) for s in summaries}
    notes = []
    for method, row in (published or {}).items():
        if len(covered) == 1:
            comp = pub.comparable_average(first.protocol, row, list(next(iter(covered))))
            average = fmt(comp.values)
            if comp.values is None:
                notes.append(f"{method}: {comp.how}")
            elif not comp.how.startswith("printed"):
                average += " (same ds)"
        else:
            average = DASH
            notes.append(f"{method}: our methods average over different targets")
        rows.append([f"{method} (published)", fmt(row.source_value)]
                    + [fmt(row.datasets.get(d)) for d in targets] + [average])
    title = _title(f"{protocol}: trained on ImageNet, Average over the targets with a result (not ImageNet)",
                   kinds)
    text = title + "\n" + _table(rows, headers) + _legend_block(kinds)
    if published:
        text += "\nPublished averages are over the same targets as ours ('same ds': recomputed from the " \
                "per-target rows)."
    if notes:
        text += "\nPublished averages not shown:\n  " + "\n  ".join(_dedupe(notes))
    return text


def render_tables(protocol: str, summaries: Sequence[Summary], ci95: bool = False,
                  published: Published | None = None) -> str:
    """All text tables of a protocol, one per method (one table for all methods in xd/dg), and the
    sources of the published numbers shown."""
    if protocol in ("xd", "dg"):
        text = transfer_table(summaries, ci95, published)  # type: ignore[arg-type]
    else:
        render = fewshot_table if protocol == "fewshot" else base2new_table
        text = "\n\n".join(render(s, ci95, published) for s in summaries)  # type: ignore[arg-type]
    if published:
        lines = pub.sources(protocol, list(published))
        if protocol == "base2new" and any(r.trainer == "CoOp" for r in published.values()):
            lines.append(pub.COOP_BASELINE_NOTE)
        text += "\n\nSources of the published numbers (ViT-B/16, 3 seeds):\n  " + "\n  ".join(lines)
    return text


# ---------------------------------------------------------------------------------------------- JSON


def published_json(protocol: str, published: Published) -> dict[str, Any]:
    """The published rows as JSON: trainer, setting, source and the numbers (per dataset and the
    printed average over all the protocol's datasets)."""
    out: dict[str, Any] = {}
    for name, row in published.items():
        entry = row.to_dict()
        if protocol == "base2new":
            entry["datasets"] = {d: dict(zip(("base", "new", "hm"), v)) for d, v in row.datasets.items()}
            entry["average"] = dict(zip(("base", "new", "hm"), row.average)) if row.average else None
        elif protocol == "fewshot":
            entry["average"] = {str(k): v for k, v in (row.average or {}).items()}
        else:
            entry["source_dataset"] = {SOURCE_DATASET: row.source_value}
            entry["targets"] = dict(row.datasets)
            entry["average"] = row.average
        out[name] = entry
    return out


def comparisons(protocol: str, summary: Summary, row: pub.Row) -> dict[int | None, pub.Comparable]:
    """A published row's averages over the same datasets as one of our summaries' averages, keyed by
    shots (few-shot) or ``None`` (the other protocols)."""
    if isinstance(summary, FewShotSummary):
        return {k: pub.comparable_average("fewshot", row, summary.average_datasets(k), k) for k in summary.shots}
    if isinstance(summary, Base2NewSummary):
        return {None: pub.comparable_average("base2new", row, summary.average()["datasets"])}
    return {None: pub.comparable_average(protocol, row, summary.average_datasets())}


def comparisons_json(protocol: str, summary: Summary, published: Published) -> dict[str, Any]:
    """``{published name: comparable average}`` (few-shot: ``{name: {shots: ...}}``) for one summary."""
    out: dict[str, Any] = {}
    for name, row in published.items():
        comps = comparisons(protocol, summary, row)
        out[name] = {str(k): c.to_dict() for k, c in comps.items()} if protocol == "fewshot" else comps[None].to_dict()
    return out


def to_json(protocol: str, summaries: Sequence[Summary], ci95: bool = False,
            published: Published | None = None) -> dict[str, Any]:
    """JSON document: one method's dict at the top level, or ``{"methods": {label: dict}}`` when
    several methods are present; with ``published``, each method's dict gets ``published_comparison``
    and the top level ``published`` (the rows and their sources)."""

    def one(s: Summary) -> dict[str, Any]:
        d = s.to_dict(ci95)
        d["weights"] = sorted(summary_kinds(s))
        if published is not None:
            d["published_comparison"] = comparisons_json(protocol, s, published)
        return d

    doc = one(summaries[0]) if len(summaries) == 1 else {"methods": {s.method.label: one(s) for s in summaries}}
    if published is not None:
        doc["published"] = published_json(protocol, published)
    return doc


# ----------------------------------------------------------------------------------------------- CSV

_ID = ["method", "trainer", "cfg", "variant", "dataset"]
CSV_FIELDS: dict[str, list[str]] = {
    "fewshot": [*_ID, "shots", "mean", "std", "n", "n_datasets", "weights", "note"],
    "base2new": [*_ID, "base_mean", "base_std", "base_n", "new_mean", "new_std", "new_n", "hm", "n_datasets",
                 "weights", "note"],
    "xd": [*_ID, "role", "mean", "std", "n", "n_datasets", "weights", "note"],
}
CSV_FIELDS["dg"] = CSV_FIELDS["xd"]


def _stat_cols(stat: Stat, prefix: str = "", ci95: bool = False) -> dict[str, Any]:
    cols = {f"{prefix}mean": stat.mean, f"{prefix}std": stat.std, f"{prefix}n": stat.n}
    if ci95:
        cols[f"{prefix}ci95"] = stat.ci95
    return cols


def _kinds(*stats: Stat) -> str:
    return "+".join(sorted({k for s in stats for k in s.weights}))


def _published_csv_rows(protocol: str, summaries: Sequence[Summary], published: Published) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, row in published.items():
        ident = {"method": f"published:{name}", "trainer": row.trainer, "note": row.source}
        if protocol == "base2new":
            rows += [{**ident, "dataset": d, "base_mean": v[0], "new_mean": v[1], "hm": v[2]}
                     for d, v in row.datasets.items()]
        elif protocol in ("xd", "dg"):
            rows.append({**ident, "dataset": SOURCE_DATASET, "role": "source", "mean": row.source_value})
            rows += [{**ident, "dataset": d, "role": "target", "mean": v} for d, v in row.datasets.items()]
        for s in summaries:
            for shots, comp in comparisons(protocol, s, row).items():
                if comp.values is None:
                    continue
                avg = {**ident, "dataset": "average", "n_datasets": len(comp.datasets),
                       "note": f"over the datasets of {s.method.label}: {comp.how}; {row.source}"}
                if protocol == "base2new":
                    avg.update(base_mean=comp.values[0], new_mean=comp.values[1], hm=comp.values[2])
                elif protocol == "fewshot":
                    avg.update(shots=shots, mean=comp.values)
                else:
                    avg.update(role="average", mean=comp.values)
                rows.append(avg)
    return rows


def csv_rows(protocol: str, summaries: Sequence[Summary], ci95: bool = False,
             published: Published | None = None) -> list[dict[str, Any]]:
    """One row per (method, dataset[, shots]) plus ``average`` rows (``n_datasets`` filled) and, with
    ``published``, rows whose method is ``published:<name>`` (their averages over our datasets only)."""
    rows: list[dict[str, Any]] = []
    for s in summaries:
        ident = {"method": s.method.label, **s.method.to_dict()}
        if isinstance(s, FewShotSummary):
            for d in s.datasets:
                rows += [
                    {**ident, "dataset": d, "shots": k, **_stat_cols(s.stat(d, k), ci95=ci95),
                     "weights": _kinds(s.stat(d, k))}
                    for k in s.shots
                    if (d, k) in s.stats
                ]
            for k in s.shots:
                mean, used = s.average(k)
                rows.append({**ident, "dataset": "average", "shots": k, "mean": mean, "n_datasets": used,
                             "weights": _kinds(*(s.stat(d, k) for d in s.datasets))})
        elif isinstance(s, Base2NewSummary):
            for d in s.datasets:
                rows.append({**ident, "dataset": d, **_stat_cols(s.base(d), "base_", ci95),
                             **_stat_cols(s.new(d), "new_", ci95), "hm": s.hm(d),
                             "weights": _kinds(s.base(d), s.new(d))})
            avg = s.average()
            rows.append({**ident, "dataset": "average", "base_mean": avg["base"], "new_mean": avg["new"],
                         "hm": avg["hm"], "n_datasets": avg["n_datasets"],
                         "weights": _kinds(*s.stats.values())})
        else:
            rows.append({**ident, "dataset": SOURCE_DATASET, "role": "source", **_stat_cols(s.source, ci95=ci95),
                         "weights": _kinds(s.source)})
            rows += [
                {**ident, "dataset": d, "role": "target", **_stat_cols(s.target(d), ci95=ci95),
                 "weights": _kinds(s.target(d))}
                for d in s.targets
            ]
            mean, used = s.average()
            rows.append({**ident, "dataset": "average", "role": "average", "mean": mean, "n_datasets": used,
                         "weights": _kinds(*(s.target(d) for d in s.targets))})
    if published:
        rows += _published_csv_rows(protocol, summaries, published)
    return rows


def to_csv(protocol: str, summaries: Sequence[Summary], ci95: bool = False,
           published: Published | None = None) -> str:
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
