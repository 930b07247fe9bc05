"""The built-in engine keeps Dassl's semantics: LR sequence, few-shot order, subsampling, registries, I/O."""

from __future__ import annotations

import math
import os
import random
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from plpp.engine import DatasetBase, Datum, build_lr_scheduler, build_optimizer, get_cfg_default
from plpp.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from plpp.engine.evaluator import Classification, macro_f1
from plpp.engine.registry import Registry
from tests.conftest import PYTHON, REPO, subprocess_env


def _optim_and_sched(optim_overrides: dict):
    """An optimizer over one parameter and its schedule, built from OPTIM keys as the trainers do."""
    cfg = get_cfg_default()
    for k, v in optim_overrides.items():
        setattr(cfg.OPTIM, k, v)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(3))], cfg.OPTIM)
    return opt, build_lr_scheduler(opt, cfg.OPTIM)


def _lrs(optim_overrides: dict, epochs: int) -> list[float]:
    opt, sched = _optim_and_sched(optim_overrides)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


COOP_RECIPE = dict(NAME="sgd", LR=0.002, MAX_EPOCH=5, LR_SCHEDULER="cosine", WARMUP_EPOCH=1,
                   WARMUP_TYPE="constant", WARMUP_CONS_LR=1e-5)


def test_lr_sequence_matches_dassl_coop_recipe():
    lrs = _lrs(COOP_RECIPE, 5)
    assert lrs == pytest.approx([1e-5, 2e-3, 1.809017e-3, 1.309017e-3, 6.909830e-4], rel=1e-5)


def test_lr_sequence_linear_warmup_and_no_recount():
    lrs = _lrs(dict(COOP_RECIPE, WARMUP_EPOCH=2, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-4), 4)
    assert lrs[:2] == pytest.approx([1e-4, 1e-3])  # min LR, then LR * epoch / warmup
    assert lrs[2] == pytest.approx(2e-3)
    no_recount = _lrs(dict(COOP_RECIPE, WARMUP_RECOUNT=False), 3)
    assert no_recount[1] == pytest.approx(2e-3 * (1 + math.cos(math.pi / 5)) / 2)


def test_step_schedules():
    single = _lrs(dict(NAME="sgd", LR=0.1, MAX_EPOCH=6, LR_SCHEDULER="single_step", STEPSIZE=(2,), GAMMA=0.5), 6)
    assert single == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    multi = _lrs(dict(NAME="sgd", LR=0.1, MAX_EPOCH=6, LR_SCHEDULER="multi_step", STEPSIZE=(1, 4), GAMMA=0.1), 6)
    assert multi == pytest.approx([0.1, 0.01, 0.01, 0.01, 0.001, 0.001])


