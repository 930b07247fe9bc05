"""``train.py`` end to end on a tiny CLIP and real image files: train, log, checkpoint, evaluate again."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import PYTHON, REPO, saved_ctx, subprocess_env, train_args, write_fashion_mnist

RUN_OPTS = ["DATALOADER.TRAIN_X.BATCH_SIZE", "8", "OPTIM.LR", "0.05", "DATASET.NUM_SHOTS", "8"]


def run_train(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "train.py", *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def accuracy(log: str) -> float:
    return float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=4, train_per_class=16, test_per_class=6)
    return root


def common(data_root, clip_file, out, trainer="PLPP", epochs=2, extra=(), flags=()):
    return train_args(data_root, clip_file, out, trainer=trainer, flags=flags,
                      opts=("OPTIM.MAX_EPOCH", str(epochs), *RUN_OPTS, *extra))


def test_train_then_eval_only_reproduces_accuracy(tmp_path, data_root, tiny_clip_file):
    out = tmp_path / "run"
    res = run_train(common(data_root, tiny_clip_file, out, extra=("TRAINER.COOP.N_CTX", "4")))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "log.txt").read_text()
    for line in ("=> result", "* total: 24", "* correct:", "* accuracy:", "* error:", "* macro_f1:",
                 "Finish training"):
        assert line in log
    assert re.search(r"epoch \[2/2\] batch \[\d+/\d+\] time .* loss_ce .* loss_ppl .* loss_ippl .* perplexity .* "
                     r"acc .* lr .* eta", log)
    assert "Prompt words (epoch 2):" in log
    ckpt = out / "prompt_learner" / "model.pth.tar-2"
    assert ckpt.is_file() and not (out / "prompt_learner" / "model.pth.tar-1").exists()
    state = torch.load(ckpt, weights_only=True)
    assert set(state["state_dict"]) == {"ctx"} and state["epoch"] == 2
    results = json.loads((out / "results.json").read_text())
    assert results["accuracy"] == pytest.approx(accuracy(log), abs=0.05) and results["eval_only"] is False
    for name in ("config.yaml", "env.txt"):
        assert (out / name).is_file()
    assert "PLPP engine backend: builtin" in (out / "env.txt").read_text()

    ev = tmp_path / "eval"
    res2 = run_train(common(data_root, tiny_clip_file, ev, extra=("TRAINER.COOP.N_CTX", "4"),
                            flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "2")))
    assert res2.returncode == 0, res2.stderr[-3000:]
    log2 = (ev / "log.txt").read_text()
    assert accuracy(log2) == accuracy(log)
    assert json.loads((ev / "results.json").read_text())["eval_only"] is True


def test_plpp_learns_above_chance(tmp_path, data_root, tiny_clip_file):
    out = tmp_path / "learn"
    extra = ("TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", "True", "OPTIM.NAME", "adam", "OPTIM.LR", "0.01",
             "OPTIM.WARMUP_EPOCH", "0", "DATASET.NUM_SHOTS", "16", "INPUT.TRANSFORMS", "('normalize',)")
    res = run_train(common(data_root, tiny_clip_file, out, epochs=10, extra=extra))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert accuracy(log) >= 40.0  # 4 classes: chance is 25%; a random CLIP's image features barely differ
    ppl = [float(x) for x in re.findall(r"perplexity ([\d.]+) \(", log)]
    assert ppl and all(p > 1 for p in ppl)


def test_eval_only_on_new_classes_from_base_checkpoint(tmp_path, data_root, tiny_clip_file):
    base = tmp_path / "base"
    extra = ("TRAINER.COOP.N_CTX", "4")
    res = run_train(common(data_root, tiny_clip_file, base, epochs=1,
                           extra=extra + ("DATASET.SUBSAMPLE_CLASSES", "base")))
    assert res.returncode == 0, res.stderr[-3000:]
    new = tmp_path / "new"
    res2 = run_train(common(data_root, tiny_clip_file, new, extra=extra + ("DATASET.SUBSAMPLE_CLASSES", "new"),
                            flags=("--eval-only", "--model-dir", str(base), "--load-epoch", "1")))
    assert res2.returncode == 0, res2.stderr[-3000:]
    assert "* total: 12" in (new / "log.txt").read_text()  # 2 new classes x 6 test images


def test_missing_clip_weights_stop_before_training(tmp_path, data_root):
    out = tmp_path / "nowts"
    res = run_train(common(data_root, tmp_path / "absent.pt", out))
    assert res.returncode == 2
    assert "absent.pt" in res.stderr and "Traceback" not in res.stderr
    assert not list(out.glob("*/model.pth.tar-*"))


def test_plpp_with_zero_weights_is_coop(tmp_path, data_root, tiny_clip_file):
    ctxs = []
    zero = ("TRAINER.PLPP.PPL_WEIGHT", "0.0", "TRAINER.PLPP.IPPL_WEIGHT", "0.0")
    for trainer, extra in (("CoOp", ()), ("PLPP", zero)):
        out = tmp_path / trainer
        res = run_train(common(data_root, tiny_clip_file, out, trainer=trainer, epochs=1,
                               extra=("TRAINER.COOP.N_CTX", "4", *extra)))
        assert res.returncode == 0, res.stderr[-3000:]
        ctxs.append(saved_ctx(out, 1))
    assert torch.equal(ctxs[0], ctxs[1])
