"""Split files shared by every reader: the error type, reading and writing ``split_*.json``, building a
split when the file is absent, and turning split entries into :class:`Datum` lists.

A *split* is ``{"train": [...], "val": [...], "test": [...]}`` where each entry is
``[relative_image_path, label, classname]`` (CoOp's ``split_zhou_<Name>.json`` format). Paths are
relative to the dataset's image folder, so a split survives moving ``DATASET.ROOT``.

Fallback splits are drawn with a private ``random.Random(SPLIT_SEED)``, never the global ``random``:
the global stream belongs to the few-shot sampler, which must see the same state Dassl would.
"""

from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Union

from plpp.engine import Datum
from plpp.engine.utils import listdir_nohidden, logger, mkdir_if_missing, read_json, write_json

SPLIT_KEYS = ("train", "val", "test")
SPLIT_SEED = 0  # fixed seed of the private RNG that draws fallback splits
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

Entry = list[Union[str, int]]  # [relative_path, label, classname]
Split = dict[str, list[Entry]]


class DatasetError(ValueError):
    """Data on disk is missing, misplaced or malformed. The message names the path and says what to do."""


def dataset_folder(cfg: Any, folder: str, name: str, layout: str) -> str:
    """Absolute path of ``DATASET.ROOT/<folder>``; a :class:`DatasetError` describing the layout if absent."""
    root = str(cfg.DATASET.ROOT or "")
    if not root:
        raise DatasetError(f"{name}: DATASET.ROOT is empty. Pass --root DIR, the folder that holds '{folder}/'.")
    root = osp.abspath(osp.expanduser(root))
    path = osp.join(root, folder)
    if not osp.isdir(path):
        raise DatasetError(
            f"{name}: dataset folder not found: {path}\n"
            f"Expected layout under DATASET.ROOT ({root}):\n{layout}\n"
            "See docs/DATASETS.md for where to download it."
        )
    return path


def import_loadmat(what: str) -> Callable[..., Any]:
    """``scipy.io.loadmat``, or a :class:`DatasetError` saying to install scipy to read ``what``."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(f"Reading {what} needs scipy, which is not installed: pip install scipy (or download "
                           "the split file named in docs/DATASETS.md, which needs no .mat files).") from None
    return loadmat


def require_dir(path: str, name: str, layout: str) -> str:
    """``path`` if it is a directory, else a :class:`DatasetError` naming it and the expected layout."""
    if not osp.isdir(path):
        raise DatasetError(f"{name}: folder not found: {path}\nExpected layout:\n{layout}")
    return path


def missing_split_error(name: str, split_path: str, needed: Sequence[str]) -> DatasetError:
    """The error for "no split file, and the files that would build one are missing too"."""
    absent = [p for p in needed if not osp.exists(p)]
    return DatasetError(
        f"{name}: split file not found: {split_path}\n"
        f"It cannot be built either, because these are missing: {', '.join(absent)}.\n"
        f"Download {osp.basename(split_path)} (links in docs/DATASETS.md) into {osp.dirname(split_path)}, "
        "or add the missing files."
    )


def check_entries(entries: Any, key: str, path: str) -> list[Entry]:
    """``entries`` as a list of ``[path, label, classname]``; a :class:`DatasetError` naming ``path`` otherwise."""
    if not isinstance(entries, list):
        raise DatasetError(f"Split file {path}: '{key}' must be a list of [path, label, classname].")
    for i, e in enumerate(entries):
        ok = (isinstance(e, (list, tuple)) and len(e) == 3 and isinstance(e[0], str)
              and isinstance(e[1], int) and not isinstance(e[1], bool) and e[1] >= 0 and isinstance(e[2], str))
        if not ok:
            raise DatasetError(
                f"Split file {path}: entry {i} of '{key}' is {e!r}; expected [relative_path, label >= 0, "
                "classname]. Delete the file to rebuild it, or download a fresh copy."
            )
    return [list(e) for e in entries]


def read_split(path: str, required: Sequence[str] = SPLIT_KEYS) -> Split:
    """Read and validate a split file; the ``required`` lists must be non-empty (absent others read as empty)."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"Cannot read split file {path} ({exc}). Delete it to rebuild it, "
                           "or download a fresh copy.") from exc
    if not isinstance(data, dict) or "train" not in data:
        raise DatasetError(f"Split file {path} is not a JSON object with 'train', 'val' and 'test' lists. "
                           "Delete it to rebuild it, or download a fresh copy.")
    split = {key: check_entries(data.get(key, []), key, path) for key in SPLIT_KEYS}
    empty = [key for key in required if not split[key]]
    if empty:
        raise DatasetError(f"Split file {path}: the '{empty[0]}' list is empty (or missing); a split needs images in "
                           f"{', '.join(repr(k) for k in required)}. Delete the file to rebuild it, or download a "
                           "fresh copy.")
    return split


def write_json_quietly(obj: Any, path: str, what: str, compact: bool = False) -> bool:
    """Write JSON atomically; on a read-only folder log a warning instead of failing (returns success)."""
    try:
        if compact:  # big listings (ImageNet): no indentation, still written to a temp file and renamed
            mkdir_if_missing(osp.dirname(path))
            tmp = f"{path}.tmp.{os.getpid()}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(obj, f, separators=(",", ":"), ensure_ascii=False)
                os.replace(tmp, path)
            finally:
                if osp.exists(tmp):
                    os.remove(tmp)
        else:
            write_json(obj, path)
    except OSError as exc:
        logger.warning(f"Could not write {what} to {path} ({exc}); continuing without saving it.")
        return False
    logger.info(f"Saved {what} to {path}")
    return True


