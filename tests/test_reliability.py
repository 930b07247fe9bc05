"""Runs that die, repeat, or get bad input: resume after SIGKILL, determinism, refusals, non-finite losses."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from plpp.engine.checkpoint import save_checkpoint
from tests.conftest import PYTHON, REPO, SMALL_RUN_OPTS, kill_when_logged, saved_ctx, subprocess_env, train_args


@pytest.fixture(scope="module")
def data_root(small_data_root) -> Path:
    return small_data_root


def command(data_root, clip_file, out, epochs=3, extra=(), flags=()) -> list[str]:
    return [PYTHON, "train.py", *train_args(data_root, clip_file, out, seed=7, flags=flags,
                                            opts=("OPTIM.MAX_EPOCH", str(epochs), *SMALL_RUN_OPTS, *extra))]


def run(cmd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def losses(log: str) -> list[str]:
    """Training lines without the wall-clock fields, for exact comparison between runs."""
    lines = [ln for ln in log.splitlines() if ln.startswith("epoch [")]
    return [re.sub(r"(time|data) [\d.]+ \([\d.]+\) |eta \S+", "", ln) for ln in lines]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_root, tiny_clip_file) -> Path:
    """One uninterrupted 3-epoch run, shared by the tests that compare against it (read-only)."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    res = run(command(data_root, tiny_clip_file, ref))
    assert res.returncode == 0, res.stderr[-2000:]
    return ref


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, data_root, tiny_clip_file,
                                                                 reference_run):
    ref = reference_run
    out = tmp_path / "killed"
    cmd = command(data_root, tiny_clip_file, out)
    log = out / "log.txt"
    # killed in the middle of epoch 2, after epoch 1's checkpoint exists
    kill_when_logged(cmd, subprocess_env(), log, "epoch [2/3] batch [2/")
    assert (out / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-1"
    assert "Finish training" not in log.read_text()

    res = run(cmd)
    assert res.returncode == 0, res.stderr[-2000:]
    text = log.read_text()
    assert "Found checkpoint" in text and "Finish training" in text
    assert torch.equal(saved_ctx(out, 3), saved_ctx(ref, 3))
    assert json.loads((out / "results.json").read_text())["accuracy"] == \
        json.loads((ref / "results.json").read_text())["accuracy"]


def test_two_seeded_runs_are_identical(tmp_path, data_root, tiny_clip_file, reference_run):
    out = tmp_path / "again"
    res = run(command(data_root, tiny_clip_file, out, extra=("DETERMINISTIC", "True")))
    assert res.returncode == 0, res.stderr[-2000:]
    first = losses((reference_run / "log.txt").read_text())
    assert first and first == losses((out / "log.txt").read_text())
    assert torch.equal(saved_ctx(out, 3), saved_ctx(reference_run, 3))


def test_seed_zero_is_honoured(tmp_path, data_root, tiny_clip_file):
    out = tmp_path / "zero"
    cmd = command(data_root, tiny_clip_file, out, epochs=1)
    cmd[cmd.index("--seed") + 1] = "0"
    res = run(cmd)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "SEED: 0" in (out / "config.yaml").read_text()
    assert json.loads((out / "results.json").read_text())["seed"] == 0


def test_resume_with_a_different_config_is_refused(data_root, tiny_clip_file, reference_run):
    before = sorted(p.name for p in reference_run.rglob("*"))
    res = run(command(data_root, tiny_clip_file, reference_run, extra=("OPTIM.LR", "0.01")))
    assert res.returncode == 2
    assert "different config" in res.stderr and "OPTIM.LR" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in reference_run.rglob("*")) == before  # nothing written


def test_truncated_checkpoint_is_never_loaded(tmp_path, data_root, tiny_clip_file, reference_run):
    model_dir = tmp_path / "copy"
    (model_dir / "prompt_learner").mkdir(parents=True)
    good = (reference_run / "prompt_learner" / "model.pth.tar-3").read_bytes()
    (model_dir / "prompt_learner" / "model.pth.tar-3").write_bytes(good[:200])
    res = run(command(data_root, tiny_clip_file, tmp_path / "ev", epochs=1,
                      flags=("--eval-only", "--model-dir", str(model_dir), "--load-epoch", "3")))
    assert res.returncode == 2 and "truncated or corrupt" in res.stderr and "Traceback" not in res.stderr


def test_pickled_objects_of_a_checkpoint_to_evaluate_are_skipped_never_built(tmp_path, data_root, tiny_clip_file):
    """A Dassl-written checkpoint (its scheduler pickles objects) evaluates; the objects are named, never built."""
    model_dir = tmp_path / "foreign"
    state = {"state_dict": {"ctx": torch.zeros(4, 64)}, "epoch": 1, "scheduler": {"successor": torch.optim.SGD}}
    (model_dir / "prompt_learner").mkdir(parents=True)
    torch.save(state, model_dir / "prompt_learner" / "model.pth.tar-1")
    res = run(command(data_root, tiny_clip_file, tmp_path / "ev", epochs=1,
                      flags=("--eval-only", "--model-dir", str(model_dir), "--load-epoch", "1")))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "holds pickled Python objects; they were skipped, never built: torch.optim.sgd.SGD" in (
        tmp_path / "ev" / "log.txt").read_text()


def test_init_weights_of_wrong_shape_name_the_keys(tmp_path, data_root, tiny_clip_file):
    bad = tmp_path / "other.pth"
    save_checkpoint({"state_dict": {"ctx": torch.zeros(16, 64), "meta_net.weight": torch.zeros(2, 2)}}, str(bad))
    res = run(command(data_root, tiny_clip_file, tmp_path / "run", epochs=1, extra=("MODEL.INIT_WEIGHTS", str(bad))))
    assert res.returncode == 2
    assert "ctx: checkpoint (16, 64) vs model (4, 64)" in res.stderr and "meta_net.weight" in res.stderr


def test_non_finite_loss_names_epoch_batch_and_term(tmp_path, data_root, tiny_clip_file):
    out = tmp_path / "nan"
    res = run(command(data_root, tiny_clip_file, out, epochs=2,
                      extra=("OPTIM.LR", "1e30", "OPTIM.WARMUP_EPOCH", "0")))
    assert res.returncode == 2, res.stderr[-2000:]
    msg = res.stderr
    assert re.search(r"epoch \d+/2, batch \d+/\d+", msg) and "Non-finite term: loss_" in msg
    assert "Traceback" not in msg
    assert not list(out.glob("prompt_learner/model.pth.tar-*")) or all(
        torch.isfinite(torch.load(p, weights_only=True)["state_dict"]["ctx"]).all()
        for p in out.glob("prompt_learner/model.pth.tar-*"))
