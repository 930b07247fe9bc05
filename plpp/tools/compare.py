"""Compare finished runs side by side: ``python -m plpp.tools.compare RUN_DIR [RUN_DIR ...] [--names A,B]``.

Reads each run's ``results.json`` (written by the engine at the end of training or of an eval-only
run) and prints one table row per run: accuracy, macro-F1 and their differences from the first run
(the baseline). The setting line names the backbone and what it is when it is not an OpenAI release
(random weights: "not a result"). Exit status 0, or 2 when a run has no results.
"""

from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
from collections.abc import Sequence

from tabulate import tabulate

DASH = "\u2013"


class CompareError(Exception):
    """A run directory without usable results."""


def load_results(run_dir: str) -> dict:
    path = osp.join(run_dir, "results.json")
    if not osp.isfile(path):
        raise CompareError(f"no results.json in {run_dir}: the run has not finished (see its log.txt)")
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read {path} ({exc})") from None
    missing = [k for k in ("accuracy", "macro_f1") if not isinstance(results.get(k), (int, float))]
    if missing:
        raise CompareError(f"{path} has no {', '.join(missing)}")
    return results


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def comparison_table(runs: Sequence[tuple[str, dict]]) -> str:
    """Rows ``method, accuracy, macro-F1, Δ accuracy, Δ macro-F1`` (Δ against the first run)."""
    base = runs[0][1]
    rows = []
    for i, (name, res) in enumerate(runs):
        delta = (DASH, DASH) if i == 0 else (_signed(res["accuracy"] - base["accuracy"]),
                                              _signed(res["macro_f1"] - base["macro_f1"]))
        rows.append([name, f"{res['accuracy']:.2f}", f"{res['macro_f1']:.2f}", *delta])
    headers = ["method", "accuracy (%)", "macro-F1 (%)", f"Δ accuracy vs {runs[0][0]}", f"Δ macro-F1 vs {runs[0][0]}"]
    return str(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))


def weights_note(results: Sequence[dict]) -> str:
    """What the backbone files were when they are not OpenAI releases (``""`` otherwise)."""
    from plpp.provenance import KIND_LABELS

    kinds = []
    for res in results:
        record = res.get("backbone_weights")
        kind = record.get("kind") if isinstance(record, dict) else None
        label = KIND_LABELS.get(kind) if kind else "backbone weights not recorded"
        if label and label not in kinds:
            kinds.append(label)
    return "; ".join(kinds)


def setting_line(results: Sequence[dict]) -> str:
    """What the runs were: dataset, shots, seed, test images, backbone (values that differ are listed)."""

    def value(key: str, fmt=str) -> str:
        values = []
        for res in results:
            shown = DASH if res.get(key) is None else fmt(res[key])
            if shown not in values:
                values.append(shown)
        return " / ".join(values)

    note = weights_note(results)
    return (f"{value('dataset')}, {value('num_shots')} shots, seed {value('seed')}, "
            f"{value('total', lambda n: f'{n:,}')} test images, backbone {value('backbone', osp.basename)}"
            + (f" ({note})" if note else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plpp.tools.compare", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders holding results.json; the first is "
                        "the baseline")
    parser.add_argument("--names", help="comma-separated names for the rows (default: each run's trainer)")
    parser.add_argument("--title", help="a line printed above the table (e.g. what the numbers are not)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None and len(names) != len(args.runs):
        parser.error(f"--names has {len(names)} names for {len(args.runs)} runs")
    try:
        results = [load_results(run) for run in args.runs]
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = names or [res.get("trainer") or osp.basename(osp.normpath(run)) for run, res in zip(args.runs, results)]
    if args.title:
        print(args.title)
    note = weights_note(results)
    if "not a result" in note:
        print(f"NOT A RESULT: {note}")
    print(setting_line(results))
    print(comparison_table(list(zip(names, results))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
