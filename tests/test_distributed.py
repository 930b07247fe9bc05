"""Multi-process runs on CPU (torchrun + gloo), class sharding of the text encoder, and the grid runner.

The 1-process and 2-process runs use an order-independent setup: the global batch is the whole
few-shot training set (one batch per epoch) and the only transform is ``normalize``, so the mean
gradient is the same whichever images each rank gets, and the two runs must end with the same
prompt (to float tolerance). Evaluation is compared exactly, on the same checkpoint.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from plpp.engine.distributed import ShardSampler, all_gather_rows, all_reduce_gradients, shard_range
from tests.conftest import PYTHON, REPO, build_tiny_clip, saved_ctx, subprocess_env, train_args, write_fashion_mnist

N_CLASSES, SHOTS, EPOCHS = 3, 8, 3
OPTS = ["DATALOADER.TRAIN_X.BATCH_SIZE", str(N_CLASSES * SHOTS), "DATALOADER.TEST.BATCH_SIZE", "4",
        "TRAINER.COOP.N_CTX", "4", "DATASET.NUM_SHOTS", str(SHOTS), "OPTIM.LR", "0.05",
        "INPUT.TRANSFORMS", "('normalize',)", "TEST.PER_CLASS_RESULT", "True", "OPTIM.MAX_EPOCH", str(EPOCHS)]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(data_root, clip_file, out, nproc: int = 1, flags=(), extra=()) -> list[str]:
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())] \
        if nproc > 1 else []
    return [PYTHON, *launch, "train.py",
            *train_args(data_root, clip_file, out, seed=7, flags=flags, opts=(*OPTS, *extra))]


def run(cmd, timeout=300) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def final_ctx(out: Path) -> torch.Tensor:
    return saved_ctx(out, EPOCHS)


def log_from(out: Path, marker: str) -> list[str]:
    """log.txt from the first line starting with ``marker``, without wall-clock fields."""
    lines = (out / "log.txt").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(marker))
    return [re.sub(r"(time|data) [\d.]+ \([\d.]+\) |eta \S+|Elapsed: \S+", "", ln) for ln in lines[start:]]


def assert_same_lines(got: list[str], want: list[str]) -> None:
    """Same text, and numbers equal up to the last printed digit (means summed in another order)."""
    assert len(got) == len(want), "\n".join(got)
    for a, b in zip(got, want):
        assert NUMBER.sub("#", a) == NUMBER.sub("#", b), (a, b)
        for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
            assert math.isclose(float(x), float(y), rel_tol=1e-4, abs_tol=2e-4), (a, b)


def result_block(out: Path) -> list[str]:
    return log_from(out, "=> result")[: 6 + 1 + N_CLASSES + 1]  # result, per-class header, classes, average


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=N_CLASSES, train_per_class=10, test_per_class=5)  # 15 test images
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root, tiny_clip_file) -> dict[str, Path]:
    """A 1-process run, and a torchrun 2-process run with the same global batch."""
    base = tmp_path_factory.mktemp("runs")
    run(train_cmd(data_root, tiny_clip_file, base / "one"))
    run(train_cmd(data_root, tiny_clip_file, base / "two", nproc=2))
    return {"one": base / "one", "two": base / "two"}


def test_two_processes_train_the_same_prompt_as_one(runs):
    one, two = runs["one"], runs["two"]
    torch.testing.assert_close(final_ctx(two), final_ctx(one), rtol=1e-5, atol=1e-6)
    # The logged losses are global-batch means, as in the 1-process log; same evaluation counts.
    assert_same_lines(log_from(two, "Building custom CLIP"), log_from(one, "Building custom CLIP"))
    res_one, res_two = (json.loads((r / "results.json").read_text()) for r in (one, two))
    assert res_two["total"] == res_one["total"] == 5 * N_CLASSES


def test_only_rank_zero_writes(runs):
    one, two = runs["one"], runs["two"]

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if "tensorboard" not in p.parts}

    assert files(two) == files(one)
    assert len(list((two / "tensorboard").iterdir())) == 1
    text = (two / "log.txt").read_text()
    for line in ("Loading dataset: FashionMNIST", "Finish training", "=> result", "Collecting env info"):
        assert text.count(line) == 1, line
    assert len([ln for ln in text.splitlines() if ln.startswith("epoch [")]) == EPOCHS


def test_sharded_evaluation_equals_one_process_evaluation(runs, data_root, tiny_clip_file, tmp_path):
    """Same checkpoint, evaluated by 2 processes (15 images: blocks of 7 and 8, text sharded by class)."""
    one = runs["one"]
    out = tmp_path / "eval2"
    run(train_cmd(data_root, tiny_clip_file, out, nproc=2, extra=("DISTRIBUTED.SHARD_CLASSES", "True"),
                  flags=("--eval-only", "--model-dir", str(one), "--load-epoch", str(EPOCHS))))
    assert result_block(out) == result_block(one)
    got, want = (json.loads((r / "results.json").read_text()) for r in (out, one))
    for key in ("total", "correct", "accuracy", "error", "macro_f1"):
        assert got[key] == want[key], key


def test_shard_sampler_covers_every_item_once_in_order():
    for n in (0, 1, 5, 15, 16):
        for world in (1, 2, 3, 4):
            blocks = [list(ShardSampler(range(n), rank=r, world=world)) for r in range(world)]
            assert sum(blocks, []) == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
            assert [len(ShardSampler(range(n), r, world)) for r in range(world)] == list(map(len, blocks))
    assert shard_range(5, 1, 2) == (2, 5)


def test_single_process_helpers_are_identities():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    all_reduce_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    x = torch.randn(4, 2)
    assert all_gather_rows(x) is x


# ---- class sharding: 2 processes (gloo on a file store) against the unsharded step in this process ----

CLASSNAMES = ["cat", "golden retriever", "sea lion", "fire truck", "ant"]  # 5 classes: shards of 2 and 3
SHARD_CASES = {  # host, config overrides
    "coop_shared_ctx": ("CoOp", {}),
    "coop_csc_middle": ("CoOp", {"TRAINER.COOP.CSC": True, "TRAINER.COOP.CLASS_TOKEN_POSITION": "middle"}),
    "maple": ("MaPLe", {"TRAINER.MAPLE.PROMPT_DEPTH": 2}),
}


def _shard_case(name: str):
    """A model (tiny CLIP, perturbed prompt), 6 images and labels, identical in every process."""
    from plpp.engine import get_cfg_default
    from plpp.trainers import extend_cfg
    from plpp.trainers.coop import CustomCLIP
    from plpp.trainers.maple import MaPLeCLIP

    host, opts = SHARD_CASES[name]
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.COOP.N_CTX = 4
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    clip_model = build_tiny_clip(seed=3)
    torch.manual_seed(0)
    model = (CustomCLIP if host == "CoOp" else MaPLeCLIP)(cfg, CLASSNAMES, clip_model)
    for pname, param in model.named_parameters():
        param.requires_grad_(pname.startswith("prompt_learner."))
    with torch.no_grad():
        for param in model.prompt_learner.parameters():
            param.add_(0.05 * torch.randn_like(param))
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, 32, 32, generator=gen)
    labels = torch.tensor([0, 4, 2, 1, 3, 4])
    return model, images, labels


def _plpp_step(model, images, labels) -> float:
    """PLPP's objective (CE + 0.1·ppl + 0.1·ippl) and its backward; returns the loss."""
    from plpp.perplexity import perplexity_losses

    logits, ctx, states = model.forward_with_states(images)
    terms = perplexity_losses(ctx, states, model.token_embedding.weight, topk=5, temperature=0.1)
    loss = F.cross_entropy(logits.float(), labels) + 0.1 * terms["ppl"] + 0.1 * terms["ippl"]
    loss.backward()
    return loss.item()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.prompt_learner.named_parameters() if p.grad is not None}


