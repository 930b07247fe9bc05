"""From a split to the lists a run uses: few-shot sampling in Dassl's order, its JSON cache, base/new classes.

Sampling copies Dassl exactly: with Python's global ``random`` seeded by the trainer (``cfg.SEED``),
``generate_fewshot_dataset(train, K)`` and then ``generate_fewshot_dataset(val, min(K, 4))``. The same
split and seed therefore give the same picks as CoOp on real Dassl.

The picks are cached in our own format, never Dassl's ``shot_K-seed_S.pkl``::

    <dataset_dir>/split_fewshot/plpp_shot_<K>-seed_<S>.json
    {"format": "plpp-fewshot-v1", "num_shots": K, "seed": S, "split_hash": "<16 hex>",
     "train": [[path_relative_to_dataset_dir, label, classname], ...], "val": [...] or null}

Paths are relative to the dataset folder, so moving ``DATASET.ROOT`` keeps the cache valid, and
``split_hash`` ties it to the split it was drawn from: a cache from another split is redrawn.
"""

from __future__ import annotations

import os.path as osp
from typing import Any, Optional

from plpp.engine import Datum
from plpp.engine.data import check_class_coverage
from plpp.engine.data import subsample_classes as _subsample
from plpp.engine.utils import logger, read_json

from .splits import DatasetError, Entry, Split, check_entries, split_hash, to_datums, write_json_quietly

CACHE_FORMAT = "plpp-fewshot-v1"
CACHE_DIR = "split_fewshot"


def fewshot_cache_path(dataset_dir: str, num_shots: int, seed: int) -> str:
    """Where the ``num_shots``/``seed`` picks of the dataset in ``dataset_dir`` are cached."""
    return osp.join(dataset_dir, CACHE_DIR, f"plpp_shot_{num_shots}-seed_{seed}.json")


def _relative(data: Optional[list[Datum]], dataset_dir: str) -> Optional[list[Entry]]:
    if data is None:
        return None
    return [[osp.relpath(d.impath, dataset_dir).replace(osp.sep, "/"), d.label, d.classname] for d in data]


def _load_cache(path: str, num_shots: int, seed: int, digest: str) -> Optional[dict]:
    """The cache at ``path`` if it was drawn with these shots and seed from this split, else None."""
    if not osp.isfile(path):
        return None
    try:
        cache = read_json(path)
    except (OSError, ValueError) as exc:
        logger.info(f"Few-shot cache {path} is unreadable ({exc}); sampling again and rewriting it")
        return None
    if not isinstance(cache, dict) or cache.get("format") != CACHE_FORMAT:
        logger.info(f"Few-shot cache {path} is not in {CACHE_FORMAT} format; sampling again and rewriting it")
        return None
    if cache.get("split_hash") != digest or cache.get("num_shots") != num_shots or cache.get("seed") != seed:
        logger.info(f"Few-shot cache {path} was drawn from another split (hash {cache.get('split_hash')}, now "
                    f"{digest}); sampling again and rewriting it")
        return None
    if not cache.get("train"):
        logger.info(f"Few-shot cache {path} has no training images; sampling again and rewriting it")
        return None
    try:
        check_entries(cache.get("train"), "train", path)
        if cache.get("val") is not None:
            check_entries(cache["val"], "val", path)
    except DatasetError as exc:
        logger.info(f"{exc} Sampling again and rewriting it")
        return None
    return cache


def sample_fewshot(dataset: Any, cfg: Any, split: Split, image_root: str, dataset_dir: str, source: str,
                   sample_val: bool = True) -> tuple[list[Datum], Optional[list[Datum]]]:
    """K-shot train (and min(K, 4)-shot val when ``sample_val``) from the cache or Dassl's sampler.

    ``source`` names the split in error messages. ``dataset`` is the reader being built; its
    ``generate_fewshot_dataset`` (the engine's) draws from the global ``random``. A cache hit draws
    nothing, exactly like Dassl loading its pickle.
    """
    k, seed = int(cfg.DATASET.NUM_SHOTS), int(cfg.SEED)
    name = type(dataset).__name__
    path = fewshot_cache_path(dataset_dir, k, seed)
    digest = split_hash(split)
    cache = _load_cache(path, k, seed, digest) if seed >= 0 else None
    if cache is not None:
        logger.info(f"Loading the {k}-shot subset (seed {seed}) from {path}")
        train = to_datums(cache["train"], dataset_dir, f"Few-shot cache {path}")
        val = to_datums(cache["val"], dataset_dir, f"Few-shot cache {path}") if cache.get("val") is not None else None
        return train, val
    train = dataset.generate_fewshot_dataset(to_datums(split["train"], image_root, source), num_shots=k)
    val = None
    if sample_val:
        val = dataset.generate_fewshot_dataset(to_datums(split["val"], image_root, source), num_shots=min(k, 4))
    if not train:
        raise DatasetError(f"{source}: the training list is empty, so there is nothing to sample {k} shots from.")
    if seed < 0:
        logger.info("SEED < 0: the few-shot subset is unseeded, so it is not cached")
        return train, val
    cache = {"format": CACHE_FORMAT, "dataset": name, "num_shots": k, "seed": seed, "split_hash": digest,
             "train": _relative(train, dataset_dir), "val": _relative(val, dataset_dir)}
    write_json_quietly(cache, path, f"{k}-shot subset")
    return train, val


def subsample_classes(*lists: list[Datum], subsample: str = "all") -> tuple[list[Datum], ...]:
    """Base/new selection (base = first ceil(n/2) sorted labels, new = the rest, relabelled), on either engine."""
    return _subsample(*lists, subsample=subsample, datum_cls=Datum)


def build_lists(dataset: Any, cfg: Any, split: Split, image_root: str, dataset_dir: str, source: str,
                val_is_test: bool = False) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Train, val and test Datum lists of a split, after few-shot sampling and base/new selection.

    ``source`` names the split (file) in error messages. With ``val_is_test`` (ImageNet) only train is
    sampled and the test list doubles as val, as in CoOp.
    """
    test = to_datums(split["test"], image_root, source)
    if int(cfg.DATASET.NUM_SHOTS) >= 1:
        train, val = sample_fewshot(dataset, cfg, split, image_root, dataset_dir, source,
                                    sample_val=not val_is_test)
    else:
        train = to_datums(split["train"], image_root, source)
        val = None if val_is_test else to_datums(split["val"], image_root, source)
    note_short_classes(train, int(cfg.DATASET.NUM_SHOTS))
    subsample = cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")
    name = type(dataset).__name__
    if val_is_test:
        train, test = subsample_classes(train, test, subsample=subsample)
        check_class_coverage(train, None, test, name)
        return train, test, test
    train, val, test = subsample_classes(train, val, test, subsample=subsample)
    check_class_coverage(train, val, test, name)
    return train, val, test


def note_short_classes(train: list[Datum], num_shots: int) -> None:
    """One log line naming the classes with fewer than ``num_shots`` training images (they keep all they have)."""
    if num_shots < 1:
        return
    counts: dict[tuple[int, str], int] = {}
    for item in train:
        counts[(item.label, item.classname)] = counts.get((item.label, item.classname), 0) + 1
    short = [f"'{name}' {n}" for (_, name), n in sorted(counts.items()) if n < num_shots]
    if short:
        listed = ", ".join(short[:20]) + (f", and {len(short) - 20} more" if len(short) > 20 else "")
        logger.info(f"Note: {len(short)} of {len(counts)} classes have fewer than DATASET.NUM_SHOTS={num_shots} "
                    f"training images and use all they have: {listed}")
