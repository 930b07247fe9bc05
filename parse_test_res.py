"""Summarise the test results of the seed folders of one experiment, like CoOp's ``parse_test_res.py``.

Usage::

    python parse_test_res.py output/oxford_pets/PLPP/vit_b16_ep50_16shots/nctx16_cscFalse_ctpend
    python parse_test_res.py output/base2new/test_new/dtd/shots_16/PLPP/vit_b16 --test-log
    python parse_test_res.py output/evaluation/PLPP/vit_b16_16shots --test-log --multi-exp

For every non-hidden sub-folder of DIR (sorted; normally ``seed1``, ``seed2``, ...) it reads
``<sub>/log.txt`` and takes the last ``* <keyword>: <x>%`` line after the end signal: ``Finish
training`` (or the pre-Dassl-0.6.1 ``Finished training`` that MaPLe/PromptSRC logs contain), or
``=> result`` with ``--test-log`` (eval-only runs). It prints one ``file: ... accuracy: xx.xx%.``
line per seed and ``* accuracy: mean% +- std%`` with the population std (``np.std``), or the 95%
confidence interval ``1.96*std/sqrt(n)`` with ``--ci95``. ``--multi-exp`` treats DIR as a folder of
experiments (``DIR/<exp>/seed*``) and also prints the average over experiments. The base-to-new
harmonic mean is computed by ``plpp-results base2new``, not here.

The matching rule is the one of :mod:`plpp.results.parse`. Errors (missing folder or ``log.txt``,
nothing found) are reported on one line with exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from plpp.results.console import configure_logging
from plpp.results.parse import LOG_FILE, RESULT_SIGNAL, TRAIN_END_SIGNALS, match_metrics, read_lines

PROG = "parse_test_res.py"
logger = logging.getLogger("parse_test_res")


class ParseError(Exception):
    """A folder or log that cannot be summarised; reported as one line."""


def listdir_nohidden(path: Path) -> list[Path]:
    """Sorted non-hidden sub-folders of ``path``."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def compute_ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean, ``1.96 * std / sqrt(n)``."""
    return float(1.96 * np.std(values) / np.sqrt(len(values)))


def parse_directory(directory: Path, keyword: str, end_signals: Sequence[str], ci95: bool) -> float:
    """Print the per-seed lines and the summary of one experiment folder; return the mean."""
    if not directory.is_dir():
        raise ParseError(f"'{directory}' is not a directory")
    print(f"Parsing files in {directory}")
    subdirs = listdir_nohidden(directory)
    if not subdirs:
        hint = (
            " (it looks like a single run: pass its parent folder)"
            if (directory / LOG_FILE).is_file()
            else ""
        )
        raise ParseError(f"no run folders (seed*) in '{directory}'{hint}")
    values: list[float] = []
    empty: list[Path] = []
    for subdir in subdirs:
        log = subdir / LOG_FILE
        if not log.is_file():
            raise ParseError(f"missing log file '{log}'")
        found = match_metrics(read_lines(log), end_signals, percent=(keyword,))
        if keyword not in found:
            empty.append(log)
            continue
        values.append(found[keyword])
        print(f"file: {log}. {keyword}: {found[keyword]:.2f}%.")
    signals = " / ".join(repr(s) for s in end_signals)
    if not values:
        tip = "" if RESULT_SIGNAL in end_signals else " (eval-only logs need --test-log)"
        raise ParseError(f"nothing found in '{directory}': no '* {keyword}: x%' line after {signals}{tip}")
    for log in empty:  # CoOp skips these silently; say so, the summary covers fewer seeds
        logger.warning("nothing found in '%s' after %s: left out of the summary", log, signals)
    mean = float(np.mean(values))
    spread = compute_ci95(values) if ci95 else float(np.std(values))
    print("===")
    print(f"Summary of directory: {directory}")
    print(f"* {keyword}: {mean:.2f}% +- {spread:.2f}%")
    print("===")
    return mean


def build_parser() -> argparse.ArgumentParser:
    """Command line of the script (the same options as CoOp's)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path, help="folder holding the seed folders (or experiments)")
    parser.add_argument("--ci95", action="store_true", help="print the 95%% confidence interval, not the std")
    parser.add_argument("--test-log", action="store_true", help="parse eval-only logs (after '=> result')")
    parser.add_argument("--multi-exp", action="store_true", help="DIR holds experiments <exp>/seed*")
    parser.add_argument("--keyword", default="accuracy", help="metric to extract (default: accuracy)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit status (0 ok, 1 error)."""
    args = build_parser().parse_args(argv)
    configure_logging(logger, PROG)
    end_signals = (RESULT_SIGNAL,) if args.test_log else TRAIN_END_SIGNALS
    try:
        if not args.directory.is_dir():
            raise ParseError(f"'{args.directory}' is not a directory")
        if not args.multi_exp:
            parse_directory(args.directory, args.keyword, end_signals, args.ci95)
            return 0
        means = [
            parse_directory(exp, args.keyword, end_signals, args.ci95)
            for exp in listdir_nohidden(args.directory)
        ]
        if not means:
            raise ParseError(f"no experiment folders in '{args.directory}'")
        print("Average performance")
        print(f"* {args.keyword}: {np.mean(means):.2f}%")
        return 0
    except ParseError as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
