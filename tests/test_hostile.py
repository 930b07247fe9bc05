"""A hostile user: runs killed at any point, two runs on one folder, mistyped flags, crafted weights files,
data that cannot give a right answer, malformed files. Each gets the unbroken result or one clear line.

Real ``train.py`` subprocesses on a tiny random CLIP and fabricated data in temporary folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch

from plpp.engine.cli import main as train_main
from tests.conftest import (
    PYTHON,
    REPO,
    SMALL_RUN_OPTS,
    build_tiny_clip,
    subprocess_env,
    train_args,
    write_fashion_mnist,
)

# A 5-epoch best_val run whose validation accuracy peaks before the last epochs (25, 25, 50, 25, 50 with
# seed 8): a resumed run that forgot the best score would replace model-best.pth.tar after resuming. It
# keeps the checkpoints of epochs 2 and 4 besides the last (TRAIN.CHECKPOINT_FREQ 2).
EPOCHS = 5
BEST_VAL = ("TRAINER.COOP.CSC", "True", "OPTIM.NAME", "adam", "OPTIM.LR", "0.1", "OPTIM.WARMUP_EPOCH", "0",
            "INPUT.TRANSFORMS", "('normalize',)", "TEST.FINAL_MODEL", "best_val", "TRAIN.CHECKPOINT_FREQ", "2")


def args_for(data_root, clip_file, out, epochs=EPOCHS, extra=(), flags=()) -> list[str]:
    return train_args(data_root, clip_file, out, seed=8, flags=flags,
                      opts=("OPTIM.MAX_EPOCH", str(epochs), *SMALL_RUN_OPTS, *BEST_VAL, *extra))


def run(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def train(args: list[str]) -> subprocess.CompletedProcess:
    return run([PYTHON, "train.py", *args])


def one_line_error(res: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a refused command (exit status 2, no traceback)."""
    assert res.returncode == 2, res.stdout[-1500:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.stderr[-3000:]
    return lines[0]


def digests(folder: Path, skip: tuple[str, ...] = ("tensorboard",)) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``folder`` (``skip``: top-level names left out)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip}


def wait_for(proc: subprocess.Popen, log: Path, marker: str, timeout: float = 240, poll: float = 0.05) -> None:
    deadline = time.time() + timeout
    while marker not in (log.read_text() if log.exists() else ""):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before logging {marker!r}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {marker!r}")
        time.sleep(poll)


def result_lines(log: str) -> list[str]:
    """The last ``=> result`` block (the final test) of a log."""
    blocks = log.split("=> result")
    return [ln for ln in blocks[-1].splitlines()[:6] if ln.startswith("* ")]


def epoch_lines(log: str) -> dict[str, str]:
    """Training lines keyed by ``epoch [e/n] batch [b/m]``, the last attempt's kept, without wall-clock fields."""
    out = {}
    for ln in log.splitlines():
        m = re.match(r"(epoch \[\d+/\d+\] batch \[\d+/\d+\])", ln)
        if m:
            out[m.group(1)] = re.sub(r"(time|data) [\d.]+ \([\d.]+\) |eta \S+", "", ln)
    return out


def fresh_data_root(tmp_path_factory) -> Path:
    """``small_data_root``'s data without its few-shot cache: a run that samples its shots draws from Python's
    RNG (saved in every checkpoint), one that reads the cache does not, so byte-compared runs both sample."""
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=4, train_per_class=10, test_per_class=4)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_clip_file) -> Path:
    """One unbroken best_val run (read-only for the tests that use it)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    res = train(args_for(fresh_data_root(tmp_path_factory), tiny_clip_file, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_clip_file) -> dict:
    """The same run, disturbed: a second start while it runs, kill -9 in epoch 4, kill -9 after the last
    checkpoint (before the final test), then a rerun that finishes it."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    args = [PYTHON, "train.py", *args_for(fresh_data_root(tmp_path_factory), tiny_clip_file, out)]
    log = out / "log.txt"
    env = subprocess_env()
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(first, log, "epoch [2/5] batch [1/")
    first.send_signal(signal.SIGSTOP)  # holds the folder, paused while a second start is tried
    try:
        second = run(args)
    finally:
        first.send_signal(signal.SIGCONT)
    wait_for(first, log, "epoch [4/5] batch [2/")
    first.kill()
    first.wait()
    resumed = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(resumed, log, "Finish training", poll=0.002)  # after the last checkpoint, before the final test
    resumed.kill()
    resumed.wait()
    if (out / "results.json").exists():  # the final test (a fraction of a second) ended before the kill landed:
        (out / "results.json").unlink()  # leave the folder as a kill just before its last rename would
    final = run(args)
    assert final.returncode == 0, final.stderr[-3000:]
    return {"out": out, "first_pid": first.pid, "second": second}


