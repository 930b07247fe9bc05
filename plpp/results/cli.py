"""``plpp-results``: summarise an output tree of few-shot, base-to-new, cross-dataset or domain-
generalisation runs as tables, JSON or CSV, optionally next to the published numbers, and plot the
few-shot curves.

Exit status: 0 on success, 1 with ``--strict`` when expected results are missing or a ``results.json``
contradicts its folder, 2 on a user error (missing directory, no runs found, unknown
trainer/cfg/dataset/published method).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import published as pub
from .aggregate import (
    backbones,
    group_by_method,
    log_missing,
    summarize_base2new,
    summarize_fewshot,
    summarize_transfer,
)
from .console import configure_logging
from .layout import LayoutError, Run, find_base2new_runs, find_fewshot_runs, find_transfer_runs
from .names import DG_TARGETS, DISPLAY_NAMES, SOURCE_DATASET, XD_TARGETS
from .tables import render_tables, to_csv, to_json

logger = logging.getLogger("plpp.results")

PROG = "plpp-results"

LAYOUTS = {
    "fewshot": "ROOT/<dataset>/<TRAINER>/<cfg>_<K>shots[/nctx<N>_csc<CSC>_ctp<CTP>]/seed<S>",
    "base2new": "ROOT[/base2new]/{train_base,test_new}/<dataset>/shots_16/<TRAINER>/<cfg>/seed<S>",
    "xd": (
        "ROOT/evaluation/<TRAINER>/<cfg>_16shots/<dataset>/seed<S> "
        "(+ ROOT/imagenet/<TRAINER>/<cfg>_16shots/seed<S>)"
    ),
}
LAYOUTS["dg"] = LAYOUTS["xd"]

EPILOG = """\
statistics:
  Each cell is the mean over seeds ± the population standard deviation (np.std, ddof=0, as CoOp's
  parse_test_res.py); --ci95 shows 1.96*std/sqrt(n) instead. n = seeds with a result.
  base2new: HM = 2*B*N/(B+N) of the seed MEANS of base and new (never the mean of per-seed HMs); the
  average row is the mean over datasets of the base means and of the new means, HM of those two.
  xd/dg: Average = mean over the targets (10 for xd, the 4 ImageNet variants for dg), not ImageNet.

results:
  results.json (written by the PLPP engine) is read first; otherwise log.txt (or the newest
  log.txt-<timestamp> of a rerun): the accuracy after 'Finish training'/'Finished training' for
  training runs, after '=> result' for eval-only runs (test_new, evaluation/).

what is expected:
  What you ask for (--datasets, --shots, --seeds), else what the tree implies: the datasets, shots
  and seeds found for each method (xd/dg: all targets of the protocol). Every expected seed, cell or
  dataset without a result (crashed) is logged as a warning on stderr and listed under "missing" in
  JSON; averages over datasets say how many datasets they used. Headers state the seeds found.

