"""Same model as upstream, without a checkout: CoOp's context quirks, ``PREC fp16``, upstream's checkpoints.

* Quirks: ``CTX_INIT`` with ``CSC True`` is one shared context; ``CTX_INIT`` counts words and the other BPE
  tokens stay fixed text; MaPLe's ``N_CTX`` beyond upstream's limit of 4 is announced.
* Precision, on the CPU with ``Precision`` kept in the requested mode (hand-cast: a real run falls back to
  fp32 there): which learnable tensors are fp16 under ``fp16`` for every host, the optimizer state's dtype
  and one step in each mode.
* Checkpoints in upstream's format (upstream names, class-dependent ``token_prefix``/``token_suffix``, fp16
  tensors, MaPLe's whole model under ``MultiModalPromptLearner/``, a pickled scheduler object, a crafted
  pickle) load through ``load_model`` (``--eval-only``) and ``MODEL.INIT_WEIGHTS`` and predict what our own
  checkpoint of the same prompt predicts. The real upstream classes are compared in test_upstream_parity.py.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from yacs.config import CfgNode as CN

import plpp.datasets  # noqa: F401  (registers FashionMNIST)
from plpp import clip_utils
from plpp.clip_utils import token_length, tokenize
from plpp.engine import build_trainer, get_cfg_default, set_random_seed
from plpp.engine.checkpoint import CheckpointError
from plpp.trainers import base as trainers_base
from plpp.trainers import extend_cfg
from plpp.trainers.cocoop import ConditionalPromptLearner
from plpp.trainers.coop import PromptLearner
from plpp.trainers.maple import MultiModalPromptLearner
from tests.conftest import PYTHON, REPO, TINY_OPTS, build_tiny_clip, subprocess_env, train_args, write_fashion_mnist

CLASSNAMES = ["cat", "golden retriever", "sea_lion"]
LOW_RES = "a low-res photo of a"  # 5 words, 7 BPE tokens ("low-res" is low, -, res)


def _cfg(**opts) -> CN:
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_list([str(x) for kv in opts.items() for x in kv])
    return cfg


@pytest.fixture(scope="module")
def clip_model():
    return build_tiny_clip(seed=2)


# ------------------------------------------------------------------------------------------------ §1 quirks


def test_ctx_init_with_csc_is_one_shared_context(clip_model, caplog):
    caplog.set_level(logging.INFO, logger="plpp")
    learner = PromptLearner(_cfg(**{"TRAINER.COOP.CSC": True, "TRAINER.COOP.CTX_INIT": "a photo of a"}).TRAINER.COOP,
                            CLASSNAMES, clip_model)
    assert learner.ctx.shape == (4, 64) and not learner.csc and learner.shared_prefix
    assert "CTX_INIT is set: one shared context, as upstream CoOp; CSC applies to random init only" in caplog.text
    random = PromptLearner(_cfg(**{"TRAINER.COOP.CSC": True, "TRAINER.COOP.N_CTX": 3}).TRAINER.COOP, CLASSNAMES,
                           clip_model)
    assert random.ctx.shape == (3, 3, 64) and random.csc


@pytest.mark.parametrize("learner_cls,key", [(PromptLearner, "COOP"), (ConditionalPromptLearner, "COCOOP")])
def test_ctx_init_learns_one_token_per_word_and_freezes_the_rest(clip_model, caplog, learner_cls, key):
    caplog.set_level(logging.INFO, logger="plpp")
    learner = learner_cls(_cfg(**{f"TRAINER.{key}.CTX_INIT": LOW_RES}).TRAINER[key], CLASSNAMES, clip_model)
    assert (len(LOW_RES.split(" ")), token_length(LOW_RES)) == (5, 7)
    ids = tokenize([f"{LOW_RES} {name.replace('_', ' ')}." for name in CLASSNAMES])
    table = clip_model.token_embedding.weight
    assert learner.ctx.shape == (5, 64) and torch.equal(learner.ctx, table[ids[0, 1:6]])  # "a low - res photo"
    assert torch.equal(learner.tokenized_prompts, ids)
    assert torch.equal(learner.token_suffix, table[ids[:, 6:]])  # "of a <class>." stays fixed text
    assert learner.ctx_positions.tolist() == [[1, 2, 3, 4, 5]] * len(CLASSNAMES)
    assert (f"CTX_INIT '{LOW_RES}' has 5 words but 7 BPE tokens: as upstream CoOp, the context is its first 5 "
            "tokens and the other 2 ('of a') stay fixed text after it") in caplog.text


def test_ctx_init_with_more_words_than_tokens_is_refused(clip_model):
    with pytest.raises(ValueError, match="has 3 words .* but only 2 BPE tokens.*remove the extra spaces"):
        PromptLearner(_cfg(**{"TRAINER.COOP.CTX_INIT": "a  photo"}).TRAINER.COOP, CLASSNAMES, clip_model)


def test_maple_n_ctx_beyond_upstreams_limit_is_announced(clip_model, caplog):
    caplog.set_level(logging.INFO, logger="plpp")
    text = "a photo of a big cat"
    cfg = _cfg(**{"TRAINER.MAPLE.CTX_INIT": text, "TRAINER.MAPLE.N_CTX": 5, "TRAINER.MAPLE.PROMPT_DEPTH": 2})
    learner = MultiModalPromptLearner(cfg.TRAINER.MAPLE, CLASSNAMES, clip_model)
    assert torch.equal(learner.ctx, clip_model.token_embedding.weight[tokenize(text)[0, 1:6]])
    assert "upstream MaPLe ignores CTX_INIT when N_CTX > 4" in caplog.text


# ------------------------------------------------------------------------------------------- §2 precision

TRAINER_OPTS = {"TRAINER.COOP.N_CTX": 2, "TRAINER.COCOOP.N_CTX": 2, "TRAINER.MAPLE.PROMPT_DEPTH": 2,
                "TRAINER.IVLP.PROMPT_DEPTH_TEXT": 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION": 2,
                "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 2, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION": 2,
                "TRAINER.PROMPTSRC.GPA_MEAN": 1}
PREC_KEYS = {"CoCoOp": "COCOOP", "MaPLe": "MAPLE", "IVLP": "IVLP", "PromptSRC": "PROMPTSRC"}
# Learnable tensors upstream trains in fp16 under PREC fp16 (created in CLIP's dtype or .half()-ed there).
FP16_TENSORS = {"CoOp": {"ctx"}, "KgCoOp": {"ctx"}, "ProGrad": {"ctx"}, "IVLP": {"ctx"}, "PromptSRC": {"ctx"},
                "CoCoOp": {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
                           "meta_net.linear2.bias"},
                "MaPLe": {"ctx", "proj.weight", "proj.bias"}}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=3, train_per_class=2, test_per_class=2)
    return root


def _trainer(name: str, data_root, clip_file, out, prec: str = "fp32", config: str | None = None, **opts):
    """``name``'s trainer on the tiny data, built in-process as ``train.py`` builds it (``config``: a YAML first)."""
    host = name.removeprefix("PLPP_")
    tiny = dict(zip(TINY_OPTS[::2], TINY_OPTS[1::2]))
    cfg = _cfg()
    if config is not None:
        cfg.merge_from_file(str(REPO / config))
    cfg.merge_from_list([str(x) for kv in {
        "TRAINER.NAME": name, "DATASET.NAME": "FashionMNIST", "DATASET.ROOT": data_root,
        "MODEL.BACKBONE.NAME": clip_file, "OUTPUT_DIR": out, "USE_CUDA": False, "SEED": 1,
        "DATALOADER.TRAIN_X.BATCH_SIZE": 2, "OPTIM.NAME": "sgd", "OPTIM.LR": 0.1, "OPTIM.WARMUP_EPOCH": 0,
        f"TRAINER.{PREC_KEYS.get(host, 'COOP')}.PREC": prec, **TRAINER_OPTS, **tiny, **opts}.items() for x in kv])
    cfg.freeze()
    set_random_seed(1)
    return build_trainer(cfg)