# --------------------------------------------------------------------------------------------- §2 resume


def test_kill_at_any_point_then_rerun_equals_the_unbroken_run(reference, interrupted):
    out = interrupted["out"]
    best = torch.load(reference / "prompt_learner" / "model-best.pth.tar", weights_only=True)
    assert best["epoch"] < 4  # the best epoch is before the first kill: forgetting it would change model-best
    for name in ("prompt_learner/model-best.pth.tar", f"prompt_learner/model.pth.tar-{EPOCHS}", "results.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert sorted(digests(out, skip=("tensorboard", "log.txt"))) == sorted(digests(reference, skip=("tensorboard",
                                                                                                    "log.txt")))
    ref_log, log = (reference / "log.txt").read_text(), (out / "log.txt").read_text()
    assert result_lines(log) == result_lines(ref_log) and result_lines(log)
    assert epoch_lines(log) == epoch_lines(ref_log)
    results = json.loads((out / "results.json").read_text())
    assert results["epoch"] == best["epoch"] and results["final_model"] == "best_val"
    assert results["weights_from"] == {"prompt_learner": "prompt_learner/model-best.pth.tar"}


def test_second_run_on_a_busy_folder_is_refused_naming_the_holder(interrupted):
    line = one_line_error(interrupted["second"])
    assert f"PID {interrupted['first_pid']}" in line and "in use by another run" in line
    assert (interrupted["out"] / "log.txt").read_text().count("Collecting env info") == 3  # it wrote nothing


def test_lock_of_a_killed_run_is_taken_over_and_released(interrupted):
    log = (interrupted["out"] / "log.txt").read_text()
    assert f"Took over the lock of an earlier run in this folder (PID {interrupted['first_pid']})" in log
    assert not (interrupted["out"] / "run.lock").exists()


