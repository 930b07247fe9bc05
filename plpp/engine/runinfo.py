"""What a run writes beside its log (run.json, config.yaml, env.txt) and the guards on its folders.

Before anything is written, a training command checks that ``--output-dir`` holds no other run (a
different config, an evaluation record) and that ``--resume`` names a folder with checkpoints; an
eval-only command writes its own record, in ``<output-dir>/eval/<what>/`` when ``--output-dir`` is a
training run's folder, so it never rewrites that run's ``results.json``, ``config.yaml`` or checkpoints.
"""

from __future__ import annotations

import glob
import json
import os.path as osp

import yaml

from .distributed import is_main_process
from .utils import collect_env_info, write_json, write_text_atomic

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
EVAL_FOLDER = "eval"

# Keys that may differ between a run and its resumption without changing the experiment.
VOLATILE_KEYS = {"OUTPUT_DIR", "RESUME", "DATALOADER.NUM_WORKERS", "TRAIN.PRINT_FREQ", "VERBOSE",
                 "DATASET.ROOT", "USE_CUDA"}


class ConfigMismatchError(ValueError):
    """OUTPUT_DIR holds a run whose config differs from this one."""


def _flatten(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def config_diff(saved: dict, current: dict, ignore=VOLATILE_KEYS) -> list[tuple[str, object, object]]:
    """``(key, saved value, current value)`` for every flattened key (``OPTIM.LR``) whose values differ,
    sorted, ``ignore`` left out; both dicts as ``yaml.safe_load`` reads a config dump."""
    a, b = _flatten(saved), _flatten(current)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]


class OutputDirError(ValueError):
    """An output or resume folder that this command must not write to or read from, and why."""


def has_checkpoints(output_dir: str) -> bool:
    return bool(glob.glob(osp.join(glob.escape(output_dir), "*", "checkpoint")))


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_record(folder: str) -> dict | None:
    """The ``run.json`` of ``folder``: what kind of run wrote there (training or evaluation, and of what)."""
    return _read_json(osp.join(folder, RUN_FILE))


def saved_results(folder: str) -> dict | None:
    return _read_json(osp.join(folder, RESULTS_FILE))


def holds_run(folder: str) -> bool:
    """True when ``folder`` holds what a run saved: checkpoints or ``results.json``.

    ``run.json``, ``config.yaml`` and ``log.txt`` alone are an attempt that stopped before saving anything
    (e.g. at a data error; a live one holds the folder's lock): a corrected command may take it over.
    """
    return has_checkpoints(folder) or osp.isfile(osp.join(folder, RESULTS_FILE))


def holds_training_run(folder: str) -> bool:
    """True when ``folder`` is (or was begun as) the folder of a training run, which eval-only must not touch."""
    record = run_record(folder)
    if record is not None:
        return record.get("mode") == "train"
    results = saved_results(folder)
    legacy = osp.isfile(osp.join(folder, "config.yaml")) and results is None  # written before run.json existed
    return has_checkpoints(folder) or (results is not None and not results.get("eval_only")) or legacy


def _same_path(a: str, b: str) -> bool:
    return osp.abspath(osp.expanduser(a)) == osp.abspath(osp.expanduser(b))


def config_differences(cfg, folder: str) -> list[str] | None:
    """``KEY: saved X vs now Y`` for each non-volatile key that differs; None when there is no config.yaml."""
    saved_path = osp.join(folder, "config.yaml")
    if not osp.isfile(saved_path):
        return None
    try:
        with open(saved_path, encoding="utf-8") as f:
            saved = yaml.safe_load(f) or {}
        if not isinstance(saved, dict):
            raise AttributeError("not a mapping")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ConfigMismatchError(f"{saved_path} cannot be read ({type(exc).__name__}), so it cannot be checked "
                                  "that this command continues that run. Use another --output-dir.") from None
    return [f"{k}: saved {a!r} vs now {b!r}" for k, a, b in config_diff(saved, yaml.safe_load(cfg.dump()))]


def check_resume_config(cfg, output_dir: str) -> None:
    """Refuse ``output_dir`` when it holds a run whose saved config differs from ``cfg`` (or cannot be read)."""
    if not holds_run(output_dir):
        return
    diffs = config_differences(cfg, output_dir)
    if diffs is None:
        raise ConfigMismatchError(f"{output_dir} holds a run without a config.yaml, so it cannot be checked that "
                                  "this command continues it. Use another --output-dir.")
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ConfigMismatchError(
            f"{output_dir} holds a run with a different config ({shown}). Nothing was written there. Use another "
            "--output-dir, delete that folder to start over, or rerun with the saved settings.")