@pytest.fixture()
def hand_cast(monkeypatch):
    """Build trainers whose ``Precision`` keeps the requested mode on the CPU (no fp32 fallback)."""

    class HandCast(clip_utils.Precision):
        def __init__(self, prec, device, key="PREC"):
            super().__init__("fp32", device, key)
            self.requested = self.mode = prec

    monkeypatch.setattr(trainers_base, "Precision", HandCast)


def _one_step(trainer) -> dict:
    """One training step on the first batch; returns the learner's parameters before it."""
    before = {n: p.detach().clone() for n, p in trainer.model.prompt_learner.named_parameters()}
    trainer.batch_idx, trainer.num_batches = 0, 2
    trainer.set_model_mode("train")
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert torch.isfinite(torch.tensor(summary["loss"]))
    return before


@pytest.mark.parametrize("name", ["CoOp", "CoCoOp", "MaPLe", "IVLP", "PromptSRC", "KgCoOp", "ProGrad",
                                  "PLPP", "PLPP_CoCoOp", "PLPP_MaPLe"])
def test_fp16_trains_upstreams_half_tensors(hand_cast, data_root, tiny_clip_file, tmp_path, name, caplog):
    caplog.set_level(logging.INFO, logger="plpp")
    trainer = _trainer(name, data_root, tiny_clip_file, tmp_path / "out", prec="fp16")
    learner = trainer.model.prompt_learner
    half = {n for n, p in learner.named_parameters() if p.dtype == torch.float16}
    assert half == FP16_TENSORS["CoOp" if name == "PLPP" else name.removeprefix("PLPP_")]
    assert all(p.dtype == torch.float32 for n, p in learner.named_parameters() if n not in half)
    assert trainer.model.text_encoder.dtype == torch.float16  # CLIP's weights converted as the clip package does
    line = next(r.getMessage() for r in caplog.records if "fp16, as upstream:" in r.getMessage())
    assert all(n in line for n in half) and "trained in fp16 with fp16 optimizer state" in line
    before = _one_step(trainer)
    state = trainer._optims["prompt_learner"].state
    for n, p in learner.named_parameters():
        assert state[p]["momentum_buffer"].dtype == p.dtype, n  # fp16 weights get fp16 optimizer state
    assert not torch.equal(before["ctx"], learner.ctx)
    if name == "PromptSRC":
        assert all(b.dtype == torch.float32 for b in learner.gpa.buffers())  # the epoch average sums in fp32


