"""Few-shot subsets in Dassl's order, their JSON cache (keyed by shots, seed and split hash), base/new classes."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch

from plpp.engine import DatasetBase, Datum
from tests.test_datasets import build, make_food101, make_split_dataset, plpp_log, rel

torch.set_num_threads(1)


def engine_fewshot(base, shots: int, seed: int):
    """What the engine's ``generate_fewshot_dataset`` picks from Food101's split file after ``random.seed(seed)``."""
    split = json.loads((base / "split_zhou_Food101.json").read_text())

    def datums(key):
        return [Datum(impath=str(base / "images" / p), label=y, classname=c) for p, y, c in split[key]]

    sampler = object.__new__(DatasetBase)
    random.seed(seed)
    train = sampler.generate_fewshot_dataset(datums("train"), num_shots=shots)
    val = sampler.generate_fewshot_dataset(datums("val"), num_shots=min(shots, 4))
    return train, val, random.getstate()


@pytest.mark.parametrize("n_classes,base_n,new_n", [(100, 50, 50), (37, 19, 18)])
def test_base_new_sizes(tmp_path, n_classes, base_n, new_n):
    make_food101(tmp_path, n_classes=n_classes, per_split=(1, 1, 1))
    base = build(tmp_path, "Food101", subsample="base")
    new = build(tmp_path, "Food101", subsample="new")
    assert (base.num_classes, new.num_classes) == (base_n, new_n)
    assert sorted({d.label for d in new.test}) == list(range(new_n))  # relabelled from 0
    assert new.classnames[0] == f"class {base_n}"  # names kept
    assert len(base.val) == base_n and len(new.test) == new_n


def test_fewshot_matches_engine_order_and_is_deterministic(tmp_path):
    base = make_food101(tmp_path, n_classes=4, per_split=(8, 6, 2))
    want_train, want_val, want_state = engine_fewshot(base, shots=3, seed=1)
    random.seed(1)  # what the trainer does with cfg.SEED before building data
    ds = build(tmp_path, "Food101", shots=3, seed=1)
    assert rel(ds.train_x, tmp_path) == rel(want_train, tmp_path)
    assert rel(ds.val, tmp_path) == rel(want_val, tmp_path)
    assert random.getstate() == want_state  # consumed exactly as Dassl: train then val, nothing else
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (12, 12, 8)  # val with min(K, 4) = 3 per class

    (base / "split_fewshot" / "plpp_shot_3-seed_1.json").unlink()
    random.seed(1)
    again = build(tmp_path, "Food101", shots=3, seed=1)
    assert rel(again.train_x, tmp_path) == rel(ds.train_x, tmp_path)
    random.seed(2)
    other = build(tmp_path, "Food101", shots=3, seed=2)
    assert rel(other.train_x, tmp_path) != rel(ds.train_x, tmp_path)


def test_fewshot_cache_format_and_reuse(tmp_path):
    base = make_food101(tmp_path, n_classes=3, per_split=(5, 5, 1))
    (base / "split_fewshot").mkdir()
    (base / "split_fewshot" / "shot_2-seed_1.pkl").write_bytes(b"not a pickle")  # Dassl's cache: never read
    random.seed(1)
    first = build(tmp_path, "Food101", shots=2, seed=1)
    path = base / "split_fewshot" / "plpp_shot_2-seed_1.json"
    cache = json.loads(path.read_text())
    assert cache["format"] == "plpp-fewshot-v1" and (cache["num_shots"], cache["seed"]) == (2, 1)
    assert len(cache["split_hash"]) == 16
    assert cache["train"][0][0] == rel(first.train_x, base)[0][0]  # relative to the dataset folder
    assert cache["train"][0][0].startswith("images/")
    random.seed(99)
    state = random.getstate()
    with plpp_log() as log:
        second = build(tmp_path, "Food101", shots=2, seed=1)
    assert random.getstate() == state  # loaded, not sampled
    assert any("Loading the 2-shot subset" in m for m in log)
    assert rel(second.train_x, tmp_path) == rel(first.train_x, tmp_path)
    assert rel(second.val, tmp_path) == rel(first.val, tmp_path)


def test_changed_split_invalidates_cache(tmp_path):
    base = make_food101(tmp_path, n_classes=3, per_split=(5, 5, 1))
    random.seed(1)
    build(tmp_path, "Food101", shots=2, seed=1)
    path = base / "split_fewshot" / "plpp_shot_2-seed_1.json"
    old = json.loads(path.read_text())
    split_path = base / "split_zhou_Food101.json"
    split = json.loads(split_path.read_text())
    picked = {x[0].removeprefix("images/") for x in old["train"]}  # cache paths are relative to food-101/
    split["train"] = [e for e in split["train"] if e[0] not in picked]  # drop the old picks
    split_path.write_text(json.dumps(split))
    random.seed(1)
    with plpp_log() as log:
        ds = build(tmp_path, "Food101", shots=2, seed=1)
    new = json.loads(path.read_text())
    assert new["split_hash"] != old["split_hash"]
    assert any("another split" in m and "sampling again" in m for m in log)
    assert not {x[0] for x in new["train"]} & {x[0] for x in old["train"]}
    assert {r[0] for r in rel(ds.train_x, base)} == {x[0] for x in new["train"]}


def test_moved_root_keeps_cache(tmp_path):
    make_food101(tmp_path / "a", n_classes=3, per_split=(5, 5, 1))
    random.seed(1)
    first = build(tmp_path / "a", "Food101", shots=2, seed=1)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    random.seed(5)
    state = random.getstate()
    moved = build(tmp_path / "b", "Food101", shots=2, seed=1)
    assert random.getstate() == state  # the cache was reused after the move
    assert rel(moved.train_x, tmp_path / "b") == rel(first.train_x, tmp_path / "a")
    assert all(d.impath.startswith(str(tmp_path / "b")) for d in moved.train_x)


def test_unseeded_runs_are_not_cached_and_shots_above_class_size_take_all(tmp_path):
    base = make_food101(tmp_path, n_classes=2, per_split=(3, 2, 1))
    ds = build(tmp_path, "Food101", shots=16, seed=-1)
    assert len(ds.train_x) == 6 and len(ds.val) == 4
    assert not (base / "split_fewshot").exists()


def test_subsample_after_sampling(tmp_path):
    make_split_dataset(tmp_path, "oxford_pets", "images", "split_zhou_OxfordPets.json", 5, (4, 4, 2))
    random.seed(1)
    full = build(tmp_path, "OxfordPets", shots=2, seed=1)
    random.seed(1)
    new = build(tmp_path, "OxfordPets", shots=2, seed=1, subsample="new")  # cache hit, then new classes
    assert new.num_classes == 2 and len(new.train_x) == 4 and len(new.test) == 4
    assert {d.impath for d in new.train_x} == {d.impath for d in full.train_x if d.label >= 3}


@pytest.mark.parametrize("content", ["{broken", json.dumps({"format": "plpp-fewshot-v1", "split_hash": "x"}),
                                     json.dumps({"format": "other"})])
def test_unusable_cache_is_redrawn(tmp_path, content):
    base = make_food101(tmp_path, n_classes=3, per_split=(5, 5, 1))
    want_train, _, _ = engine_fewshot(base, shots=2, seed=1)
    path = base / "split_fewshot" / "plpp_shot_2-seed_1.json"
    path.parent.mkdir()
    path.write_text(content)
    random.seed(1)
    with plpp_log() as log:
        ds = build(tmp_path, "Food101", shots=2, seed=1)
    assert any("sampling again" in m.lower() for m in log)
    assert rel(ds.train_x, tmp_path) == rel(want_train, tmp_path)
    assert json.loads(path.read_text())["format"] == "plpp-fewshot-v1"
