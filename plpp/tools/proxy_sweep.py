"""Sweep PLPP's open choices on the proxy world, select on the few-shot validation split, write JSON.

``python -m plpp.tools.proxy_sweep --world DIR [--output ROOT] [--trainer PLPP] [--seeds 1 2 3] [--only KEY ...]
[-- KEY VALUE ...]``

Each variant changes one ``TRAINER.PLPP`` key from its default (``VARIANTS``); each variant and seed
is one base-to-new run of ``--trainer`` (PLPP on CoOp by default, or any ``PLPP_<host>`` with a
``configs/trainers/<trainer>/proxy.yaml``) on ``--dataset`` (default the drawings, as ``scripts/plpp/proxy.sh``): train
on the base classes (16 shots) in the layout of
``scripts/plpp/base2new_train.sh``, evaluate the last checkpoint on the new classes as
``base2new_test.sh`` does, and evaluate it on the few-shot validation split of the base classes
(the val images that training drew, min(16, 4) per class). The default variant is the
``ROOT/base2new`` tree of ``scripts/plpp/proxy.sh``; the others go to ``ROOT/sweep/<variant>/``.
Finished runs are skipped, so a rerun continues where it stopped.

Selection uses the validation accuracy only, never a test accuracy: per key, the value with the
highest mean val accuracy over seeds. ``ROOT/sweep/sweep_<dataset>_<trainer>.json`` holds every variant's val, base, new
and HM (mean and std over seeds), the selection, and whether each selected value beats the default
clearly (its mean val exceeds the default's by more than two standard errors of the difference).
Exit status 0, 1 when a run failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import os.path as osp
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAINER = "PLPP"  # the default trainer swept
CFG = "proxy"
DATASETS = ("proxy_world_drawing", "proxy_world")
SHOTS = 16
SWEEP_DIR = "sweep"
VAL_DIR = "val"

#: The default of each open choice (trainers/plpp.py) and the values tried instead of it, one at a time.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "PPL_WEIGHT": ("0.1", ["0.0", "0.3", "1.0"]),
    "IPPL_WEIGHT": ("0.1", ["0.0", "0.3", "1.0"]),
    "TOPK": ("10", ["1", "30"]),
    "TEMPERATURE": ("0.1", ["0.03", "1.0"]),
    "SHIFT": ("False", ["True"]),
    "HIDDEN": ("before", ["after"]),
}


class SweepError(RuntimeError):
    """A run of the sweep failed or its outputs are unreadable; the message names the folder."""


@dataclass(frozen=True)
class Variant:
    """One setting of the sweep: ``key`` set to ``value`` (``key`` empty for the defaults)."""

    key: str = ""
    value: str = ""

    @property
    def name(self) -> str:
        return f"{self.key.lower()}_{self.value}" if self.key else "default"

    @property
    def opts(self) -> list[str]:
        return [f"TRAINER.PLPP.{self.key}", self.value] if self.key else []


def variants(only: Sequence[str] = ()) -> list[Variant]:
    """The defaults, then every value of every key (of ``only`` keys when given)."""
    keys = [k for k in VARIANTS if not only or k in only]
    return [Variant()] + [Variant(k, v) for k in keys for v in VARIANTS[k][1]]


def run_dirs(root: str, dataset: str, variant: Variant, seed: int, trainer: str = TRAINER) -> tuple[str, str]:
    """The training and new-class evaluation folders (base2new_train.sh / base2new_test.sh layout)."""
    tree = root if not variant.key else osp.join(root, SWEEP_DIR, variant.name)
    cell = osp.join(dataset, f"shots_{SHOTS}", trainer, CFG, f"seed{seed}")
    return osp.join(tree, "base2new", "train_base", cell), osp.join(tree, "base2new", "test_new", cell)


def val_record(root: str, dataset: str, variant: Variant, seed: int, trainer: str = TRAINER) -> str:
    return osp.join(root, SWEEP_DIR, VAL_DIR, dataset, trainer, variant.name, f"seed{seed}", "val.json")


def sweep_file(root: str, dataset: str, trainer: str = TRAINER) -> str:
    return osp.join(root, SWEEP_DIR, f"sweep_{dataset}_{trainer}.json")


def common_args(world: str, dataset: str, seed: int, out: str, trainer: str = TRAINER) -> list[str]:
    return ["--root", osp.join(world, "data"), "--seed", str(seed), "--trainer", trainer,
            "--dataset-config-file", str(REPO / "configs" / "datasets" / f"{dataset}.yaml"),
            "--config-file", str(REPO / "configs" / "trainers" / trainer / f"{CFG}.yaml"), "--output-dir", out]


def sweepable_trainers() -> list[str]:
    """PLPP and every ``PLPP_<host>`` that has a proxy config."""
    return sorted(p.parent.name for p in (REPO / "configs" / "trainers").glob(f"PLPP*/{CFG}.yaml"))


def last_epoch(train_dir: str) -> int:
    """The epoch of the last checkpoint of a finished training run (its ``<model>/checkpoint`` pointer)."""
    pointers = sorted(Path(train_dir).glob("*/checkpoint"))
    try:
        name = pointers[0].read_text(encoding="utf-8").strip()
        return int(name.rsplit("-", 1)[1])
    except (OSError, IndexError, ValueError):
        raise SweepError(f"{train_dir} has no readable checkpoint pointer <model>/checkpoint; delete the folder "
                         "to train it again") from None


def run_train_py(argv: list[str]) -> None:
    from plpp.engine.cli import main

    if main(argv) != 0:
        raise SweepError(f"train.py {' '.join(argv)} failed (see the log in its --output-dir)")


def evaluate_val(train_dir: str, record: str) -> dict:
    """Accuracy of a finished training run's last checkpoint on its few-shot validation split."""
    import plpp.datasets  # noqa: F401  (registers the datasets)
    import plpp.trainers  # noqa: F401  (registers the trainers)
    from plpp.engine import build_trainer, get_cfg_default, set_random_seed, setup_logger
    from plpp.engine.utils import write_json
    from plpp.trainers import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_file(osp.join(train_dir, "config.yaml"))
    cfg.OUTPUT_DIR = osp.dirname(record)
    cfg.freeze()
    set_random_seed(cfg.SEED)  # the same few-shot draw as the training run (also cached on disk)
    setup_logger(cfg.OUTPUT_DIR)
    trainer = build_trainer(cfg)
    epoch = last_epoch(train_dir)
    trainer.load_model(train_dir, epoch=epoch)
    accuracy = trainer.test(split="val")
    total, correct = trainer.evaluator.counts
    result = {"split": "val", "train_dir": train_dir, "epoch": epoch, "seed": cfg.SEED, "total": total,
              "correct": correct, "accuracy": accuracy}
    write_json(result, record)
    return result


