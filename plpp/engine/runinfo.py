"""What a run writes beside its log (config.yaml, env.txt) and the guard against resuming a different run."""

from __future__ import annotations

import glob
import os.path as osp

import yaml

from .distributed import is_main_process
from .utils import collect_env_info, write_text_atomic

# Keys that may differ between a run and its resumption without changing the experiment.
VOLATILE_KEYS = {"OUTPUT_DIR", "RESUME", "DATALOADER.NUM_WORKERS", "TRAIN.PRINT_FREQ", "VERBOSE",
                 "DATASET.ROOT", "USE_CUDA"}


class ConfigMismatchError(ValueError):
    """OUTPUT_DIR holds checkpoints of a run whose config differs from this one."""


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


def has_checkpoints(output_dir: str) -> bool:
    return bool(glob.glob(osp.join(output_dir, "*", "checkpoint")))


def check_resume_config(cfg, output_dir: str) -> None:
    """Refuse to resume into ``output_dir`` when its saved config differs from ``cfg``."""
    saved_path = osp.join(output_dir, "config.yaml")
    if not (has_checkpoints(output_dir) and osp.isfile(saved_path)):
        return
    with open(saved_path, encoding="utf-8") as f:
        saved = yaml.safe_load(f) or {}
    diffs = [f"{k}: saved {a!r} vs now {b!r}" for k, a, b in config_diff(saved, yaml.safe_load(cfg.dump()))]
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise ConfigMismatchError(
            f"{output_dir} holds checkpoints of a run with a different config ({shown}). Use another "
            "--output-dir, delete that folder to start over, or rerun with the saved settings.")


def write_run_info(cfg, output_dir: str, backend: str) -> None:
    """Write ``config.yaml`` (the merged config) and ``env.txt`` (versions, device, engine backend)."""
    if not is_main_process():
        return
    write_text_atomic(cfg.dump(), osp.join(output_dir, "config.yaml"))
    write_text_atomic(collect_env_info() + f"\nPLPP engine backend: {backend}\n", osp.join(output_dir, "env.txt"))