def test_final_model_accepts_only_last_step_and_best_val(capsys, tmp_path, small_data_root, tiny_clip_file):
    code = train_main(args_for(small_data_root, tiny_clip_file, tmp_path / "run", extra=("TEST.FINAL_MODEL", "best")))
    assert code == 2
    assert "TEST.FINAL_MODEL 'best' is not valid; choose one of last_step, best_val" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_truncated_checkpoint_advice_works_and_stale_temp_files_go(tmp_path, reference, small_data_root,
                                                                    tiny_clip_file):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    folder = out / "prompt_learner"
    last = folder / f"model.pth.tar-{EPOCHS}"
    last.write_bytes(last.read_bytes()[:2000])  # a truncated newest checkpoint
    (out / "results.json").unlink()
    stale = folder / f"model.pth.tar-{EPOCHS}.tmp-99999999"
    stale.write_bytes(b"half a file")
    args = args_for(small_data_root, tiny_clip_file, out)
    line = one_line_error(train(args))
    assert f"Checkpoint {last} is truncated or corrupt" in line
    assert f"Delete it and rerun the same command: training resumes from {folder / 'model.pth.tar-4'} (epoch 4)" in line
    last.unlink()  # follow the advice
    res = train(args)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in (f"prompt_learner/model.pth.tar-{EPOCHS}", "prompt_learner/model-best.pth.tar", "results.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not stale.exists()
    assert f"Removed {stale}, a temporary file left by an interrupted run" in (out / "log.txt").read_text()


@pytest.mark.parametrize("missing,flags", [("optimizer", ()), ("epoch", ("--eval-only",))])
def test_checkpoint_missing_a_field_is_named(missing, flags, tmp_path, reference, small_data_root, tiny_clip_file):
    run_dir = tmp_path / "copy"
    shutil.copytree(reference, run_dir)
    (run_dir / "results.json").unlink()
    ckpt = run_dir / "prompt_learner" / f"model.pth.tar-{EPOCHS}"
    state = torch.load(ckpt, weights_only=True)
    del state[missing]
    torch.save(state, ckpt)
    if flags:
        flags = (*flags, "--model-dir", str(run_dir), "--load-epoch", str(EPOCHS))
    out = tmp_path / "eval" if flags else run_dir
    line = one_line_error(train(args_for(small_data_root, tiny_clip_file, out, flags=flags)))
    assert f"Checkpoint {ckpt} has no '{missing}' field" in line


# --------------------------------------------------------------------------------------------- §3 folders


def test_resume_typo_with_a_new_lr_never_touches_the_finished_run(reference, small_data_root, tiny_clip_file,
                                                                  capsys):
    before = digests(reference, skip=())
    typo = str(reference) + "_typo"
    code = train_main(args_for(small_data_root, tiny_clip_file, reference, extra=("OPTIM.LR", "0.01"),
                               flags=("--resume", typo)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and f"error: --resume {typo} holds no checkpoint" in err
    assert digests(reference, skip=()) == before and not Path(typo).exists()


def test_rerun_of_a_finished_run_changes_nothing(reference, small_data_root, tiny_clip_file, capsys):
    before = digests(reference, skip=())
    assert train_main(args_for(small_data_root, tiny_clip_file, reference)) == 0
    out = capsys.readouterr().out
    assert "holds this run, finished" in out and "nothing was changed" in out
    assert digests(reference, skip=()) == before


def test_eval_only_into_the_training_folder_writes_its_own_record(tmp_path, reference, small_data_root,
                                                                  tiny_clip_file):
    run_dir = tmp_path / "copy"
    shutil.copytree(reference, run_dir)
    before = digests(run_dir, skip=())
    res = train(args_for(small_data_root, tiny_clip_file, run_dir,
                         flags=("--eval-only", "--model-dir", str(run_dir))))
    assert res.returncode == 0, res.stderr[-2000:]
    record = run_dir / "eval" / "FashionMNIST_best"
    after = digests(run_dir, skip=())
    assert {k: v for k, v in after.items() if not k.startswith("eval/")} == before
    results = json.loads((record / "results.json").read_text())
    trained = json.loads((run_dir / "results.json").read_text())
    assert results["eval_only"] is True and results["epoch"] == trained["epoch"]
    assert results["weights_from"] == {"prompt_learner": str(run_dir / "prompt_learner" / "model-best.pth.tar")}
    assert results["accuracy"] == trained["accuracy"]
    assert json.loads((record / "run.json").read_text())["model_dir"] == str(run_dir)


def test_results_json_states_the_epoch_of_untrained_weights(tmp_path, small_data_root, tiny_clip_file):
    out = tmp_path / "zero"
    res = train(args_for(small_data_root, tiny_clip_file, out, epochs=0, extra=("TEST.FINAL_MODEL", "last_step")))
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert (results["epoch"], results["eval_only"], results["weights_from"]) == (0, False, None)


# --------------------------------------------------------------------------------------------- §4 weights


PAYLOAD = """
import torch
from typing import Tuple


class Payload(torch.nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.target = target

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.weight, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.target = state[1]
        self.training = state[2]
        torch.save(torch.zeros(1), state[1])
"""


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> dict:
    """A TorchScript archive whose ``__setstate__`` writes a file when ``torch.jit.load`` runs it."""
    import importlib.util

    folder = tmp_path_factory.mktemp("crafted")
    source = folder / "payload_module.py"
    source.write_text(PAYLOAD)  # TorchScript compiles from a source file
    spec = importlib.util.spec_from_file_location("payload_module", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target, probe = folder / "victim.txt", folder / "probe.txt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(module.Payload(str(target))).save(str(folder / "ViT-B-32.pt"))
        torch.jit.script(module.Payload(str(probe))).save(str(folder / "probe.pt"))
        torch.jit.load(str(folder / "probe.pt"))  # the payload is live: loading it the old way writes its file
    assert probe.exists()
    target.write_text("untouched")
    return {"archive": folder / "ViT-B-32.pt", "target": target}


def test_crafted_archive_never_runs_through_train_py(crafted, tmp_path, small_data_root):
    res = train(args_for(small_data_root, crafted["archive"], tmp_path / "run"))
    line = one_line_error(res)
    assert "restores itself with its own __setstate__ code" in line and str(crafted["archive"]) in line
    assert crafted["target"].read_text() == "untouched"


def test_crafted_archive_never_runs_through_check_weights_and_the_demo(crafted, tmp_path, capsys):
    from plpp.tools.check_weights import main as check_weights

    assert check_weights([str(crafted["archive"])]) == 1
    assert "__setstate__" in capsys.readouterr().err
    env = dict(subprocess_env(), BACKBONE=str(crafted["archive"]), OUTPUT=str(tmp_path / "demo"),
               DATA=str(tmp_path / "data"))
    demo = run(["bash", "scripts/plpp/demo.sh"], env=env)
    assert demo.returncode != 0 and "__setstate__" in demo.stderr and "Traceback" not in demo.stderr
    assert crafted["target"].read_text() == "untouched"


@pytest.mark.parametrize("kind", ["trace", "trace_fp16", "script"])
def test_restricted_reader_gives_exactly_what_torch_jit_load_gives(kind, tmp_path):
    from plpp.restricted_io import read_torchscript_state_dict

    if kind == "script":  # CLIP's LayerNorm subclass is not scriptable: a module with every kind of state
        model = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.BatchNorm1d(3), torch.nn.LayerNorm(3),
                                    torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU()))
        model[1].running_mean += 1
        archive = torch.jit.script(model)
    else:
        model = build_tiny_clip()
        inputs = (torch.randn(1, 3, 32, 32), torch.randint(0, 100, (2, 77)))
        if kind == "trace_fp16":
            from plpp.clip_utils import import_clip

            import_clip().model.convert_weights(model)  # as OpenAI's releases: fp16 weights
            inputs = (inputs[0].half(), inputs[1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            archive = torch.jit.trace(model, inputs, check_trace=False)
    path = tmp_path / "archive.pt"
    archive.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torch.jit.load(str(path)).state_dict()
    got = read_torchscript_state_dict(path)
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert (got[key].dtype, got[key].shape, got[key].stride()) == (value.dtype, value.shape, value.stride())
        assert torch.equal(got[key].reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), key


@pytest.mark.parametrize("damage,expected", [("random", "not a PyTorch file"), ("truncated", "not a PyTorch file"),
                                              ("flipped", "is damaged (BadZipFile: Bad CRC-32")])
def test_broken_backbone_file_is_one_line_without_torch_advice(damage, expected, tmp_path, capsys):
    from plpp.tools.check_weights import main as check_weights

    path = tmp_path / "ViT-B-16.pt"
    torch.save(build_tiny_clip().state_dict(), path)
    good = path.read_bytes()
    middle = len(good) // 2
    broken = {"random": os.urandom(4096), "truncated": good[:middle],
              "flipped": good[:middle] + bytes(b ^ 0xFF for b in good[middle:middle + 4096]) + good[middle + 4096:]}
    path.write_bytes(broken[damage])
    assert check_weights([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and expected in err
    assert "weights_only" not in err


def test_clip_state_dict_with_wrong_keys_lists_them(tmp_path):
    from plpp.clip_utils import ClipWeightsError, load_clip

    state = build_tiny_clip().state_dict()
    del state["visual.ln_post.weight"]
    state["visual.extra.weight"] = torch.zeros(2)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    with pytest.raises(ClipWeightsError) as err:
        load_clip(str(path))
    message = str(err.value)
    assert "missing visual.ln_post.weight" in message and "unexpected visual.extra.weight" in message
    assert str(path) in message and "Expected an OpenAI CLIP release" in message


def test_unknown_objects_in_a_checkpoint_are_skipped_never_built(tmp_path):
    from plpp.restricted_io import RestrictedLoadError, SkippedObject, load_restricted

    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    path = tmp_path / "dassl.pth.tar"
    torch.save({"state_dict": {"ctx": torch.arange(4.0)}, "epoch": 3,
                "scheduler": {"successor": torch.optim.lr_scheduler.StepLR(opt, 3)}}, path)
    with pytest.raises(RestrictedLoadError, match="torch.optim.lr_scheduler.StepLR"):
        load_restricted(path)
    state = load_restricted(path, unknown="skip")
    assert torch.equal(state["state_dict"]["ctx"], torch.arange(4.0)) and state["epoch"] == 3
    successor = state["scheduler"]["successor"]
    assert isinstance(successor, SkippedObject) and successor.name == "torch.optim.lr_scheduler.StepLR"
    assert isinstance(successor.state, dict) and successor.state["step_size"] == 3


# --------------------------------------------------------------------------------------------- §5 data


@pytest.fixture()
def fmnist(tmp_path, small_data_root) -> Path:
    """A private copy of the small Fashion-MNIST with its PNGs and split written (editable)."""
    from plpp.datasets.fashion_mnist import materialize

    root = tmp_path / "data"
    shutil.copytree(small_data_root / "fashion-mnist", root / "fashion-mnist",
                    ignore=shutil.ignore_patterns("images", "split_*", "split_fewshot"))
    materialize(str(root / "fashion-mnist"))
    return root


def edit_split(root: Path, drop: dict[str, int]) -> None:
    """Remove every image of label ``drop[split]`` from that split of the Fashion-MNIST split file."""
    path = root / "fashion-mnist" / "split_fashion_mnist.json"
    split = json.loads(path.read_text())
    for key, label in drop.items():
        split[key] = [e for e in split[key] if e[1] != label]
    path.write_text(json.dumps(split))


def build(root: Path, shots: int = -1):
    from plpp.engine import get_cfg_default
    from plpp.engine.utils import set_random_seed

    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NUM_SHOTS, cfg.SEED = str(root), shots, 1
    set_random_seed(1)
    from plpp.datasets.fashion_mnist import FashionMNIST

    return FashionMNIST(cfg)


def test_missing_middle_class_is_named_not_an_index_error(fmnist, tmp_path, tiny_clip_file):
    edit_split(fmnist, {"train": 1})
    line = one_line_error(train(args_for(fmnist, tiny_clip_file, tmp_path / "run")))
    assert "class 1 ('trouser') has no training images" in line and "IndexError" not in line


def test_missing_highest_class_is_refused_not_trained_as_three(fmnist):
    from plpp.engine.data import DataCheckError

    edit_split(fmnist, {"train": 3})
    with pytest.raises(DataCheckError, match=r"class 3 \('dress'\) has no training images \(1 in val, 4 in test\)"):
        build(fmnist)


def test_class_names_that_do_not_match_the_labels_are_refused(fmnist):
    from plpp.engine.data import DataCheckError

    path = fmnist / "fashion-mnist" / "split_fashion_mnist.json"
    split = json.loads(path.read_text())
    split["test"] = [[p, y, "sneaker" if y == 2 else c] for p, y, c in split["test"]]
    path.write_text(json.dumps(split))
    expected = r"label 2 has 2 class names \('pullover' in train/val; 'sneaker' in test\)"
    with pytest.raises(DataCheckError, match=expected):
        build(fmnist)


def test_dataset_checker_reports_the_same_problem(fmnist, capsys):
    from plpp.datasets.check import main as check_main

    edit_split(fmnist, {"train": 1})
    assert check_main(["--root", str(fmnist), "--dataset", "fashion_mnist"]) == 1
    assert "class 1 ('trouser') has no training images" in capsys.readouterr().out


def test_fewer_images_than_shots_is_one_log_line(fmnist, caplog):
    with caplog.at_level("INFO", logger="plpp"):
        build(fmnist, shots=12)
    lines = [r.getMessage() for r in caplog.records if "fewer than DATASET.NUM_SHOTS" in r.getMessage()]
    assert lines == ["Note: 4 of 4 classes have fewer than DATASET.NUM_SHOTS=12 training images and use all they "
                     "have: 'T-shirt/top' 9, 'trouser' 9, 'pullover' 9, 'dress' 9"]


def test_empty_split_list_is_an_error_and_no_empty_cache_is_written(fmnist):
    from plpp.datasets.splits import DatasetError

    path = fmnist / "fashion-mnist" / "split_fashion_mnist.json"
    split = json.loads(path.read_text())
    split["train"] = []
    path.write_text(json.dumps(split))
    with pytest.raises(DatasetError, match="the 'train' list is empty"):
        build(fmnist, shots=4)
    assert not list((fmnist / "fashion-mnist").rglob("plpp_shot_*"))


# --------------------------------------------------------------------------------------------- §6 one line


def test_corrupt_image_in_a_dataloader_worker_names_the_file(fmnist, tmp_path, tiny_clip_file):
    bad = sorted((fmnist / "fashion-mnist" / "images" / "train").rglob("*.png"))
    for path in bad:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))  # every training image unreadable
    line = one_line_error(train(args_for(fmnist, tiny_clip_file, tmp_path / "run", epochs=1,
                                         extra=("DATALOADER.NUM_WORKERS", "2", "DATASET.NUM_SHOTS", "-1"))))
    assert re.search(r"error: Cannot read image .*/images/train/.*\.png \(.*\)\. Replace or remove this file\.$", line)


@pytest.mark.parametrize("text,where", [("OPTIM:\n  LR: 0.1\n   MAX_EPOCH: [2\n", "line 3"),
                                        ("- OPTIM.LR\n- 0.1\n", "line 1: the top level must be a mapping")])
def test_malformed_yaml_config_is_file_and_line(text, where, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code = train_main(["--trainer", "PLPP", "--config-file", str(config), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"error: Trainer config file (--config-file) {config}, {where}")
    assert not (tmp_path / "run").exists()