def test_scheduler_state_is_weights_only_loadable(tmp_path):
    opt, sched = _optim_and_sched(COOP_RECIPE)
    for _ in range(2):
        opt.step()
        sched.step()
    save_checkpoint({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, str(tmp_path / "s.pth"))
    state = torch.load(tmp_path / "s.pth", weights_only=True)
    opt2, sched2 = _optim_and_sched(COOP_RECIPE)
    sched2.load_state_dict(state["scheduler"])
    opt2.load_state_dict(state["optimizer"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(1.809017e-3, rel=1e-5)


def test_unknown_optimizer_and_scheduler_are_named():
    cfg = get_cfg_default()
    cfg.OPTIM.NAME = "sgdd"
    with pytest.raises(ValueError, match="sgdd"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.OPTIM)


def _data(tmp_path, n_labels: int, per_label: int) -> list[Datum]:
    img = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(img)
    items = [Datum(str(img), label=y, classname=f"c{y}") for y in range(n_labels) for _ in range(per_label)]
    random.Random(0).shuffle(items)  # labels appear in a mixed order, as in real splits
    return items


def test_fewshot_follows_dassl_order(tmp_path):
    data = _data(tmp_path, 5, 7)
    random.seed(3)
    picked = DatasetBase.__new__(DatasetBase).generate_fewshot_dataset(data, num_shots=4)
    # Dassl: group by label in order of first appearance, random.sample(items, K) per label.
    random.seed(3)
    groups: OrderedDict = OrderedDict()
    for item in data:
        groups.setdefault(item.label, []).append(item)
    expected = [x for items in groups.values() for x in random.sample(items, 4)]
    assert [id(x) for x in picked] == [id(x) for x in expected]
    random.seed(3)
    again = DatasetBase.__new__(DatasetBase).generate_fewshot_dataset(data, num_shots=4)
    assert [id(x) for x in again] == [id(x) for x in picked]


def test_fewshot_keeps_all_when_fewer(tmp_path):
    data = _data(tmp_path, 3, 2)
    out = DatasetBase.__new__(DatasetBase).generate_fewshot_dataset(data, num_shots=5)
    assert len(out) == 6


@pytest.mark.parametrize("n, base, new", [(100, 50, 50), (37, 19, 18), (10, 5, 5), (1, 1, 0)])
def test_subsample_classes_sizes(tmp_path, n, base, new):
    data = _data(tmp_path, n, 1)
    (b,) = DatasetBase.subsample_classes(data, subsample="base")
    (nw,) = DatasetBase.subsample_classes(data, subsample="new")
    assert len({x.label for x in b}) == base and len({x.label for x in nw}) == new
    assert sorted({x.label for x in b}) == list(range(base))
    assert sorted({x.label for x in nw}) == list(range(new))
    if new:
        assert {x.classname for x in nw} == {f"c{y}" for y in range(base, n)}


def test_datum_requires_existing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        Datum(str(tmp_path / "nope.jpg"), 0)


def test_registry_refuses_duplicates_and_suggests():
    reg = Registry("THING")

    @reg.register()
    class Alpha:
        pass

    with pytest.raises(KeyError):
        reg.register(Alpha)
    with pytest.raises(KeyError, match=r"Did you mean .{0,3}Alpha"):
        reg.get("Alpah")


def test_config_has_dassl_defaults():
    cfg = get_cfg_default()
    assert cfg.OPTIM.NAME == "adam" and cfg.OPTIM.WEIGHT_DECAY == 5e-4 and cfg.OPTIM.MOMENTUM == 0.9
    assert cfg.SEED == -1 and cfg.DATALOADER.TEST.BATCH_SIZE == 32 and cfg.TEST.FINAL_MODEL == "last_step"
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "all" and cfg.INPUT.INTERPOLATION == "bilinear"


def test_checkpoint_roundtrip_and_refusals(tmp_path):
    path = tmp_path / "m" / "model.pth.tar-1"
    state = {"state_dict": {"ctx": torch.randn(4, 8)}, "epoch": 1, "val_result": None}
    save_checkpoint(state, str(path))
    assert sorted(os.listdir(path.parent)) == ["model.pth.tar-1"]  # no temp file left behind
    loaded = load_checkpoint(str(path))
    assert torch.equal(loaded["state_dict"]["ctx"], state["state_dict"]["ctx"])
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(str(truncated))
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "scheduler": OrderedDict(obj=Registry("X"))}, pickled)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(str(pickled))


def test_macro_f1_and_result_block(caplog):
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    # per class F1: 1/2, 4/5, 2/3
    assert macro_f1(y_true, y_pred) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    ev = Classification(get_cfg_default())
    logits = torch.nn.functional.one_hot(torch.from_numpy(y_pred), 3).float()
    ev.process(logits, torch.from_numpy(y_true))
    import logging

    logging.getLogger("plpp").propagate = True
    with caplog.at_level("INFO", logger="plpp"):
        res = ev.evaluate()
    assert res["accuracy"] == pytest.approx(400 / 6)
    text = caplog.text
    assert "=> result" in text and "* total: 6" in text and "* accuracy: 66.7%" in text
    assert "* error: 33.3%" in text and "* macro_f1: 65.6%" in text


def test_train_help_works_without_dassl():
    out = subprocess.run([PYTHON, "train.py", "--help"], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--eval-only" in out.stdout and "--load-epoch" in out.stdout


def test_unknown_names_give_one_clear_error(tmp_path):
    env = subprocess_env()
    bad_key = subprocess.run([PYTHON, "train.py", "--output-dir", str(tmp_path), "TRAINER.COOP.NCTX", "4"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad_key.returncode == 2
    assert "TRAINER.COOP.N_CTX" in bad_key.stderr and "Traceback" not in bad_key.stderr
    bad_trainer = subprocess.run([PYTHON, "train.py", "--trainer", "PLP", "--output-dir", str(tmp_path),
                                  "DATASET.NAME", "FashionMNIST", "--root", str(tmp_path)],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad_trainer.returncode == 2 and "Traceback" not in bad_trainer.stderr
