"""Is a run folder finished with the config that is asked for now? Used by the protocol scripts and the grid.

``python -m plpp.tools.run_status DIR --mode train|eval -- <train.py arguments>``

A folder is *finished* when it holds a test result: ``results.json``, or a log whose result block
follows ``Finish training`` (``train``) or an eval-only ``=> result`` block (``eval``). A finished folder
only counts as done when the config saved beside it (``config.yaml``) equals the config those
``train.py`` arguments give now, backbone included (its name, and the file's SHA-256 when
``results.json`` recorded one and the name is a local file); otherwise the folder holds another
experiment and nothing may be skipped or overwritten: the differing keys are reported.

Exit status: 0 done (same config), 3 not finished (run it), 1 the folder holds another run (message on
stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DONE, TODO, CONFLICT = "done", "todo", "conflict"
EXIT = {DONE: 0, TODO: 3, CONFLICT: 1}

# train.py flags that choose what to load, not the experiment (absent from the saved config)
_LOAD_FLAGS = {"--eval-only": 0, "--no-train": 0, "--model-dir": 1, "--load-epoch": 1}


@dataclass(frozen=True)
class Status:
    """``state`` is DONE, TODO or CONFLICT; ``message`` says why (one line)."""

    state: str
    message: str


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def requested_config(train_argv: Sequence[str]) -> dict:
    """The config ``train.py`` would run with these arguments, as ``yaml.safe_load`` reads its dump."""
    import yaml

    from plpp.engine.cli import get_parser, setup_cfg

    argv, skip = [], 0
    for word in train_argv:
        if skip:
            skip -= 1
            continue
        name = word.split("=", 1)[0]
        if name in _LOAD_FLAGS:
            skip = _LOAD_FLAGS[name] if "=" not in word else 0
            continue
        argv.append(word)
    return yaml.safe_load(setup_cfg(get_parser().parse_args(argv)).dump())


def _finished_record(run_dir: Path, mode: str) -> tuple[bool, str | None, dict | None]:
    """``(finished, problem, results.json)``: whether the folder holds a result, and why it cannot count."""
    from plpp.results.parse import log_candidates, parse_log

    path = run_dir / "results.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return True, f"its results.json cannot be read ({exc})", None
        if not isinstance(data, dict):
            return True, "its results.json is not a JSON object", None
        eval_only = data.get("eval_only")
        if isinstance(eval_only, bool) and eval_only != (mode == "eval"):
            what = "an eval-only result" if eval_only else "a training run's result"
            return True, f"it holds {what} where {'an evaluation' if mode == 'eval' else 'a training run'} " \
                         "is expected", data
        return True, None, data
    for log in log_candidates(run_dir):
        if parse_log(log, "train" if mode == "train" else "eval") is not None:
            return True, None, None
    return False, None, None


def _backbone_file_diff(saved_json: dict | None, requested: dict) -> tuple[str, Any, Any] | None:
    """A differing SHA-256 of the same local backbone file name (the file was replaced since)."""
    record = (saved_json or {}).get("backbone_weights")
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return None
    name = str(requested.get("MODEL", {}).get("BACKBONE", {}).get("NAME", ""))
    path = osp.expanduser(name)
    if not name or record.get("name") != name or not osp.isfile(path):
        return None
    from plpp.provenance import file_sha256

    now = file_sha256(path)
    if now == record["sha256"]:
        return None
    return ("MODEL.BACKBONE.NAME (file content)", f"sha256 {record['sha256'][:12]}", f"sha256 {now[:12]}")


def run_status(run_dir: str | Path, mode: str, train_argv: Sequence[str]) -> Status:
    """Whether ``run_dir`` is done with the config of ``train_argv`` (see the module docstring)."""
    run_dir = Path(run_dir)
    finished, problem, saved_json = _finished_record(run_dir, mode)
    if not finished:
        return Status(TODO, f"{run_dir} holds no finished run")
    import yaml  # only a finished folder needs the config machinery (torch, the trainers' keys)

    from plpp.engine.runinfo import config_diff

    advice = f"Delete {run_dir} to run it again, or set OUTPUT (--output-dir) to another folder."
    if problem:
        return Status(CONFLICT, f"{run_dir} holds a result that does not count: {problem}. {advice}")
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return Status(CONFLICT, f"{run_dir} holds a finished run without config.yaml, so its config cannot be "
                                f"compared with the requested one. {advice}")
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return Status(CONFLICT, f"cannot read {saved_path} ({exc}). {advice}")
    requested = requested_config(train_argv)
    diffs = config_diff(saved, requested)
    if not diffs:
        file_diff = _backbone_file_diff(saved_json, requested)
        diffs = [file_diff] if file_diff else []
    if diffs:
        shown = "; ".join(f"{k}: saved {_fmt(a)}, requested {_fmt(b)}" for k, a, b in diffs[:8])
        more = f"; and {len(diffs) - 8} more" if len(diffs) > 8 else ""
        return Status(CONFLICT, f"{run_dir} holds a finished run with another config ({shown}{more}). {advice}")
    return Status(DONE, f"{run_dir} is finished with the requested config")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plpp.tools.run_status", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="DIR", help="the run's output folder")
    parser.add_argument("--mode", choices=["train", "eval"], required=True,
                        help="train: a training run (result after 'Finish training'); eval: an eval-only run")
    parser.epilog = "After '--': the train.py arguments of the requested run."
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    train_args = argv[cut + 1 :]
    try:
        status = run_status(args.run_dir, args.mode, train_args)
    except SystemExit:  # train.py's parser already printed what is wrong with the arguments
        return 2
    except (ValueError, KeyError, OSError, RuntimeError) as exc:  # train.py's user errors
        print(f"error: the requested run is not valid: {exc}", file=sys.stderr)
        return 2
    if status.state == CONFLICT:
        print(f"error: {status.message}", file=sys.stderr)
    else:
        print(status.message)
    return EXIT[status.state]


if __name__ == "__main__":
    sys.exit(main())