def run_one(world: str, root: str, dataset: str, variant: Variant, seed: int, extra: list[str],
            dry_run: bool = False, trainer: str = TRAINER) -> None:
    """Train, evaluate new classes, evaluate val: each step skipped when its result exists."""
    train_dir, test_dir = run_dirs(root, dataset, variant, seed, trainer)
    record = val_record(root, dataset, variant, seed, trainer)
    weights = ["MODEL.BACKBONE.NAME", osp.join(world, "proxy-clip.pt")]
    steps = []
    if not osp.isfile(osp.join(train_dir, "results.json")):
        steps.append(("train", [*common_args(world, dataset, seed, train_dir, trainer), "DATASET.NUM_SHOTS", str(SHOTS),
                                "DATASET.SUBSAMPLE_CLASSES", "base", *weights, *variant.opts, *extra]))
    if not osp.isfile(osp.join(test_dir, "results.json")):
        steps.append(("new", None))
    if not osp.isfile(record):
        steps.append(("val", None))
    for step, argv in steps:
        print(f"[{trainer} {variant.name} seed {seed}] {step}", flush=True)
        if dry_run:
            continue
        if step == "train":
            run_train_py(argv)
        elif step == "new":
            run_train_py([*common_args(world, dataset, seed, test_dir, trainer), "--eval-only",
                          "--model-dir", train_dir, "--load-epoch", str(last_epoch(train_dir)),
                          "DATASET.NUM_SHOTS", str(SHOTS), "DATASET.SUBSAMPLE_CLASSES", "new", *weights,
                          *variant.opts, *extra])
        else:
            evaluate_val(train_dir, record)


def _accuracy(path: str) -> float | None:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("accuracy")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def stat(values: list[float]) -> dict:
    """Mean, population std (as the results tables) and sample std (for standard errors) over seeds."""
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "sd": None, "n": 0, "values": []}
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values)
    return {"mean": mean, "std": math.sqrt(var / n), "sd": math.sqrt(var / (n - 1)) if n > 1 else None, "n": n,
            "values": values}