def _shard_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from plpp.engine.distributed import average_over_ranks, shard_range
    from plpp.trainers.sharding import ClassShardedTextEncoder, shard_text_encoder

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    results = {}
    for name in SHARD_CASES:
        model, images, labels = _shard_case(name)
        shard_text_encoder(model)
        assert isinstance(model.text_encoder, ClassShardedTextEncoder)
        lo, hi = shard_range(len(images))  # data parallel: this rank's half of the batch
        loss = _plpp_step(model, images[lo:hi], labels[lo:hi])
        all_reduce_gradients(model.prompt_learner.parameters())
        with torch.no_grad():
            text = model.encode_text()[0]
        results[name] = (average_over_ranks({"loss": loss})["loss"], _grads(model), text)
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_class_sharding_gives_the_unsharded_loss_and_gradients(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "sharded.pt"
    mp.spawn(_shard_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    sharded = torch.load(out, weights_only=True)
    for name in SHARD_CASES:
        model, images, labels = _shard_case(name)
        loss = _plpp_step(model, images, labels)
        with torch.no_grad():
            text = model.encode_text()[0]
        got_loss, got_grads, got_text = sharded[name]
        assert math.isclose(got_loss, loss, rel_tol=1e-5), name
        want = _grads(model)
        assert got_grads.keys() == want.keys() and want, name
        for key in want:  # float tolerance relative to the gradient's scale (sums taken in another order)
            scale = want[key].abs().max().item()
            torch.testing.assert_close(got_grads[key], want[key], rtol=1e-4, atol=1e-5 * scale, msg=f"{name} {key}")
        torch.testing.assert_close(got_text, text, rtol=1e-5, atol=1e-6)


# ---- the grid runner ----

def grid(args, tmp_path, **env) -> subprocess.CompletedProcess:
    full_env = {**subprocess_env(), "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run([PYTHON, "-m", "plpp.tools.grid", *args], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_grid_runs_commands_skips_finished_and_reports_failures(tmp_path):
    write = "import pathlib,sys; d=pathlib.Path(sys.argv[2]); d.mkdir(parents=True); " \
            "(d/'results.json').write_text('{}'); print('ran', d.name)"
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")
    lines = ["# one run per line", *(f'{sys.executable} -c "{write}" --output-dir {d}' for d in ("a", "b", "done")),
             f"{sys.executable} -c 'import sys; sys.exit(3)'"]
    (tmp_path / "jobs.txt").write_text("\n".join(lines) + "\n")
    res = grid(["commands", "jobs.txt", "--jobs", "2", "--log-dir", "logs"], tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "4 job(s): 1 finished (skipped), 3 to run" in res.stdout and "running on 2 CPU slot(s)" in res.stdout
    assert "FAILED line5 (exit code 3" in res.stdout and "2 job(s) succeeded, 1 failed, 1 skipped" in res.stdout
    assert (tmp_path / "a" / "results.json").exists() and (tmp_path / "b" / "results.json").exists()
    assert "ran a" in (tmp_path / "logs" / "line2_a.log").read_text()
    assert not list((tmp_path / "logs").glob("*done*"))  # the finished run was not started

    again = grid(["commands", "jobs.txt", "--log-dir", "logs"], tmp_path)  # only the failing line is left
    assert again.returncode == 1 and "4 job(s): 3 finished (skipped), 1 to run" in again.stdout


def finished_run(out: Path, args: list[str]) -> None:
    """The config.yaml and results.json a finished training run with train.py ``args`` leaves."""
    from plpp.engine.cli import get_parser, setup_cfg

    out.mkdir(parents=True)
    (out / "config.yaml").write_text(setup_cfg(get_parser().parse_args(args)).dump())
    (out / "results.json").write_text(json.dumps({"format": "plpp-results/1", "accuracy": 1.0, "eval_only": False}))


def test_grid_expands_the_protocol_script_per_seed_and_skips_finished_seeds(tmp_path):
    out = tmp_path / "out"
    seed1 = out / "fashion_mnist" / "PLPP" / "vit_b16_ep50_1shots" / "nctx16_cscFalse_ctpend" / "seed1"
    finished_run(seed1, ["--root", str(tmp_path), "--seed", "1", "--trainer", "PLPP",
                         "--dataset-config-file", f"{REPO}/configs/datasets/fashion_mnist.yaml",
                         "--config-file", f"{REPO}/configs/trainers/PLPP/vit_b16_ep50.yaml",
                         "DATASET.NUM_SHOTS", "1", "TRAINER.COOP.N_CTX", "16", "OPTIM.MAX_EPOCH", "1"])
    args = ["fewshot", "--datasets", "fashion_mnist", "--shots", "1", "2", "--seeds", "1", "2", "--dry-run",
            "--", "OPTIM.MAX_EPOCH", "1"]
    res = grid(args, tmp_path, DATA=str(tmp_path), OUTPUT=str(out))
    assert res.returncode == 0, res.stderr
    assert "4 job(s): 1 finished (skipped), 3 to run" in res.stdout
    assert "skip fashion_mnist_PLPP_1shots_seed1: finished" in res.stdout
    assert "would run fashion_mnist_PLPP_2shots_seed2: SEEDS=2 bash " in res.stdout
    assert "main.sh fashion_mnist 2 PLPP - OPTIM.MAX_EPOCH 1" in res.stdout
    # the same grid with other options finds seed1 made with another config: it refuses instead of skipping
    changed = grid([*args[:-1], "2"], tmp_path, DATA=str(tmp_path), OUTPUT=str(out))
    assert changed.returncode == 2 and "OPTIM.MAX_EPOCH: saved 1, requested 2" in changed.stderr
    shard = grid([*args[:-3], "--shard", "1/2"], tmp_path, DATA=str(tmp_path), OUTPUT=str(out))
    assert "2 job(s) (shard 1/2)" in shard.stdout
    bad = grid(["fewshot", "--datasets", "nope", "--shots", "1"], tmp_path, DATA=str(tmp_path))
    assert bad.returncode == 2 and "configs/datasets/nope.yaml not found" in bad.stderr


def test_grid_command_lines_of_train_py_compare_the_saved_config(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    base = [f"{REPO}/train.py", "--root", str(tmp_path), "--trainer", "CoOp", "--config-file",
            f"{REPO}/configs/trainers/CoOp/vit_b16.yaml", "--output-dir", str(run)]
    finished_run(run, base[1:] + ["OPTIM.MAX_EPOCH", "3"])
    (tmp_path / "same.txt").write_text(" ".join(["python", *base, "OPTIM.MAX_EPOCH", "3"]) + "\n")
    (tmp_path / "other.txt").write_text(" ".join(["python", *base, "OPTIM.MAX_EPOCH", "4"]) + "\n")
    from plpp.tools import grid as grid_tool  # in-process: the config machinery is already imported here

    monkeypatch.chdir(tmp_path)
    assert grid_tool.main(["commands", "same.txt", "--dry-run"]) == 0
    assert "1 job(s): 1 finished (skipped), 0 to run" in capsys.readouterr().out
    assert grid_tool.main(["commands", "other.txt", "--dry-run"]) == 2
    assert "OPTIM.MAX_EPOCH: saved 3, requested 4" in capsys.readouterr().err