checked records:
  Each results.json is checked against the folder it sits in (trainer, dataset, shots, seed,
  base/new half, evaluation or training run, CoOp's nctx/csc/ctp folder against config.yaml). A run
  that contradicts its folder is left out and reported ("mismatched"; an error with --strict).
  Records in sub-folders of a run are never taken for runs.

weights:
  Cells whose numbers come from weights that are not an OpenAI release are tagged: [random]
  (random weights: not a result), [proxy] (synthetic proxy world: not a result on real data),
  [other] (another file), [?] (not recorded: log.txt or an older results.json).

published numbers:
  --compare published adds the peers' published numbers with their sources. Averages are compared
  like with like: over the same datasets as ours (the printed average when ours covers all of the
  protocol's datasets, else recomputed from the per-dataset rows); where only an 11-dataset average
  is published, none is shown beside a partial average of ours.

several methods:
  Runs are grouped by method = (trainer, cfg[, variant folder]). Tables: one per method (xd/dg: one
  row pair per method). JSON: a single method's summary is the top-level object; with several
  methods the top level is {"methods": {"TRAINER/cfg[/variant]": summary, ...}}. Use --trainer and
  --cfg to select one.

exit status: 0 ok, 1 missing or mismatched results with --strict, 2 user error.
"""


class UserError(Exception):
    """A problem with the command line or the output tree, reported as one line, exit status 2."""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, metavar="OUTPUT_ROOT", help="output root of the runs")
    p.add_argument(
        "--trainer", action="append", metavar="NAME", help="only this trainer (case-insensitive; repeatable)"
    )
    p.add_argument(
        "--cfg",
        action="append",
        metavar="NAME",
        help="only this config name (with or without the _<K>shots suffix; repeatable)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="S",
        help="expected seeds; other seeds are ignored (default: the seeds found for each method)",
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        help="only these dataset folders (e.g. oxford_pets dtd); each one is expected (default: those found)",
    )
    p.add_argument("--ci95", action="store_true", help="show the 95%% confidence interval 1.96*std/sqrt(n)")
    p.add_argument("--compare", choices=["published"], help="add the published numbers of the peer methods")
    p.add_argument(
        "--published-methods",
        metavar="M1,M2",
        help="with --compare: only these published methods (comma-separated)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more diagnostics on stderr")
    p.add_argument(
        "--strict", action="store_true",
        help="exit with status 1 if any expected result is missing or any results.json contradicts its folder"
    )


def _add_shots(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shots", type=int, nargs="+", metavar="K",
                   help="only these shots; each one is expected (default: those found for each method)")


def build_parser() -> argparse.ArgumentParser:
    """The ``plpp-results`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Summarise PLPP/CoOp-style output trees over seeds and datasets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fewshot,base2new,xd,dg,plot}")
    helps = {
        "fewshot": "few-shot accuracy per dataset x shots",
        "base2new": "base-to-new generalisation: base, new, harmonic mean",
        "xd": "cross-dataset transfer: ImageNet source + 10 targets",
        "dg": "domain generalisation: ImageNet + -V2/-Sketch/-A/-R",
    }
    for name, text in helps.items():
        p = sub.add_parser(
            name,
            help=text,
            description=f"{text}. Layout: {LAYOUTS[name]}",
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_common(p)
        if name == "fewshot":
            _add_shots(p)
        p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    p = sub.add_parser(
        "plot",
        help="plot accuracy vs shots (PNG)",
        description="Accuracy vs shots per method: the average over datasets and one panel "
        f"per dataset. Layout: {LAYOUTS['fewshot']}",
    )
    p.add_argument("protocol", choices=["fewshot"], help="what to plot")
    _add_common(p)
    _add_shots(p)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FIG.png", help="figure file to write")
    return parser


def _strip_shots(cfg: str) -> str:
    return re.sub(r"_\d+shots$", "", cfg)


def select(runs: list[Run], trainers: Sequence[str] | None, cfgs: Sequence[str] | None) -> list[Run]:
    """Keep the runs of the requested trainers and configs (``None`` keeps everything)."""
    if trainers:
        wanted = {t.lower() for t in trainers}
        runs = [r for r in runs if r.method.trainer.lower() in wanted]
    if cfgs:
        wanted_cfg = set(cfgs)
        runs = [r for r in runs if r.method.cfg in wanted_cfg or _strip_shots(r.method.cfg) in wanted_cfg]
    return runs


def _published(args: argparse.Namespace, protocol: str) -> dict[str, pub.Row] | None:
    if args.compare != "published":
        if args.published_methods:
            raise UserError("--published-methods needs --compare published")
        return None
    names = [m.strip() for m in args.published_methods.split(",") if m.strip()] if args.published_methods else None
    try:
        return pub.rows(protocol, names)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None


def _targets(protocol: str, datasets: list[str] | None) -> tuple[str, ...]:
    """The transfer targets to expect: the protocol's, restricted to ``--datasets`` when given."""
    targets = XD_TARGETS if protocol == "xd" else DG_TARGETS
    if datasets is None:
        return targets
    unknown = [d for d in datasets if d not in targets and d != SOURCE_DATASET]
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not a {protocol} target; the targets are {', '.join(targets)}")
    return tuple(d for d in targets if d in datasets)


def _check_datasets(found: list[Run], datasets: list[str] | None) -> None:
    """Refuse dataset names that are neither in the tree nor known (a typo, not a missing run)."""
    if datasets is None:
        return
    known = {r.dataset for r in found} | set(DISPLAY_NAMES)
    unknown = [d for d in datasets if d not in known]
    if unknown:
        in_tree = ", ".join(sorted({r.dataset for r in found}))
        raise UserError(f"unknown dataset {', '.join(unknown)}: use dataset folder names (found here: {in_tree})")


def _warn_mixed_backbones(runs: list[Run]) -> None:
    """One warning per method whose counted runs come from more than one backbone file."""
    for method, mruns in group_by_method(runs).items():
        groups = backbones(mruns)
        if len(groups) > 1:
            shown = "; ".join(f"{ident[:12]}: {', '.join(sorted({r.dataset for r in g}))}"
                              for ident, g in groups.items())
            logger.warning("%s: its runs come from %d different backbone files (%s); their numbers do not "
                           "belong in one table", method.label, len(groups), shown)


def _find(protocol: str, root: Path) -> list[Run]:
    if protocol == "fewshot":
        return find_fewshot_runs(root)
    if protocol == "base2new":
        return find_base2new_runs(root)
    return find_transfer_runs(root, XD_TARGETS if protocol == "xd" else DG_TARGETS)


def _summaries(protocol: str, args: argparse.Namespace, runs: list[Run]) -> list[Any]:
    if protocol == "fewshot":
        return summarize_fewshot(args.root, runs, args.seeds, args.datasets, args.shots)
    if protocol == "base2new":
        return summarize_base2new(args.root, runs, args.seeds, args.datasets)
    return summarize_transfer(protocol, args.root, runs, _targets(protocol, args.datasets), args.seeds)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed command line; raises :class:`UserError` for user errors."""
    protocol = args.protocol if args.command == "plot" else args.command
    published = _published(args, protocol)
    try:
        found = _find(protocol, args.root)
    except LayoutError as exc:
        raise UserError(str(exc)) from exc
    if not found:
        raise UserError(f"no {protocol} runs found under '{args.root}' (expected {LAYOUTS[protocol]})")
    _check_datasets(found, args.datasets)
    runs = select(found, args.trainer, args.cfg)
    if not runs:
        raise UserError(
            f"no {protocol} runs of trainer {args.trainer or 'any'} / cfg {args.cfg or 'any'} under "
            f"'{args.root}'; found: {', '.join(sorted({r.method.label for r in found}))}"
        )
    if args.datasets is not None:
        runs = [r for r in runs if r.dataset in args.datasets or r.part == "source"]
    shots = getattr(args, "shots", None)
    if shots is not None:
        runs = [r for r in runs if r.shots in shots]
    if not runs:
        raise UserError(f"no {protocol} runs of datasets {' '.join(args.datasets or ['any'])} / shots "
                        f"{' '.join(map(str, shots or [])) or 'any'} under '{args.root}'")
    summaries = _summaries(protocol, args, runs)
    n_missing = log_missing(summaries)
    if n_missing:
        logger.warning("%d expected result(s) missing, incomplete or mismatched (listed above)", n_missing)
    _warn_mixed_backbones(runs)

    if args.command == "plot":
        from .plot import plot_fewshot  # matplotlib is only needed here

        plot_fewshot(summaries, args.output, published, args.ci95)
        print(f"wrote {args.output}")
    elif args.format == "json":
        print(json.dumps(to_json(protocol, summaries, args.ci95, published), indent=2))
    elif args.format == "csv":
        sys.stdout.write(to_csv(protocol, summaries, args.ci95, published))
    else:
        print(render_tables(protocol, summaries, args.ci95, published))
    return 1 if (args.strict and n_missing) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``plpp-results``; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(logger, PROG, args.verbose)
    try:
        return run(args)
    except UserError as exc:
        logger.error("%s", exc)
        return 2
