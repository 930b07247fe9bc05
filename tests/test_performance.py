"""The fast paths are the same maths: cached evaluation, checkpointed text encoder, bf16 and fp16 master weights.

No timings here (benchmarks/ measure those); these tests pin what the speed and memory features
must not change: predictions, losses and gradients, and which parameters the optimizer updates.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import plpp.datasets  # noqa: F401  (registers FashionMNIST)
import plpp.trainers.base as base
from plpp.clip_utils import Precision, bf16_supported
from plpp.engine import build_optimizer, build_trainer, get_cfg_default
from plpp.perplexity import perplexity_losses
from plpp.trainers import extend_cfg
from plpp.trainers.base import TEXT_CHECKPOINT_AUTO_TOKENS, check_clip_cfg, decide_text_checkpoint
from plpp.trainers.cocoop import CoCoOpCLIP
from plpp.trainers.coop import CustomCLIP
from plpp.trainers.maple import MaPLeCLIP
from tests.conftest import build_tiny_clip, write_fashion_mnist

CLASSNAMES = ["cat", "golden retriever", "sea_lion", "fire truck"]
HOSTS = {"CoOp": CustomCLIP, "CoCoOp": CoCoOpCLIP, "MaPLe": MaPLeCLIP}


def _cfg(**opts) -> CN:
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.COOP.N_CTX = 4
    cfg.TRAINER.COCOOP.N_CTX = 4
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 2
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def _model(host: str, clip_model, **opts) -> torch.nn.Module:
    torch.manual_seed(0)
    model = HOSTS[host](_cfg(**opts), CLASSNAMES, clip_model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("prompt_learner."))
    with torch.no_grad():  # move away from the init so every parameter matters
        for p in model.prompt_learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


WEIGHTS = {"ce": 1.0, "ppl": 0.1, "ippl": 0.1}  # TRAINER.PLPP's default weights


def _total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(WEIGHTS[k] * v for k, v in terms.items())


def _loss(model, image, label, plpp: bool) -> dict[str, torch.Tensor]:
    """CE (+ the PLPP terms) of one step, through the same calls as the trainers."""
    if not plpp:
        return {"ce": F.cross_entropy(model(image).float(), label)}
    logits, ctx, states = model.forward_with_states(image)
    terms = perplexity_losses(ctx, states, model.token_embedding.weight, topk=3, temperature=0.1)
    return {"ce": F.cross_entropy(logits.float(), label), "ppl": terms["ppl"], "ippl": terms["ippl"]}


# --- evaluation: text features once per evaluation, identical predictions ------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=4, train_per_class=4, test_per_class=3)
    return root


def _trainer(name, data_root, clip_file, out, **opts):
    cfg = _cfg(**{"TRAINER.NAME": name, "DATASET.NAME": "FashionMNIST", "DATASET.ROOT": str(data_root),
                  "MODEL.BACKBONE.NAME": str(clip_file), "OUTPUT_DIR": str(out), "USE_CUDA": False,
                  "INPUT.SIZE": (32, 32), "DATALOADER.NUM_WORKERS": 0, "DATALOADER.TEST.BATCH_SIZE": 5,
                  "DATALOADER.TRAIN_X.BATCH_SIZE": 4, "OPTIM.NAME": "sgd", "OPTIM.LR": 0.1,
                  "TRAINER.COOP.PREC": "fp32", "TRAINER.COCOOP.PREC": "fp32", "TRAINER.MAPLE.PREC": "fp32", **opts})
    cfg.freeze()
    return build_trainer(cfg)


def _evaluate(trainer) -> tuple[list[torch.Tensor], int]:
    """Logits of every test batch through ``trainer.test()``, and how many text-encoder passes it made."""
    logits, passes = [], []
    inference = trainer.model_inference
    trainer.model_inference = lambda x: logits.append(inference(x)) or logits[-1]
    hook = trainer.model.text_encoder.register_forward_hook(lambda *_: passes.append(1))
    try:
        trainer.test()
    finally:
        hook.remove()
        del trainer.model_inference
    return logits, len(passes)


@torch.no_grad()
def _uncached(trainer) -> list[torch.Tensor]:
    trainer.set_model_mode("eval")
    out = []
    for batch in trainer.test_loader:
        trainer.model.clear_text_cache()
        out.append(trainer.model_inference(trainer.parse_batch_test(batch)[0]))
    return out


@pytest.mark.parametrize("name", ["CoOp", "MaPLe", "PLPP"])
def test_cached_evaluation_equals_uncached(tmp_path, data_root, tiny_clip_file, name):
    trainer = _trainer(name, data_root, tiny_clip_file, tmp_path)
    with torch.no_grad():
        for p in trainer.model.prompt_learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cached, passes = _evaluate(trainer)
    assert passes == 1 and len(cached) == 3  # 12 test images, batches of 5: one text pass for all of them
    uncached = _uncached(trainer)
    assert all(torch.equal(a, b) for a, b in zip(cached, uncached))  # same logits, so same predictions

    trainer.set_model_mode("train")  # training clears the cache; a step changes the prompts
    assert trainer.model._text_cache is None
    trainer.batch_idx, trainer.num_batches = 0, 2
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    after, passes = _evaluate(trainer)
    assert passes == 1 and all(torch.equal(a, b) for a, b in zip(after, _uncached(trainer)))
    assert not torch.equal(after[0], cached[0])

    trainer.before_test("test")  # parameters changed after caching (e.g. weights loaded): re-encoded, not stale
    with torch.no_grad():
        trainer.model.prompt_learner.ctx.add_(0.1)
        image = trainer.parse_batch_test(next(iter(trainer.test_loader)))[0]
        assert torch.equal(trainer.model_inference(image), _uncached(trainer)[0])


# --- activation checkpointing of the text encoder --------------------------------------------------------

@pytest.fixture(scope="module")
def clip3():
    """Three text layers: two are checkpointed (the last never is)."""
    return build_tiny_clip(seed=3, transformer_layers=3, vision_layers=3)


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("plpp", [False, True], ids=["ce", "plpp"])
@pytest.mark.parametrize("mode", ["fast", "full"])
def test_checkpointed_text_encoder_gives_the_same_loss_and_gradients(clip3, host, plpp, mode):
    torch.manual_seed(1)
    image, label = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 3])
    results = {}
    for on in (False, True):
        model = _model(host, clip3)
        model.text_encoder.mode = mode
        model.text_encoder.use_checkpoint = on
        calls = []  # block 0's first norm runs in both passes (per prefix and bucket in the fast one)
        hook = model.text_encoder.tower.blocks[0].ln_1.register_forward_pre_hook(lambda *_, c=calls: c.append(1))
        terms = _loss(model, image, label, plpp)
        n_forward = len(calls)
        _total(terms).backward()
        hook.remove()
        grads = {n: p.grad for n, p in model.prompt_learner.named_parameters()}
        results[on] = (terms, grads, n_forward, len(calls))
    (plain, g_plain, f_plain, n_plain), (ckpt, g_ckpt, f_ckpt, n_ckpt) = results[False], results[True]
    assert f_plain == f_ckpt == n_plain and n_ckpt == 2 * f_ckpt  # block 0 recomputed in the backward pass
    assert set(plain) == set(ckpt) == ({"ce", "ppl", "ippl"} if plpp else {"ce"})
    for key in plain:
        assert torch.allclose(plain[key], ckpt[key], atol=1e-5, rtol=0), key
    assert g_plain.keys() == g_ckpt.keys()
    for name in g_plain:
        assert g_plain[name] is not None and torch.allclose(g_plain[name], g_ckpt[name], atol=1e-5, rtol=1e-5), name


def test_auto_rule_and_choices():
    assert decide_text_checkpoint("auto", 1000 * 77)[0]  # ImageNet through the full pass: 77,000 tokens per step
    assert not decide_text_checkpoint("auto", 17 + 1000 * 5)[0]  # ... through the fast pass
    assert decide_text_checkpoint("auto", TEXT_CHECKPOINT_AUTO_TOKENS)[0]
    assert not decide_text_checkpoint("auto", TEXT_CHECKPOINT_AUTO_TOKENS - 1)[0]
    assert decide_text_checkpoint("always", 1)[0] and not decide_text_checkpoint("never", 10**6)[0]
    cfg = _cfg(**{"TRAINER.COOP.TEXT_CHECKPOINT": "yes"})
    with pytest.raises(ValueError, match=r"TRAINER.COOP.TEXT_CHECKPOINT 'yes' is not valid; choose one of auto"):
        check_clip_cfg(cfg, "COOP")


@pytest.mark.parametrize("name,text_pass,threshold,batch,expected", [
    ("CoOp", "full", 4 * 77, 4, "on"),  # the full pass: 4 classes × 77 tokens reach the (lowered) threshold
    ("CoOp", "full", 4 * 77 + 1, 4, "off"),
    ("CoOp", "fast", 4 * 77, 4, "off"),  # the fast pass computes far fewer tokens
    ("PLPP_CoCoOp", "full", 16 * 77, 4, "on"),  # CoCoOp: 4 images × 4 classes
    ("PLPP_CoCoOp", "fast", 16 * 77, 4, "off"),
    ("MaPLe", "fast", None, 4, "off"),
])
def test_auto_rule_switches_each_host_and_logs(tmp_path, data_root, tiny_clip_file, caplog, monkeypatch,
                                               name, text_pass, threshold, batch, expected):
    if threshold is not None:
        monkeypatch.setattr(base, "TEXT_CHECKPOINT_AUTO_TOKENS", threshold)
    monkeypatch.setattr(logging.getLogger("plpp"), "propagate", True)
    key = "COCOOP" if "CoCoOp" in name else name.upper().replace("PLPP", "COOP")
    with caplog.at_level("INFO", logger="plpp"):
        trainer = _trainer(name, data_root, tiny_clip_file, tmp_path, **{"DATALOADER.TRAIN_X.BATCH_SIZE": batch,
                                                                         f"TRAINER.{key}.TEXT_PASS": text_pass})
    encoder = trainer.model.text_encoder
    assert encoder.use_checkpoint is (expected == "on") and encoder.mode == text_pass
    work = trainer.model.text_work(batch)
    tokens = encoder.tokens_per_pass(work.layout, work.groups)
    assert f"Text pass (TRAINER.{key}.TEXT_PASS {text_pass}): {text_pass}: " in caplog.text
    assert (f"Text encoder activation checkpointing: {expected} (TRAINER.{key}.TEXT_CHECKPOINT auto: "
            f"{tokens:,} tokens computed per step") in caplog.text
    if expected == "on":  # and a training step runs through the checkpointed blocks
        trainer.batch_idx, trainer.num_batches = 0, 2
        summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
        assert torch.isfinite(torch.tensor(summary["loss"]))


# --- precision: bf16 autocast and fp16 weights with fp32 master prompts ----------------------------------

def _train(model, plpp: bool, lr: float, autocast=contextlib.nullcontext, steps: int = 8):
    """SGD steps (the engine's optimizer) on a fixed batch; returns the losses and the optimizer."""
    cfg = _cfg(**{"OPTIM.NAME": "sgd", "OPTIM.LR": lr, "OPTIM.MOMENTUM": 0.9})
    optim = build_optimizer(model.prompt_learner, cfg.OPTIM)
    torch.manual_seed(1)
    image, label = torch.randn(4, 3, 32, 32), torch.arange(4) % len(CLASSNAMES)
    losses = []
    for _ in range(steps):
        with autocast():
            loss = _total(_loss(model, image, label, plpp))
        optim.zero_grad()
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in model.prompt_learner.parameters())
        optim.step()
        losses.append(loss.item())
    return losses, optim


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this torch has no CPU bf16 autocast")
@pytest.mark.parametrize("plpp", [False, True], ids=["coop", "plpp"])
def test_bf16_autocast_trains(plpp):
    precision = Precision("bf16", torch.device("cpu"))
    assert precision.mode == "bf16"
    model = _model("CoOp", build_tiny_clip(seed=2))
    losses, _ = _train(model, plpp, lr=0.5, autocast=precision.autocast)
    assert model.prompt_learner.ctx.dtype == torch.float32
    assert losses[-1] < 0.95 * losses[0], losses


