"""Validate a data root: ``python -m plpp.datasets.check --root DIR [--dataset NAME] [--verify-images]``.

Builds each dataset from a default config exactly as a run would (no CLIP needed), prints a table
of classes and images per split, then the full text of every problem. Without ``--dataset`` every
dataset whose folder exists under the root is checked. Exit code 0: all checked datasets are fine;
1: a checked dataset has a problem (or none was found); 2: bad arguments.

Building may write what a first run would write (a split file built from the original
annotations, Fashion-MNIST's PNGs); the Notes column says when a split file was generated.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os.path as osp
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image
from tabulate import tabulate

from plpp.engine import DATASET_REGISTRY, get_cfg_default
from plpp.engine.data import DataCheckError
from plpp.engine.utils import logger

from .splits import DatasetError

# CoOp's config-file stems, also accepted by --dataset
CONFIG_NAMES = {
    "caltech101": "Caltech101", "oxford_pets": "OxfordPets", "stanford_cars": "StanfordCars",
    "oxford_flowers": "OxfordFlowers", "food101": "Food101", "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397",
    "dtd": "DescribableTextures", "eurosat": "EuroSAT", "ucf101": "UCF101", "imagenet": "ImageNet",
    "imagenetv2": "ImageNetV2", "imagenet_sketch": "ImageNetSketch", "imagenet_a": "ImageNetA",
    "imagenet_r": "ImageNetR", "fashion_mnist": "FashionMNIST",
}
MAX_LISTED = 20


@dataclass
class Report:
    """What was found for one dataset."""

    name: str
    folder: str
    status: str = "ok"  # ok, absent or PROBLEM
    classes: int | str = "-"
    sizes: dict[str, int | str] = field(default_factory=lambda: {"train": "-", "val": "-", "test": "-"})
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def row(self) -> list:
        summary = "; ".join(_short(p, self.name) for p in self.problems) or "; ".join(self.notes)
        return [self.name, self.folder, self.status, self.classes, self.sizes["train"], self.sizes["val"],
                self.sizes["test"], summary]


def _short(problem: str, name: str, width: int = 60) -> str:
    """The first line of a problem without the dataset-name prefix, cut to ``width`` (full text follows the table)."""
    line = problem.splitlines()[0].removeprefix(f"{name}: ")
    return line if len(line) <= width else line[: width - 1] + "…"


def resolve_name(name: str) -> str:
    """A registry name from a registry name (any case) or a CoOp config stem; SystemExit(2) otherwise."""
    names = DATASET_REGISTRY.registered_names()
    by_lower = {n.lower(): n for n in names}
    key = name.lower().removesuffix(".yaml")
    if key in by_lower:
        return by_lower[key]
    if key in CONFIG_NAMES:
        return CONFIG_NAMES[key]
    close = difflib.get_close_matches(name, names + list(CONFIG_NAMES), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    print(f"Unknown dataset '{name}'.{hint} Known: {', '.join(sorted(names))}", file=sys.stderr)
    raise SystemExit(2)


def unreadable_images(paths: Sequence[str], workers: int = 8) -> list[str]:
    """``path (error)`` for each image PIL cannot fully decode."""

    def check(path: str) -> str | None:
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as exc:  # PIL raises many types for corrupt files
            return f"{path} ({type(exc).__name__}: {exc})"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r for r in pool.map(check, paths) if r]


def check_dataset(root: str, name: str, verify_images: bool, requested: bool) -> Report:
    """Build ``name`` under ``root`` and report its sizes and problems."""
    cls = DATASET_REGISTRY.get(name)
    folder = str(getattr(cls, "dataset_dir", ""))
    report = Report(name, folder + "/")
    if not requested and not osp.isdir(osp.join(root, folder)):
        report.status = "absent"
        return report
    split_file = getattr(cls, "split_file", None)
    split_path = osp.join(root, folder, split_file) if split_file else None
    had_split = bool(split_path and osp.isfile(split_path))
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = root
    cfg.DATASET.NAME = name
    try:
        dataset = cls(cfg)
    except (DatasetError, DataCheckError) as exc:
        report.status, report.problems = "PROBLEM", [str(exc)]
        return report
    except Exception as exc:  # anything else is a reader bug or an unforeseen layout: still report it
        report.status, report.problems = "PROBLEM", [f"unexpected {type(exc).__name__}: {exc}"]
        return report
    splits = {"train": dataset.train_x, "val": dataset.val, "test": dataset.test}
    report.classes = dataset.num_classes
    report.sizes = {k: (len(v) if v else 0) for k, v in splits.items()}
    if dataset.val is None and dataset.train_x is dataset.test:
        report.notes.append("test only (train = test)")
    if split_path and not had_split and osp.isfile(split_path):
        report.notes.append(f"generated {split_file} (not CoOp's published split)")
    if verify_images:
        paths = sorted({d.impath for data in splits.values() if data for d in data})
        bad = unreadable_images(paths)
        if bad:
            listed = "\n  ".join(bad[:MAX_LISTED]) + (f"\n  ... and {len(bad) - MAX_LISTED} more"
                                                     if len(bad) > MAX_LISTED else "")
            report.status = "PROBLEM"
            report.problems.append(f"{len(bad)} of {len(paths)} images cannot be read; replace or remove them:\n  "
                                   f"{listed}")
        else:
            report.notes.append(f"all {len(paths)} images readable")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plpp.datasets.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the data root (DATASET.ROOT / --root of train.py)")
    parser.add_argument("--dataset", action="append", default=[],
                        help="registry name (OxfordPets) or config name (oxford_pets); repeatable; default: all found")
    parser.add_argument("--verify-images", action="store_true", help="also decode every image (slow on big sets)")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)
    root = osp.abspath(osp.expanduser(args.root))
    if not osp.isdir(root):
        print(f"Data root not found: {root}", file=sys.stderr)
        return 1
    requested = [resolve_name(n) for n in args.dataset]
    names = requested or sorted(DATASET_REGISTRY.registered_names())
    reports = [check_dataset(root, n, args.verify_images, requested=bool(requested)) for n in names]
    headers = ["dataset", "folder", "status", "classes", "train", "val", "test", "notes / problems"]
    print(f"Data root: {root}")
    print(tabulate([r.row() for r in reports], headers=headers))
    checked = [r for r in reports if r.status != "absent"]
    for r in checked:
        for problem in r.problems:
            print(f"\n[{r.name}] {problem}")
    if not checked:
        print(f"\nNo dataset folder found under {root} (see docs/DATASETS.md for the expected names).")
        return 1
    return 1 if any(r.problems for r in checked) else 0


if __name__ == "__main__":
    sys.exit(main())