def load_or_build_split(path: str, build: Callable[[], Split], name: str) -> Split:
    """Read ``path``; when it is absent, ``build()`` the split and save it there for the next run."""
    if osp.isfile(path):
        return read_split(path)
    logger.info(f"{name}: {path} not found; building the split from the original annotation files "
                "(this is not CoOp's published split, download it for comparable numbers)")
    split = build()
    write_json_quietly(split, path, f"{name} split")
    return split


def read_lines(path: str) -> list[str]:
    """Non-empty lines of a text annotation file, stripped, without ``#`` comments."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def list_images(folder: str) -> list[str]:
    """Sorted image file names in ``folder`` (hidden files, sub-folders and non-images left out)."""
    return [f for f in listdir_nohidden(folder, sort=True)
            if f.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(folder, f))]


def list_class_folders(image_dir: str, ignored: Iterable[str] = ()) -> list[str]:
    """Sorted sub-folder names of ``image_dir``, minus ``ignored``."""
    ignored = set(ignored)
    return [d for d in listdir_nohidden(image_dir, sort=True)
            if d not in ignored and osp.isdir(osp.join(image_dir, d))]


def split_groups(groups: Sequence[tuple[int, str, list[str]]], where: str, p_train: float = 0.5,
                 p_val: float = 0.2) -> Split:
    """A per-class train/val/test split (50/20/30 by default) of ``(label, classname, paths)`` groups.

    Each group's paths are shuffled by one private RNG (seeded with ``SPLIT_SEED``) in the given group
    order, so the result depends only on the inputs. ``where`` names the source in errors.
    """
    rng = random.Random(SPLIT_SEED)
    split: Split = {key: [] for key in SPLIT_KEYS}
    for label, classname, paths in groups:
        paths = list(paths)
        rng.shuffle(paths)
        n_train, n_val = round(len(paths) * p_train), round(len(paths) * p_val)
        if min(n_train, n_val, len(paths) - n_train - n_val) <= 0:
            raise DatasetError(f"Class '{classname}' in {where} has {len(paths)} images, too few "
                               "for a train/val/test split (at least 4 are needed).")
        parts = (paths[:n_train], paths[n_train:n_train + n_val], paths[n_train + n_val:])
        for key, part in zip(SPLIT_KEYS, parts):
            split[key].extend([p, label, classname] for p in part)
    return split


def split_class_folders(image_dir: str, ignored: Iterable[str] = (), rename: dict[str, str] | None = None) -> Split:
    """A 50/20/30 split of ``image_dir/<class>/*`` (labels follow the sorted folder names).

    Used when ``split_zhou_<Name>.json`` is absent (Caltech101, Food101, DTD, EuroSAT). Files are
    sorted before they are shuffled, so the result is the same on every machine.
    """
    rename = rename or {}
    classes = list_class_folders(image_dir, ignored)
    if not classes:
        raise DatasetError(f"No class folders found in {image_dir}; expected {image_dir}/<class>/<image>.")
    groups = [(label, rename.get(folder, folder),
               [f"{folder}/{im}" for im in list_images(osp.join(image_dir, folder))])
              for label, folder in enumerate(classes)]
    return split_groups(groups, image_dir)


def split_trainval(trainval: list[Entry], p_val: float = 0.2) -> tuple[list[Entry], list[Entry]]:
    """Move ``p_val`` of each class (in order of first appearance) to val, drawn with a private RNG."""
    rng = random.Random(SPLIT_SEED)
    by_label: dict[int, list[int]] = {}
    for idx, entry in enumerate(trainval):
        by_label.setdefault(int(entry[1]), []).append(idx)
    train, val = [], []
    for label, idxs in by_label.items():
        n_val = round(len(idxs) * p_val)
        if n_val <= 0:
            raise DatasetError(f"Class {label} ('{trainval[idxs[0]][2]}') has only {len(idxs)} train+val images, "
                               f"too few to hold out {p_val:.0%} for validation.")
        rng.shuffle(idxs)
        val.extend(trainval[i] for i in idxs[:n_val])
        train.extend(trainval[i] for i in idxs[n_val:])
    return train, val


def split_hash(split: Split) -> str:
    """A short content hash of a split; few-shot caches made from another split are not reused."""
    blob = json.dumps([split.get(key, []) for key in SPLIT_KEYS], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def to_datums(entries: Sequence[Entry], image_root: str, source: str) -> list[Datum]:
    """Datum for each ``[relative_path, label, classname]`` under ``image_root``.

    A missing image becomes a :class:`DatasetError` that names it, ``source`` (the split file) and how
    many others are missing, instead of a bare ``FileNotFoundError`` from the first one.
    """
    data = []
    for rel, label, classname in entries:
        path = osp.join(image_root, rel)
        try:
            data.append(Datum(impath=path, label=int(label), classname=classname))
        except (FileNotFoundError, AssertionError):
            missing = sum(1 for e in entries if not osp.isfile(osp.join(image_root, e[0])))
            raise DatasetError(
                f"{source} lists {missing} image(s) that do not exist; the first is {path}.\n"
                "Check DATASET.ROOT and the folder layout (docs/DATASETS.md); if the split file is from "
                "another copy of the dataset, delete it to rebuild it. "
                "`python -m plpp.datasets.check --root ROOT` lists every problem."
            ) from None
    return data