@pytest.mark.parametrize("prec", ["fp32", "amp", "bf16"])
@pytest.mark.parametrize("name", ["CoCoOp", "MaPLe"])
def test_other_modes_keep_fp32_parameters_and_optimizer_state(hand_cast, data_root, tiny_clip_file, tmp_path,
                                                              name, prec):
    trainer = _trainer(name, data_root, tiny_clip_file, tmp_path / "out", prec=prec)
    learner = trainer.model.prompt_learner
    assert trainer.model.text_encoder.dtype == torch.float32
    if prec == "amp":
        assert trainer.scaler is not None
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # no overflow-skipped first step
    before = _one_step(trainer)
    state = trainer._optims["prompt_learner"].state
    for n, p in learner.named_parameters():
        assert p.dtype == torch.float32 and state[p]["momentum_buffer"].dtype == torch.float32, n
    assert not torch.equal(before["ctx"], learner.ctx)


def test_fp16_falls_back_to_fp32_on_the_cpu(data_root, tiny_clip_file, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="plpp")
    trainer = _trainer("CoCoOp", data_root, tiny_clip_file, tmp_path / "out", prec="fp16")
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert "Note: TRAINER.COCOOP.PREC fp16 needs CUDA; running in fp32 on cpu" in caplog.text


# ------------------------------------------------------------------------------------------ §3 checkpoints

MAPLE_CONFIG = "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"
UPSTREAM_FOLDER = {"CoOp": "prompt_learner", "CoCoOp": "prompt_learner", "MaPLe": "MultiModalPromptLearner"}
MARKER = "crafted-pickle-ran"


class Crafted:
    """Pickles as a call that would write a file if the pickle were run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        import builtins

        return (builtins.exec, (f"open({self.path!r}, 'w').write('ran')",))


def _set_half_representable_prompt(learner) -> None:
    """A prompt away from its init whose values survive fp16 (upstream saved fp16 tensors)."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in learner.parameters():
            p.copy_((p + 0.05 * torch.randn_like(p)).half().float())


def write_upstream_run(run: Path, host: str, trainer, epoch: int, crafted: Path | None = None) -> Path:
    """A run folder as upstream's trainer writes it (Dassl's ``save_model``), for ``trainer``'s prompt."""
    learner = trainer.model.prompt_learner
    theirs = {"deep_text_prompts": "compound_prompts_text", "deep_projections": "compound_prompt_projections"}
    state = OrderedDict()
    for key, value in learner.state_dict().items():
        first, _, rest = key.partition(".")
        state[theirs.get(first, first) + ("." + rest if rest else "")] = value.half()
    state["token_prefix"] = learner.token_prefix.half()
    state["token_suffix"] = learner.token_suffix.half()
    if host == "MaPLe":  # upstream registers its whole CustomCLIP: frozen CLIP tensors around the learner's
        frozen = {f"image_encoder.{k}": v.half() for k, v in trainer.model.image_encoder.state_dict().items()}
        frozen.update({f"text_encoder.{k}": v for k, v in trainer.model.text_encoder.state_dict().items()})
        frozen["logit_scale"] = trainer.model.logit_scale.detach()
        state = OrderedDict({**{f"prompt_learner.{k}": v for k, v in state.items()}, **frozen})
    params = [torch.nn.Parameter(v.float()) for v in state.values() if v.is_floating_point()][:2]
    optim = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    sum(p.sum() for p in params).backward()
    optim.step()
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=epoch)  # pickled as an object, as Dassl's
    scheduler = {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": epoch, "_step_count": 6}
    if crafted is not None:
        scheduler["crafted"] = Crafted(crafted)
    folder = run / UPSTREAM_FOLDER[host]
    folder.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": epoch, "optimizer": optim.state_dict(), "scheduler": scheduler,
                "val_result": None}, folder / f"model.pth.tar-{epoch}")
    (folder / "checkpoint").write_text(f"model.pth.tar-{epoch}\n")
    return folder / f"model.pth.tar-{epoch}"


