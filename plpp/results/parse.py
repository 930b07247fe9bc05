"""Read the test result of one run directory, from ``results.json`` or from the Dassl ``log.txt``.

Our trainer engine writes ``results.json`` (format ``plpp-results/1``) next to ``log.txt``; runs made
with the upstream CoOp/CoCoOp/MaPLe/PromptSRC code only have the log. The log parser is the single
implementation of the ``parse_test_res.py`` matching rule, which the root script reuses:

* matching starts after an *end signal* line: ``Finish training`` (Dassl >= 0.6.1, CoOp) or
  ``Finished training`` (older Dassl, as in MaPLe/PromptSRC logs) for training runs, ``=> result``
  for eval-only runs;
* a metric line is ``* <keyword>: <number>%``; the last match wins (the final test comes last).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

LOG_FILE = "log.txt"
RESULTS_JSON = "results.json"
RESULTS_FORMAT_PREFIX = "plpp-results/"

#: Lines printed by Dassl's ``after_train`` before the final test (new and pre-0.6.1 wording).
TRAIN_END_SIGNALS: tuple[str, ...] = ("Finish training", "Finished training")
#: Line printed by Dassl's evaluator before the result block.
RESULT_SIGNAL = "=> result"

#: Metrics printed in percent in the result block.
PERCENT_METRICS: tuple[str, ...] = ("accuracy", "error", "macro_f1")
#: Metrics printed as counts (with thousands separators) in the result block.
COUNT_METRICS: tuple[str, ...] = ("total", "correct")

Mode = Literal["train", "eval", "auto"]


@dataclass(frozen=True)
class RunResult:
    """Test metrics of one run (percentages unrounded) and where they were read from."""

    accuracy: float
    source: Path
    total: int | None = None
    correct: int | None = None
    error: float | None = None
    macro_f1: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def percent_regex(keyword: str) -> re.Pattern[str]:
    """Regex of a percent metric line, the one CoOp's ``parse_test_res.py`` uses."""
    return re.compile(rf"\* {re.escape(keyword)}: ([\.\deE+-]+)%")


def count_regex(keyword: str) -> re.Pattern[str]:
    """Regex of a count line such as ``* total: 1,000`` (Dassl prints thousands separators)."""
    return re.compile(rf"\* {re.escape(keyword)}: ([\d,]+)\s*$")


def end_signals_for(mode: Mode, lines: list[str]) -> tuple[str, ...]:
    """Return the end-signal lines to wait for.

    ``train`` waits for the end of training, ``eval`` for the result header of an eval-only run, and
    ``auto`` uses ``train`` when the log contains an end-of-training line and ``eval`` otherwise.
    """
    if mode == "train":
        return TRAIN_END_SIGNALS
    if mode == "eval":
        return (RESULT_SIGNAL,)
    if any(line.strip() in TRAIN_END_SIGNALS for line in lines):
        return TRAIN_END_SIGNALS
    return (RESULT_SIGNAL,)


def match_metrics(
    lines: Iterable[str],
    end_signals: Iterable[str],
    percent: Iterable[str] = ("accuracy",),
    counts: Iterable[str] = (),
) -> dict[str, float]:
    """Extract metrics from log lines that follow the first end-signal line; the last match wins.

    Returns only the metrics that were found (an empty dict when the end signal never appears or no
    metric line follows it). Counts are returned as floats too; callers convert them.
    """
    signals = set(end_signals)
    regexes = [(k, percent_regex(k), False) for k in percent] + [(k, count_regex(k), True) for k in counts]
    found: dict[str, float] = {}
    started = False
    for raw in lines:
        line = raw.strip()
        if line in signals:
            started = True
        if not started:
            continue
        for name, regex, is_count in regexes:
            match = regex.search(line)
            if match:
                text = match.group(1).replace(",", "") if is_count else match.group(1)
                try:
                    found[name] = float(text)
                except ValueError:
                    logger.debug("unparsable %s value %r in line %r", name, text, line)
    return found


def read_lines(path: Path) -> list[str]:
    """Read a log file leniently (logs can contain undecodable bytes from class names)."""
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def parse_log(path: Path, mode: Mode = "auto") -> RunResult | None:
    """Parse the result block of a Dassl log; ``None`` when no accuracy follows the end signal."""
    lines = read_lines(path)
    found = match_metrics(lines, end_signals_for(mode, lines), PERCENT_METRICS, COUNT_METRICS)
    if "accuracy" not in found:
        return None
    total = found.get("total")
    correct = found.get("correct")
    return RunResult(
        accuracy=found["accuracy"],
        source=path,
        total=int(total) if total is not None else None,
        correct=int(correct) if correct is not None else None,
        error=found.get("error"),
        macro_f1=found.get("macro_f1"),
    )


def parse_results_json(path: Path) -> RunResult | None:
    """Read our ``results.json``; ``None`` (with a warning) if it is unreadable or not our format."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return None
    fmt = data.get("format", "") if isinstance(data, dict) else ""
    if not str(fmt).startswith(RESULTS_FORMAT_PREFIX) or not isinstance(data.get("accuracy"), (int, float)):
        logger.warning("ignoring %s: not a %s* file with an accuracy", path, RESULTS_FORMAT_PREFIX)
        return None

    def opt_float(key: str) -> float | None:
        value = data.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    def opt_int(key: str) -> int | None:
        value = data.get(key)
        return int(value) if isinstance(value, (int, float)) else None

    meta = {k: v for k, v in data.items() if k not in (*PERCENT_METRICS, *COUNT_METRICS)}
    return RunResult(
        accuracy=float(data["accuracy"]),
        source=path,
        total=opt_int("total"),
        correct=opt_int("correct"),
        error=opt_float("error"),
        macro_f1=opt_float("macro_f1"),
        meta=meta,
    )


def log_candidates(run_dir: Path) -> list[Path]:
    """Log files of a run, newest first.

    Dassl's ``setup_logger`` writes to ``log.txt-<timestamp>`` when ``log.txt`` already exists, so a
    rerun in the same folder leaves its log under a timestamped name that sorts after the original.
    """
    stamped = sorted((p for p in run_dir.glob(LOG_FILE + "-*") if p.is_file()), reverse=True)
    plain = run_dir / LOG_FILE
    return stamped + ([plain] if plain.is_file() else [])


def load_run(run_dir: Path, mode: Mode = "auto") -> RunResult | None:
    """Return the result of a run directory, or ``None`` if it has none (crashed or unfinished run).

    ``results.json`` wins when present and valid; otherwise the newest log that holds a result is
    used (``mode`` chooses the end signal, see :func:`end_signals_for`).
    """
    json_path = run_dir / RESULTS_JSON
    if json_path.is_file():
        result = parse_results_json(json_path)
        if result is not None:
            return result
    candidates = log_candidates(run_dir)
    for i, log in enumerate(candidates):
        result = parse_log(log, mode)
        if result is not None:
            if i > 0:
                logger.info("%s: newer log %s has no result; using %s", run_dir, candidates[0].name, log.name)
            return result
    return None
