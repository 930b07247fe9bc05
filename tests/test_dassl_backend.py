"""The Dassl backend: backend selection errors and the compat layer's pure parts (run everywhere), and
end-to-end runs on real Dassl 0.6.3 (only where ``dassl.engine`` imports; CI has no Dassl, so they skip).

Run the Dassl part with an interpreter that has Dassl, e.g. ``~/dassl-venv/bin/python -m pytest
tests/test_dassl_backend.py`` (docs/INTEGRATION.md §4). Real checkouts are tested in tests/test_checkouts.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from yacs.config import CfgNode as CN

from plpp.engine import dassl_compat
from plpp.engine import trainer as builtin_trainer
from plpp.engine.registry import Registry
from plpp.engine.utils import LOGGER_NAME
from tests.conftest import PYTHON, REPO, SMALL_RUN_OPTS, kill_when_logged, saved_ctx, subprocess_env, train_args


def dassl_importable() -> bool:
    try:
        return importlib.util.find_spec("dassl.engine") is not None
    except ImportError:
        return False


HAS_DASSL = dassl_importable()
needs_dassl = pytest.mark.skipif(not HAS_DASSL, reason="real Dassl (dassl.engine) is not importable here")


def env_with(**overrides) -> dict:
    env = subprocess_env()
    env.update(overrides)
    return env


# --------------------------------------------------------------------------- backend selection (runs everywhere)


@pytest.mark.skipif(HAS_DASSL, reason="needs an interpreter without Dassl")
def test_engine_dassl_without_dassl_is_a_clear_import_error():
    res = subprocess.run([PYTHON, "-c", "import plpp.trainers"], cwd=REPO, env=env_with(PLPP_ENGINE="dassl"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: PLPP_ENGINE=dassl but Dassl cannot be imported")
    assert "PLPP_ENGINE=builtin" in last


@pytest.mark.skipif(HAS_DASSL, reason="needs an interpreter without Dassl")
def test_engine_auto_without_dassl_uses_the_builtin_engine():
    res = subprocess.run([PYTHON, "-c", "import plpp.engine as e; print(e.BACKEND)"], cwd=REPO,
                         env=env_with(PLPP_ENGINE="auto"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "builtin"


def test_engine_bogus_value_is_a_clear_error():
    res = subprocess.run([PYTHON, "train.py", "--trainer", "PLPP"], cwd=REPO, env=env_with(PLPP_ENGINE="bogus"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: PLPP_ENGINE='bogus' is not valid; use auto, dassl or builtin"


@pytest.mark.skipif(HAS_DASSL, reason="needs an interpreter without Dassl")
def test_train_py_with_engine_dassl_but_no_dassl_is_one_line():
    res = subprocess.run([PYTHON, "train.py", "--trainer", "PLPP"], cwd=REPO, env=env_with(PLPP_ENGINE="dassl"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: PLPP_ENGINE=dassl but Dassl cannot be imported")


# --------------------------------------------------------------------------- compat layer, pure parts


class Thing:
    pass


class Other:
    pass


def make_host() -> tuple[Registry, dassl_compat.HostRegistry]:
    host = Registry("TRAINER")  # refuses duplicates, like Dassl's
    return host, dassl_compat.HostRegistry(host, "trainer")


def test_host_registry_registers_free_names_into_the_host():
    host, reg = make_host()
    assert reg.register()(Thing) is Thing
    assert host.get("Thing") is Thing and "Thing" in reg and reg.get("Thing") is Thing
    assert reg.registered_names() == ["Thing"] and not reg.skipped


class RecordList(logging.Handler):
    """Keeps every record of the logger it is attached to (once, whatever pytest's capture does)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def plpp_records():
    """The records of the ``plpp`` logger during a test, at DEBUG, without touching its propagation.

    Not ``caplog``: pytest ≥ 9 also attaches its capture handler to non-propagating loggers (the
    ``plpp`` logger is one on Dassl), so records reached caplog twice once propagation was turned on.
    """
    log = logging.getLogger(LOGGER_NAME)
    handler, level = RecordList(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler.records
    log.removeHandler(handler)
    log.setLevel(level)


def test_host_registry_keeps_a_name_the_host_already_has(plpp_records):
    host, reg = make_host()
    theirs = type("Thing", (), {"__module__": "trainers.coop"})
    host.register(theirs)
    assert reg.register()(Thing) is Thing  # no KeyError from the refusing host
    other = type("Other", (), {"__module__": "trainers.cocoop"})
    host.register(other)
    reg.register(Other)
    assert host.get("Thing") is theirs and host.get("Other") is other
    assert reg.skipped == {"Thing": Thing, "Other": Other}
    infos = [r.getMessage() for r in plpp_records if r.levelno == logging.INFO]
    assert len(infos) == 1 and '"Thing" is already registered by trainers.coop; keeping it' in infos[0]


def test_host_registry_reregistering_the_same_object_is_silent_and_force_replaces():
    host, reg = make_host()
    reg.register(Thing)
    reg.register(Thing)
    assert not reg.skipped
    replacement = type("Thing", (), {})
    reg.register(replacement, force=True)
    assert host.get("Thing") is replacement


def plpp_block(cfg) -> None:
    if "PLPP" not in cfg.TRAINER:
        cfg.TRAINER.PLPP = CN()
        cfg.TRAINER.PLPP.TOPK = 10


def coop_block(cfg) -> None:
    if "COOP" not in cfg.TRAINER:
        cfg.TRAINER.COOP = CN()
        cfg.TRAINER.COOP.PREC = "fp16"
        cfg.TRAINER.COOP.TEXT_CHECKPOINT = "auto"


def host_defaults() -> CN:
    cfg = CN()
    cfg.DATASET = CN()
    cfg.DATASET.NAME = ""
    cfg.TRAINER = CN()
    cfg.TRAINER.NAME = ""
    return cfg


def test_declare_default_keys_then_a_checkout_extend_cfg_and_merge():
    defaults = host_defaults()
    dassl_compat.declare_default_keys(defaults, coop_block, plpp_block)
    assert defaults.TRAINER.PLPP.TOPK == 10 and defaults.DATASET.SUBSAMPLE_CLASSES == "all"
    cfg = defaults.clone()
    cfg.TRAINER.COOP = CN()  # what CoOp's own extend_cfg does: its block, without our extra keys
    cfg.TRAINER.COOP.PREC = "fp32"
    cfg.merge_from_list(["TRAINER.PLPP.TOPK", "5"])  # accepted: declared before the merge
    cfg.freeze()
    filled, added = dassl_compat.fill_missing_keys(cfg, defaults)
    assert added == ["TRAINER.COOP.TEXT_CHECKPOINT"]
    assert filled is not cfg and filled.is_frozen() and "TEXT_CHECKPOINT" not in cfg.TRAINER.COOP
    assert filled.TRAINER.COOP.PREC == "fp32" and filled.TRAINER.COOP.TEXT_CHECKPOINT == "auto"
    assert filled.TRAINER.PLPP.TOPK == 5
    same, none = dassl_compat.fill_missing_keys(filled, defaults)
    assert same is filled and none == []


def test_engine_declare_default_keys_reaches_get_cfg_default():
    """``plpp.engine.declare_default_keys`` (used by ``plpp.trainers`` and by new hosts) on either engine."""
    script = """
from yacs.config import CfgNode as CN
import plpp.engine as e
import plpp.trainers  # declares TRAINER.PLPP, TRAINER.MAPLE, ... on import
def add_config(cfg):
    if "MYHOST" not in cfg.TRAINER:
        cfg.TRAINER.MYHOST = CN()
        cfg.TRAINER.MYHOST.ALPHA = 1.0
e.declare_default_keys(add_config)
e.declare_default_keys(add_config)
cfg = e.get_cfg_default()
cfg.merge_from_list(["TRAINER.MYHOST.ALPHA", "0.5", "TRAINER.PLPP.TOPK", "3"])
assert cfg.TRAINER.MYHOST.ALPHA == 0.5 and cfg.TRAINER.PLPP.TOPK == 3 and "MAPLE" in cfg.TRAINER
assert e.get_cfg_default().TRAINER.MYHOST.ALPHA == 1.0  # a fresh copy each time
print(e.BACKEND)
"""
    backend = "dassl" if HAS_DASSL else "builtin"
    res = subprocess.run([PYTHON, "-c", script], cwd=REPO, env=env_with(PLPP_ENGINE=backend),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == backend


def test_declare_default_keys_keeps_existing_blocks():
    defaults = host_defaults()
    defaults.TRAINER.COOP = CN()
    defaults.TRAINER.COOP.PREC = "amp"
    dassl_compat.declare_default_keys(defaults, coop_block)
    assert defaults.TRAINER.COOP.PREC == "amp" and "TEXT_CHECKPOINT" not in defaults.TRAINER.COOP


class StubBase:
    """Stands in for Dassl's TrainerX: only what make_trainer_x touches."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.evaluator = type("DasslEvaluator", (), {"_total": 7, "_correct": 3, "evaluate": lambda s: {}})()

    def detect_anomaly(self, loss):  # Dassl's signature, replaced
        raise AssertionError("Dassl's detect_anomaly must not be used")


def test_make_trainer_x_reuses_the_builtin_methods():
    cls = dassl_compat.make_trainer_x(StubBase)
    assert issubclass(cls, StubBase) and issubclass(cls, builtin_trainer.CheckpointIO)
    assert cls.__mro__.index(builtin_trainer.CheckpointIO) < cls.__mro__.index(StubBase)
    for name, owner in dassl_compat.BORROWED.items():
        assert cls.__dict__[name] is owner.__dict__[name], name
    assert cls.save_model is builtin_trainer.CheckpointIO.save_model
    trainer = cls(CN())
    assert trainer.scaler is None and trainer.trained_this_run is False
    assert trainer.evaluator.counts == (7, 3)
    trainer.evaluator.gather()
    trainer.detect_anomaly(torch.tensor(1.0), {"loss_ce": torch.tensor(1.0)})
    with pytest.raises(builtin_trainer.NonFiniteLossError, match="Non-finite term: loss_ppl"):
        trainer.detect_anomaly(torch.tensor(float("nan")), {"loss_ce": 1.0, "loss_ppl": float("nan")})


def test_make_trainer_x_fills_keys_the_host_cfg_lacks():
    defaults = host_defaults()
    dassl_compat.declare_default_keys(defaults, coop_block)
    cfg = host_defaults()
    cfg.freeze()
    trainer = dassl_compat.make_trainer_x(StubBase, defaults=lambda: defaults)(cfg)
    assert trainer.cfg.TRAINER.COOP.TEXT_CHECKPOINT == "auto" and trainer.cfg.is_frozen()


def test_a_borrowed_method_using_super_is_refused():
    class Owner(builtin_trainer.SimpleTrainer):
        def test(self, split=None):
            return super().test(split)

    with pytest.raises(TypeError, match="uses super"):
        dassl_compat._borrowed_function("test", Owner)
    with pytest.raises(AttributeError, match="no longer defines"):
        dassl_compat._borrowed_function("no_such_method", Owner)


@pytest.fixture
def restore_logging():
    log = logging.getLogger(LOGGER_NAME)
    saved = (list(log.handlers), log.level, log.propagate, sys.stdout)
    for handler in saved[0]:
        log.removeHandler(handler)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        if handler not in saved[0]:
            handler.close()
    for handler in saved[0]:
        log.addHandler(handler)
    log.setLevel(saved[1])
    log.propagate = saved[2]
    sys.stdout = saved[3]


def test_setup_logger_puts_prints_and_log_lines_in_one_log(tmp_path, restore_logging):
    log = dassl_compat.setup_logger(str(tmp_path))
    assert isinstance(sys.stdout, dassl_compat.PrintTee)
    print("a print from Dassl")
    log.info("a PLPP log line")
    dassl_compat.setup_logger(str(tmp_path))  # again: the tee is not stacked
    assert isinstance(sys.stdout, dassl_compat.PrintTee)
    assert not isinstance(sys.stdout.console, dassl_compat.PrintTee)
    print("second")
    assert (tmp_path / "log.txt").read_text().splitlines() == ["a print from Dassl", "a PLPP log line", "second"]


def test_route_logger_to_stdout_follows_a_replaced_stdout(capsys, restore_logging):
    dassl_compat.route_logger_to_stdout()
    dassl_compat.route_logger_to_stdout()  # idempotent: one handler (pytest's capture handlers aside)
    assert sum(isinstance(h, dassl_compat._StdoutHandler) for h in restore_logging.handlers) == 1
    restore_logging.info("to whatever stdout is now")
    assert capsys.readouterr().out == "to whatever stdout is now\n"


def test_undo_logging_disable_only_undoes_dassls_level():
    try:
        logging.disable(logging.WARNING)  # what importing Dassl does
        dassl_compat.undo_logging_disable()
        assert logging.root.manager.disable == logging.NOTSET
        logging.disable(logging.CRITICAL)  # someone else's choice: kept
        dassl_compat.undo_logging_disable()
        assert logging.root.manager.disable == logging.CRITICAL
    finally:
        logging.disable(logging.NOTSET)


# --------------------------------------------------------------------------- real Dassl (skipped without it)



@pytest.fixture(scope="module")
def data_root(small_data_root) -> Path:
    return small_data_root


def args(data_root, clip_file, out, epochs=3, flags=(), extra=()) -> list[str]:
    return train_args(data_root, clip_file, out, seed=7, flags=flags,
                      opts=("OPTIM.MAX_EPOCH", str(epochs), *SMALL_RUN_OPTS, *extra))


def dassl_run(argv, cwd=REPO, script="train.py", timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, script, *argv], cwd=cwd, env=env_with(PLPP_ENGINE="dassl"),
                          capture_output=True, text=True, timeout=timeout)


def accuracy(log: str) -> float:
    return float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1])


def training_lines(log: str) -> list[str]:
    """The training lines without their wall-clock fields (time, data, eta), for exact comparison."""
    return [re.sub(r"(time|data) [\d.]+ \([\d.]+\) |eta \S+", "", ln) for ln in log.splitlines()
            if ln.startswith("epoch [")]


@pytest.fixture(scope="module")
def dassl_reference(tmp_path_factory, data_root, tiny_clip_file) -> Path:
    """One uninterrupted 3-epoch PLPP run on real Dassl (read-only for the tests that use it)."""
    out = tmp_path_factory.mktemp("dassl") / "ref"
    res = dassl_run(args(data_root, tiny_clip_file, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@needs_dassl
def test_dassl_surface_is_dassls_own():
    script = """
import dassl.config, dassl.data.datasets, dassl.engine
import plpp.engine as e, plpp.trainers, plpp.datasets
assert e.BACKEND == "dassl"
assert e.TRAINER_REGISTRY.host is dassl.engine.TRAINER_REGISTRY
assert e.DATASET_REGISTRY.host is dassl.data.datasets.DATASET_REGISTRY
assert issubclass(dassl.engine.TRAINER_REGISTRY.get("PLPP"), dassl.engine.TrainerX)
assert dassl.data.datasets.DATASET_REGISTRY.get("FashionMNIST").__module__ == "plpp.datasets.fashion_mnist"
cfg = dassl.config.get_cfg_default()
assert cfg.TRAINER.PLPP.TOPK == 10 and "MAPLE" in cfg.TRAINER and cfg.DATASET.SUBSAMPLE_CLASSES == "all"
from plpp.engine import build_lr_scheduler
import torch
sched = build_lr_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), cfg.OPTIM)
assert "successor" not in sched.state_dict()
print("OK")
"""
    res = subprocess.run([PYTHON, "-c", script], cwd=REPO, env=env_with(PLPP_ENGINE="dassl"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-3000:]


@needs_dassl
def test_dassl_train_then_eval_only_reproduces_accuracy(tmp_path, data_root, tiny_clip_file, dassl_reference):
    out = dassl_reference
    log = (out / "log.txt").read_text()
    for line in ("PLPP engine backend: dassl", "Loading trainer: PLPP", "# train_x", "Prompt words (epoch 3):",
                 "Finish training", "=> result", "* accuracy:", "Elapsed:"):
        assert line in log, line
    assert re.search(r"epoch \[3/3\] batch \[\d+/\d+\] .* loss_ppl .* loss_ippl .* lr .* eta", log)
    state = torch.load(out / "prompt_learner" / "model.pth.tar-3", weights_only=True)  # Dassl would fail here
    assert set(state["state_dict"]) == {"ctx"} and state["epoch"] == 3
    assert "successor" not in state["scheduler"]
    assert not (out / "prompt_learner" / "model.pth.tar-2").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["accuracy"] == pytest.approx(accuracy(log), abs=0.05) and results["eval_only"] is False
    assert results["total"] == 16

    ev = tmp_path / "eval"
    res = dassl_run(args(data_root, tiny_clip_file, ev, flags=("--eval-only", "--model-dir", str(out),
                                                                "--load-epoch", "3")))
    assert res.returncode == 0, res.stderr[-3000:]
    log2 = (ev / "log.txt").read_text()
    assert accuracy(log2) == accuracy(log)
    assert json.loads((ev / "results.json").read_text())["eval_only"] is True


@needs_dassl
def test_dassl_sigkill_then_resume_matches_uninterrupted_run(tmp_path, data_root, tiny_clip_file, dassl_reference):
    out = tmp_path / "killed"
    cmd = [PYTHON, "train.py", *args(data_root, tiny_clip_file, out)]
    log = out / "log.txt"
    # killed in the middle of epoch 2, after epoch 1's checkpoint exists
    kill_when_logged(cmd, env_with(PLPP_ENGINE="dassl"), log, "epoch [2/3] batch [2/")
    assert (out / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-1"

    res = dassl_run(args(data_root, tiny_clip_file, out))
    assert res.returncode == 0, res.stderr[-3000:]
    text = log.read_text()
    assert "Found checkpoint" in text and "Finish training" in text
    assert torch.equal(saved_ctx(out, 3), saved_ctx(dassl_reference, 3))
    assert json.loads((out / "results.json").read_text())["accuracy"] == \
        json.loads((dassl_reference / "results.json").read_text())["accuracy"]


@needs_dassl
@pytest.mark.parametrize("trainer", ["CoOp", "PLPP"])
def test_same_seed_same_batches_on_both_engines(trainer, tmp_path, data_root, tiny_clip_file):
    """Same seed, same loss lines, prompt and accuracy on the built-in engine and on real Dassl (two epochs)."""
    runs = {}
    for engine in ("builtin", "dassl"):
        out = tmp_path / engine
        argv = train_args(data_root, tiny_clip_file, out, trainer=trainer, seed=7,
                          opts=("OPTIM.MAX_EPOCH", "2", *SMALL_RUN_OPTS))
        res = subprocess.run([PYTHON, "train.py", *argv], cwd=REPO, env=env_with(PLPP_ENGINE=engine),
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        log = (out / "log.txt").read_text()
        assert f"PLPP engine backend: {engine}" in log
        runs[engine] = (training_lines(log), accuracy(log), saved_ctx(out, 2))
    (lines_b, acc_b, ctx_b), (lines_d, acc_d, ctx_d) = runs["builtin"], runs["dassl"]
    assert len(lines_b) == 16 and lines_b == lines_d
    assert acc_b == acc_d and torch.equal(ctx_b, ctx_d)