def _logits(trainer, images: torch.Tensor) -> torch.Tensor:
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    with torch.no_grad():
        return trainer.model_inference(images)


@pytest.mark.parametrize("host", ["CoOp", "CoCoOp", "MaPLe"])
def test_upstream_checkpoint_predicts_what_our_checkpoint_of_the_prompt_predicts(
        data_root, tiny_clip_file, tmp_path, host, caplog):
    caplog.set_level(logging.INFO, logger="plpp")
    trainer = _trainer(host, data_root, tiny_clip_file, tmp_path / "a")
    _set_half_representable_prompt(trainer.model.prompt_learner)
    trainer.save_model(4, str(tmp_path / "ours"))
    fpath = write_upstream_run(tmp_path / "theirs", host, trainer, epoch=5, crafted=tmp_path / MARKER)
    with pytest.raises(Exception, match="Unsupported global|weights_only"):
        torch.load(fpath, weights_only=True)  # pickled objects inside: torch's safe loader refuses the file
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    ours = _trainer(host, data_root, tiny_clip_file, tmp_path / "b")
    ours.load_model(str(tmp_path / "ours"), epoch=5)
    theirs = _trainer(host, data_root, tiny_clip_file, tmp_path / "c")
    theirs.load_model(str(tmp_path / "theirs"), epoch=5)
    assert torch.equal(_logits(theirs, images), _logits(ours, images))
    assert theirs.evaluated_epoch == 5 and theirs.evaluated_weights == {"prompt_learner": str(fpath)}
    assert not (tmp_path / MARKER).exists()  # the crafted call was recorded, never made
    # pickle protocol 2 names builtins as __builtin__
    assert "they were skipped, never built: __builtin__.exec, torch.optim.lr_scheduler.CosineAnnealingLR" in caplog.text
    assert "dropped the class-dependent buffers token_prefix, token_suffix" in caplog.text
    if host == "MaPLe":
        assert "reading prompt_learner from" in caplog.text and "MultiModalPromptLearner" in caplog.text
        assert "read compound_prompts_text.* as deep_text_prompts.*" in caplog.text
        assert "tensors of the frozen model (image_encoder.*, logit_scale, text_encoder.*)" in caplog.text

    init = _trainer(host, data_root, tiny_clip_file, tmp_path / "d", **{"MODEL.INIT_WEIGHTS": str(fpath)})
    for key, value in ours.model.prompt_learner.state_dict().items():
        assert torch.equal(init.model.prompt_learner.state_dict()[key], value), key


def test_an_upstream_checkpoint_of_another_host_is_one_clear_error(data_root, tiny_clip_file, tmp_path):
    cocoop = _trainer("CoCoOp", data_root, tiny_clip_file, tmp_path / "a")
    write_upstream_run(tmp_path / "theirs", "CoCoOp", cocoop, epoch=2)
    coop = _trainer("CoOp", data_root, tiny_clip_file, tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"does not fit this model \(unexpected: meta_net\.linear1\.bias"):
        coop.load_model(str(tmp_path / "theirs"), epoch=2)


def test_eval_only_reads_an_upstream_maple_run(data_root, tiny_clip_file, tmp_path):
    """``train.py --eval-only --model-dir <upstream MaPLe run>`` gives the accuracy of our checkpoint of the prompt."""
    trainer = _trainer("MaPLe", data_root, tiny_clip_file, tmp_path / "a", config=MAPLE_CONFIG)
    _set_half_representable_prompt(trainer.model.prompt_learner)
    write_upstream_run(tmp_path / "theirs", "MaPLe", trainer, epoch=5)
    trainer.save_model(4, str(tmp_path / "ours"))
    ours = _trainer("MaPLe", data_root, tiny_clip_file, tmp_path / "ours-eval", config=MAPLE_CONFIG)
    ours.load_model(str(tmp_path / "ours"), epoch=5)
    expected = ours.test()

    out = tmp_path / "eval"
    args = train_args(data_root, tiny_clip_file, out, trainer="MaPLe", config=MAPLE_CONFIG,
                      flags=("--eval-only", "--model-dir", str(tmp_path / "theirs"), "--load-epoch", "5"),
                      opts=["TRAINER.MAPLE.PROMPT_DEPTH", "2"])
    res = subprocess.run([PYTHON, "train.py", *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["accuracy"] == expected and results["epoch"] == 5 and results["eval_only"] is True
    upstream_file = tmp_path / "theirs" / "MultiModalPromptLearner" / "model.pth.tar-5"
    assert results["weights_from"] == {"prompt_learner": str(upstream_file)}
    log = (out / "log.txt").read_text()
    assert "they were skipped, never built: torch.optim.lr_scheduler.CosineAnnealingLR" in log