def test_bf16_falls_back_where_unsupported(caplog, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    monkeypatch.setattr(logging.getLogger("plpp"), "propagate", True)
    with caplog.at_level("INFO", logger="plpp"):
        precision = Precision("bf16", torch.device("cuda"), key="TRAINER.COOP.PREC")
    assert precision.mode == "fp32" and "TRAINER.COOP.PREC bf16 is not supported on cuda" in caplog.text


def _half_clip():
    """A tiny CLIP cast as ``Precision('fp16')`` does on CUDA (weights in half), here on the CPU."""
    clip_model = Precision("fp16", torch.device("cuda")).prepare(build_tiny_clip(seed=2))
    assert clip_model.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    try:
        with torch.no_grad():
            clip_model.visual(torch.randn(1, 3, 32, 32, dtype=torch.float16))
    except RuntimeError as exc:  # some builds have no half kernels on the CPU
        pytest.skip(f"CPU half kernels missing: {exc}")
    return clip_model


@pytest.mark.parametrize("host,plpp,lr", [("CoOp", False, 0.5), ("CoOp", True, 0.5), ("CoCoOp", False, 0.5),
                                          ("MaPLe", False, 0.05)])
def test_fp16_model_keeps_fp32_master_prompts(host, plpp, lr):
    model = _model(host, _half_clip())
    learner = model.prompt_learner
    assert model.text_encoder.dtype == torch.float16
    params = dict(learner.named_parameters())
    extra = {"CoOp": set(), "CoCoOp": {"meta_net.linear1.weight"},
             "MaPLe": {"proj.weight", "deep_projections.0.weight"}}[host]
    assert {"ctx"} | extra <= set(params)
    assert all(p.dtype == torch.float32 for p in params.values())  # ctx, meta-net, projections: fp32 masters
    losses, optim = _train(model, plpp, lr)  # also checks that every gradient is fp32
    state = [t for s in optim.state.values() for t in s.values() if torch.is_tensor(t)]
    assert state and all(t.dtype == torch.float32 for t in state)  # momentum buffers in fp32
    assert all(p.dtype == torch.float32 for p in learner.parameters())
    reference, _ = _train(_model(host, build_tiny_clip(seed=2)), plpp, lr)  # the same run in fp32
    assert losses[-1] < 0.95 * losses[0], losses
    assert losses == pytest.approx(reference, rel=0.02), (losses, reference)