def prepare_training(cfg) -> str | None:
    """Check that a training command may write to ``OUTPUT_DIR`` (and read ``RESUME``) before it writes.

    Raises :class:`OutputDirError` / :class:`ConfigMismatchError` naming the folder and the fix;
    returns a message when ``OUTPUT_DIR`` already holds this run, finished (nothing left to do).
    """
    out, resume = cfg.OUTPUT_DIR, cfg.RESUME
    record = run_record(out)
    results = saved_results(out)
    evaluation = (record or {}).get("mode") == "eval" or (record is None and (results or {}).get("eval_only"))
    if evaluation and holds_run(out):
        raise OutputDirError(f"{out} holds an evaluation record (--eval-only), not a training run. Train into "
                             "another --output-dir.")
    if resume:
        if not has_checkpoints(resume):
            raise OutputDirError(
                f"--resume {resume} holds no checkpoint (no <model>/checkpoint file). Check the path; to start a "
                "new run, leave --resume out.")
        if not _same_path(resume, out):
            check_resume_config(cfg, resume)
            if holds_run(out):
                raise OutputDirError(
                    f"--output-dir {out} already holds a run, and --resume names another folder ({resume}). Leave "
                    f"--resume out to continue the run in {out}, or choose an empty --output-dir.")
    check_resume_config(cfg, out)
    if results is not None and not results.get("eval_only"):
        acc = results.get("accuracy")
        shown = f"accuracy {acc:.2f}%, " if isinstance(acc, (int, float)) else ""
        return (f"{out} holds this run, finished ({RESULTS_FILE}: {shown}epoch {results.get('epoch')}); nothing "
                "was changed. Use another --output-dir to train again.")
    return None


def evaluation_folder(cfg, model_dir: str, load_epoch: int | None) -> str:
    """Where an eval-only command writes: ``OUTPUT_DIR``, or ``OUTPUT_DIR/eval/<what>`` when that is a training run.

    ``<what>`` is the dataset, the class subset when not ``all``, and ``epoch<N>`` or ``best``.
    """
    out = cfg.OUTPUT_DIR
    if not holds_training_run(out):
        return out
    parts = [str(cfg.DATASET.NAME) or "dataset"]
    subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
    if subsample != "all":
        parts.append(str(subsample))
    parts.append("best" if load_epoch is None else f"epoch{load_epoch}")
    return osp.join(out, EVAL_FOLDER, "_".join(parts))


def evaluation_identity(model_dir: str, load_epoch: int | None) -> dict:
    return {"mode": "eval", "model_dir": osp.abspath(model_dir) if model_dir else None, "load_epoch": load_epoch}


def prepare_evaluation(cfg, identity: dict) -> str | None:
    """Check that an eval-only command may write its record to ``OUTPUT_DIR`` (already redirected).

    Returns a message when that folder holds this very evaluation, finished.
    """
    folder = cfg.OUTPUT_DIR
    if not holds_run(folder):
        return None
    record = run_record(folder) or {}
    if not record and (saved_results(folder) or {}).get("eval_only"):
        raise OutputDirError(f"{folder} holds an evaluation record without run.json (from an earlier PLPP), so it "
                             "cannot be checked that it is this evaluation. Delete it to evaluate again, or use "
                             "another --output-dir.")
    if record.get("mode") != "eval":
        raise OutputDirError(f"{folder} holds a training run or files this command did not write; an evaluation "
                             "never writes there. Use another --output-dir.")
    if (record.get("model_dir"), record.get("load_epoch")) != (identity["model_dir"], identity["load_epoch"]):
        raise OutputDirError(
            f"{folder} holds the evaluation of {record.get('model_dir')} (--load-epoch {record.get('load_epoch')}), "
            f"not of {identity['model_dir']} (--load-epoch {identity['load_epoch']}). Use another --output-dir.")
    check_resume_config(cfg, folder)
    results = saved_results(folder)
    if results is not None:
        return (f"{folder} already holds this evaluation ({RESULTS_FILE}); nothing was changed. Delete that folder "
                "to evaluate again.")
    return None


def write_run_info(cfg, output_dir: str, backend: str, record: dict | None = None) -> None:
    """Write ``run.json`` (what kind of run this is), ``config.yaml`` (the merged config) and ``env.txt``."""
    if not is_main_process():
        return
    write_json({"format": "plpp-run/1", **(record or {"mode": "train"})}, osp.join(output_dir, RUN_FILE))
    write_text_atomic(cfg.dump(), osp.join(output_dir, "config.yaml"))
    write_text_atomic(collect_env_info() + f"\nPLPP engine backend: {backend}\n", osp.join(output_dir, "env.txt"))