def summarize(root: str, dataset: str, chosen: list[Variant], seeds: list[int], trainer: str = TRAINER) -> dict:
    """Every variant's val/base/new over seeds, the per-key selection on val, and whether it is clear."""
    from plpp.results.aggregate import harmonic_mean

    rows = []
    for variant in chosen:
        cells: dict[str, list[float]] = {"val": [], "base": [], "new": []}
        for seed in seeds:
            train_dir, test_dir = run_dirs(root, dataset, variant, seed, trainer)
            paths = (("val", val_record(root, dataset, variant, seed, trainer)),
                     ("base", osp.join(train_dir, "results.json")), ("new", osp.join(test_dir, "results.json")))
            for part, path in paths:
                value = _accuracy(path)
                if value is not None:
                    cells[part].append(value)
        row = {"name": variant.name, "key": variant.key, "value": variant.value or None, "opts": variant.opts,
               **{part: stat(values) for part, values in cells.items()}}
        base, new = row["base"]["mean"], row["new"]["mean"]
        row["hm"] = None if base is None or new is None else harmonic_mean(base, new)
        rows.append(row)
    default = rows[0]
    selection = {}
    for key in dict.fromkeys(v.key for v in chosen if v.key):
        candidates = [default] + [r for r in rows if r["key"] == key]
        scored = [r for r in candidates if r["val"]["mean"] is not None]
        if not scored:
            continue
        best = max(scored, key=lambda r: r["val"]["mean"])  # ties keep the default (listed first)
        selection[key] = {"value": best["value"] or VARIANTS[key][0], "variant": best["name"],
                          "clear": clearly_better(best["val"], default["val"]) if best is not default else False}
    return {"format": "plpp-proxy-sweep/1", "label": "synthetic proxy world: not a result on real data",
            "trainer": trainer, "cfg": CFG, "dataset": dataset, "shots": SHOTS, "seeds": seeds,
            "selected_on": "few-shot validation split of the base classes (never test)",
            "defaults": {k: d for k, (d, _) in VARIANTS.items()}, "variants": rows, "selection": selection}


def clearly_better(a: dict, b: dict) -> bool:
    """``a``'s mean beats ``b``'s by more than two standard errors of the difference (needs 2+ seeds each)."""
    if a["n"] < 2 or b["n"] < 2 or a["mean"] is None or b["mean"] is None:
        return False
    se = math.sqrt(a["sd"] ** 2 / a["n"] + b["sd"] ** 2 / b["n"])
    return a["mean"] - b["mean"] > 2 * se if se > 0 else a["mean"] > b["mean"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plpp.tools.proxy_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, metavar="DIR",
                        help="the proxy world (python -m plpp.tools.proxy_world)")
    parser.add_argument("--output", default="output/proxy", metavar="ROOT", help="output root (default output/proxy)")
    parser.add_argument("--dataset", choices=DATASETS, default=DATASETS[0],
                        help=f"proxy-world dataset config (default {DATASETS[0]})")
    parser.add_argument("--trainer", default=TRAINER, metavar="TRAINER",
                        help=f"the PLPP version swept (default {TRAINER}; one of {', '.join(sweepable_trainers())})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (default 1 2 3)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=[], metavar="KEY",
                        help=f"sweep only these keys ({', '.join(VARIANTS)})")
    parser.add_argument("--dry-run", action="store_true", help="list the steps left to run, run nothing")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides for every run")
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"trailing options must be KEY VALUE pairs; got an odd number: {' '.join(args.opts)}")
    if any(s < 0 for s in args.seeds):
        parser.error("--seeds must be >= 0")
    if args.trainer not in sweepable_trainers():
        parser.error(f"--trainer {args.trainer}: not a PLPP version with configs/trainers/<trainer>/{CFG}.yaml "
                     f"(one of {', '.join(sweepable_trainers())})")
    world = osp.abspath(osp.expanduser(args.world))
    if not osp.isfile(osp.join(world, "proxy-clip.pt")):
        print(f"error: {world}/proxy-clip.pt not found: build the world first with "
              f"python -m plpp.tools.proxy_world --out {args.world}", file=sys.stderr)
        return 2
    root = osp.abspath(args.output)
    chosen = variants(args.only)
    try:
        for variant in chosen:
            for seed in args.seeds:
                run_one(world, root, args.dataset, variant, seed, list(args.opts), args.dry_run, args.trainer)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        return 0
    summary = summarize(root, args.dataset, chosen, list(args.seeds), args.trainer)
    path = sweep_file(root, args.dataset, args.trainer)
    os.makedirs(osp.dirname(path), exist_ok=True)
    from plpp.engine.utils import write_json

    write_json(summary, path)
    for key, sel in summary["selection"].items():
        verdict = "clearly better than" if sel["clear"] else "not clearly above"
        print(f"{key}: selected {sel['value']} on val ({verdict} the default {VARIANTS[key][0]})")
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
