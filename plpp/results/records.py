"""Does a run's ``results.json`` belong in the folder it sits in, and which weights produced it?

The folder a run sits in says what it is (trainer, dataset, shots, seed, base/new half, prompt
variant); ``results.json`` (and ``config.yaml`` beside it) say what was run. A file copied or written
into the wrong folder would put its number in the wrong cell, so :func:`folder_mismatches` lists every
disagreement and the caller leaves the run out. Runs read from ``log.txt`` alone (made with the
upstream code) carry no record and cannot be checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .names import dataset_matches_folder

#: Kind of a run whose weights are not recorded (``log.txt`` only, or an older ``results.json``).
UNRECORDED = "unrecorded"

COOP_VARIANT_RE = re.compile(r"^nctx(?P<n_ctx>\d+)_csc(?P<csc>\w+?)_ctp(?P<ctp>\w+)$")


#: Trainers that train nothing: their runs are evaluations wherever they sit (e.g. zero-shot CLIP's base
#: classes in ``train_base``).
EVAL_ONLY_TRAINERS = ("ZeroshotCLIP", "ZeroshotCLIP2")


@dataclass(frozen=True)
class FolderFacts:
    """What a run's folder says about it (``None``: the folder does not say)."""

    trainer: str
    dataset: str
    seed: int
    shots: int | None = None
    subsample: str | None = None  # "all", "base" or "new"
    eval_only: bool | None = None
    variant: str = ""


def weights_kind(meta: dict[str, Any] | None) -> str:
    """The kind of backbone a run used (``openai``, ``random``, ``proxy_world``, ``other``), or
    :data:`UNRECORDED`."""
    record = (meta or {}).get("backbone_weights")
    if isinstance(record, dict) and isinstance(record.get("kind"), str):
        return record["kind"]
    return UNRECORDED


def backbone_id(meta: dict[str, Any] | None) -> str | None:
    """What identifies a run's backbone file (its SHA-256, else its name), ``None`` when unrecorded."""
    meta = meta or {}
    record = meta.get("backbone_weights")
    if isinstance(record, dict) and record.get("sha256"):
        return str(record["sha256"])
    name = meta.get("backbone")
    return str(name) if name else None


def _read_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _variant_mismatches(variant: str, config: dict[str, Any] | None) -> list[str]:
    """CoOp's ``nctx<N>_csc<CSC>_ctp<CTP>`` folder against the saved config's TRAINER.COOP keys."""
    match = COOP_VARIANT_RE.match(variant)
    coop = ((config or {}).get("TRAINER") or {}).get("COOP")
    if not match or not isinstance(coop, dict):
        return []
    saved = {"n_ctx": coop.get("N_CTX"), "csc": coop.get("CSC"), "ctp": coop.get("CLASS_TOKEN_POSITION")}
    keys = {"n_ctx": "TRAINER.COOP.N_CTX", "csc": "TRAINER.COOP.CSC", "ctp": "TRAINER.COOP.CLASS_TOKEN_POSITION"}
    return [f"config.yaml has {keys[k]} {saved[k]!r}, the folder {variant!r} says {match[k]!r}"
            for k in keys if saved[k] is not None and str(saved[k]) != match[k]]


def folder_mismatches(run_dir: Path, meta: dict[str, Any], facts: FolderFacts) -> list[str]:
    """Every field of ``results.json`` (``meta``) or ``config.yaml`` that contradicts ``facts``."""
    problems = []
    trainer = meta.get("trainer")
    if isinstance(trainer, str) and trainer != facts.trainer:
        problems.append(f"trainer {trainer!r}, the folder says {facts.trainer!r}")
    dataset = meta.get("dataset")
    if isinstance(dataset, str) and dataset_matches_folder(dataset, facts.dataset) is False:
        problems.append(f"dataset {dataset!r}, the folder says {facts.dataset!r}")
    seed = meta.get("seed")
    if isinstance(seed, int) and seed != facts.seed:
        problems.append(f"seed {seed}, the folder says seed{facts.seed}")
    shots = meta.get("num_shots")
    if facts.shots is not None and isinstance(shots, int) and shots != facts.shots:
        problems.append(f"num_shots {shots}, the folder says {facts.shots} shots")
    subsample = meta.get("subsample_classes")
    if facts.subsample is not None and isinstance(subsample, str) and subsample != facts.subsample:
        problems.append(f"subsample_classes {subsample!r}, the folder says {facts.subsample!r}")
    eval_only = meta.get("eval_only")
    trains = facts.trainer not in EVAL_ONLY_TRAINERS  # zero-shot CLIP's "training" run is an evaluation
    if trains and facts.eval_only is not None and isinstance(eval_only, bool) and eval_only != facts.eval_only:
        wanted = "an eval-only run" if facts.eval_only else "a training run"
        problems.append(f"eval_only {str(eval_only).lower()}, the folder holds {wanted}")
    if facts.variant:
        problems += _variant_mismatches(facts.variant, _read_config(run_dir))
    return problems
