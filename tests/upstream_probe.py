"""Upstream's model and ours, built from the same random CLIP tensors, compared on one batch.

Run by ``tests/test_upstream_parity.py`` in a subprocess, inside a CoOp or MaPLe checkout's import path
(with Dassl importable and ``PLPP_ENGINE=builtin``, so our trainers stay out of Dassl's registry):

    python tests/upstream_probe.py HOST CHECKOUT WORKDIR CASES_JSON

``HOST`` is ``CoOp``, ``CoCoOp`` or ``MaPLe``; each case (a dict of prompt settings and ``prec``) builds
upstream's ``CustomCLIP`` with its own prompt learner, optimizer and scheduler (Dassl's builders) and our
trainer (its real ``build_model`` and training step), copies upstream's learnable tensors into ours
(after checking the ones initialised from words are equal already), runs one SGD step on each, writes
upstream's checkpoint with Dassl's own ``save_model`` and loads it into a fresh trainer of ours. One line
``RESULT <json>`` reports, per case, the largest differences and the dtypes; the test asserts on them.
``prec fp16`` builds ours with ``PREC fp16`` kept on the CPU (hand-cast: the CPU normally falls back to
fp32), as upstream's fp16 runs there.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

HOST, CHECKOUT, WORK, CASES = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
os.environ["PLPP_ENGINE"] = "builtin"
sys.path.insert(0, CHECKOUT)  # upstream's trainers/, clip/ and train.py (ours live under plpp.*)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

_spec = importlib.util.spec_from_file_location("plpp_test_conftest", Path(__file__).with_name("conftest.py"))
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)

from clip import clip as upstream_clip  # noqa: E402  (the checkout's own CLIP)
from dassl.config import get_cfg_default as dassl_cfg  # noqa: E402
from dassl.engine.trainer import TrainerBase as DasslTrainerBase  # noqa: E402
from dassl.optim import build_lr_scheduler as dassl_scheduler  # noqa: E402
from dassl.optim import build_optimizer as dassl_optimizer  # noqa: E402

import plpp.trainers  # noqa: E402,F401  (registers our trainers in the built-in registry)
import train as upstream_train  # noqa: E402  (the checkout's train.py: its extend_cfg)
from plpp import clip_utils  # noqa: E402
from plpp.engine import TRAINER_REGISTRY, get_cfg_default  # noqa: E402
from plpp.trainers import base as plpp_base  # noqa: E402
from plpp.trainers import extend_cfg  # noqa: E402

torch.set_num_threads(1)
KEY = {"CoOp": "COOP", "CoCoOp": "COCOOP", "MaPLe": "MAPLE"}[HOST]
UPSTREAM_NAME = {"CoOp": "prompt_learner", "CoCoOp": "prompt_learner", "MaPLe": "MultiModalPromptLearner"}[HOST]
CLASSNAMES = ["cat", "golden retriever", "sea_lion"]
NEW_CLASSNAMES = ["hot air balloon", "dog"]
OPTIM = {"NAME": "sgd", "LR": 0.5, "MAX_EPOCH": 2, "LR_SCHEDULER": "cosine", "WARMUP_EPOCH": 1,
         "WARMUP_TYPE": "constant", "WARMUP_CONS_LR": 1e-5}
# MaPLe's prompt learner hard-codes the widths of ViT-B/16 (512 text, 768 vision).
MAPLE_CLIP = dict(embed_dim=32, image_resolution=32, vision_layers=12, vision_width=768, vision_patch_size=16,
                  context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                  transformer_layers=12)


class HandCastPrecision(clip_utils.Precision):
    """``PREC fp16`` kept on the CPU (no fallback), so upstream's fp16 semantics can be compared there."""

    def __init__(self, prec, device, key="PREC"):
        super().__init__("fp32", device, key)
        self.requested = self.mode = prec


def clip_state() -> dict[str, torch.Tensor]:
    dims = MAPLE_CLIP if HOST == "MaPLe" else {}
    return conftest.build_tiny_clip(seed=3, **dims).state_dict()


def case_cfgs(case: dict, classnames: list[str], clip_file: str):
    """Upstream's config (Dassl defaults + the checkout's extend_cfg) and ours, with the same values."""
    settings = {k: v for k, v in case.items() if k.isupper()}
    up = dassl_cfg()
    upstream_train.extend_cfg(up)
    ours = get_cfg_default()
    extend_cfg(ours)
    for cfg in (up, ours):
        cfg.INPUT.SIZE = (32, 32)
        cfg.TRAINER[KEY].PREC = case["prec"]
        for key, value in settings.items():
            cfg.TRAINER[KEY][key] = value
        for key, value in OPTIM.items():
            cfg.OPTIM[key] = value
    ours.TRAINER.NAME = HOST
    ours.MODEL.BACKBONE.NAME = clip_file
    ours.USE_CUDA = False
    ours.OUTPUT_DIR = str(WORK / "ours-out")
    ours.DATASET.NAME = "probe"
    return up, ours


@contextlib.contextmanager
def upstream_fp32_casts(active: bool):
    """Upstream MaPLe ``.half()``s its prompts inside CLIP's blocks and keeps ``proj`` in half, so its fp32
    mode cannot run; for the fp32 comparison those casts are no-ops, as that mode would need."""
    if not active:
        yield
        return
    half = torch.Tensor.half
    torch.Tensor.half = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.half = half


_BUILT: dict = {}


def upstream_clip_model(state, n_ctx: int):
    """``clip.build_model`` of the checkout on ``state`` (built once, copied per use: the 12-layer CLIP is slow)."""
    if n_ctx not in _BUILT:
        if HOST == "MaPLe":
            design = {"trainer": "MaPLe", "vision_depth": 0, "language_depth": 0, "vision_ctx": 0,
                      "language_ctx": 0, "maple_length": n_ctx}
            _BUILT[n_ctx] = upstream_clip.build_model(dict(state), design)
        else:
            _BUILT[n_ctx] = upstream_clip.build_model(dict(state))
    return copy.deepcopy(_BUILT[n_ctx])


def cached_load_clip(load):
    """``load_clip`` reading each weights file once (the probe builds many models of one CLIP)."""
    cache: dict = {}

    def cached(name):
        if name not in cache:
            cache[name] = load(name)
        return copy.deepcopy(cache[name])

    return cached


def build_upstream(cfg, state, classnames):
    """Upstream's model, optimizer and scheduler, as its trainer's ``build_model`` makes them."""
    module = importlib.import_module(f"trainers.{HOST.lower()}")
    clip_model = upstream_clip_model(state, cfg.TRAINER[KEY].N_CTX if HOST == "MaPLe" else 0)
    if cfg.TRAINER[KEY].PREC in ("fp32", "amp"):
        clip_model.float()
    model = module.CustomCLIP(cfg, classnames, clip_model)
    if HOST == "MaPLe" and cfg.TRAINER[KEY].PREC == "fp32":
        model.prompt_learner.proj.float()  # see upstream_fp32_casts
    for name, param in model.named_parameters():
        param.requires_grad_("prompt_learner" in name or (HOST == "MaPLe" and "VPT" in name))
    trained = model if HOST == "MaPLe" else model.prompt_learner  # what upstream registers and optimises
    optim = dassl_optimizer(trained, cfg.OPTIM)
    sched = dassl_scheduler(optim, cfg.OPTIM)
    return model, trained, optim, sched


def build_ours(cfg, classnames):
    """Our trainer of ``HOST`` built by its own ``build_model`` (data replaced by the class names)."""
    names = list(classnames)

    class Probe(TRAINER_REGISTRY.get(HOST)):
        def build_data_loader(self):
            self.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=names))
            self.lab2cname = dict(enumerate(names))
            self.train_loader_x = self.val_loader = self.test_loader = None

    if cfg.TRAINER[KEY].PREC == "fp16":
        plpp_base.Precision = HandCastPrecision
    try:
        trainer = Probe(cfg)
    finally:
        plpp_base.Precision = clip_utils.Precision
    trainer.batch_idx, trainer.num_batches = 0, 2
    return trainer


def ours_named(trainer, upstream: dict) -> dict:
    """Values keyed by upstream's prompt-learner names, keyed by ours (MaPLe's go through the whole-model
    names its checkpoints use, so the mapping of ``from_upstream_names`` is the one under test)."""
    prefix = "prompt_learner." if HOST == "MaPLe" else ""
    return type(trainer.model.prompt_learner).from_upstream_names({prefix + k: v for k, v in upstream.items()})[0]


def diff(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def upstream_logits(model, images, fp32_casts):
    model.eval()
    with torch.no_grad(), upstream_fp32_casts(fp32_casts):
        return model(images).float()


def our_logits(trainer, images):
    trainer.set_model_mode("eval")
    trainer.before_test("test")
    with torch.no_grad():
        return trainer.model_inference(images).float()


def upstream_step(model, trained, optim, images, labels, fp32_casts):
    """One training step as upstream's ``forward_backward`` does it (non-amp branch)."""
    trained.train()
    with upstream_fp32_casts(fp32_casts):
        if HOST == "CoOp":
            loss = F.cross_entropy(model(images), labels)
        else:
            loss = model(images, labels)
        optim.zero_grad()
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.prompt_learner.named_parameters() if p.grad is not None}
    optim.step()
    return float(loss), grads


def optimizer_state_dtypes(optim, names_by_id) -> dict[str, str]:
    out = {}
    for param, state in optim.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and id(param) in names_by_id:
                out[f"{names_by_id[id(param)]}:{key}"] = str(value.dtype)
    return out


def run_case(case: dict, state: dict, clip_file: str) -> dict:
    out: dict = {}
    up_cfg, our_cfg = case_cfgs(case, CLASSNAMES, clip_file)
    fp32_casts = HOST == "MaPLe" and case["prec"] == "fp32"
    torch.manual_seed(0)
    model, trained, optim, sched = build_upstream(up_cfg, state, CLASSNAMES)
    trainer = build_ours(our_cfg, CLASSNAMES)
    learner = trainer.model.prompt_learner
    up_state = ours_named(trainer, model.prompt_learner.state_dict())
    ours_state = learner.state_dict()
    out["names"] = sorted(ours_state) == sorted(up_state)
    out["shapes"] = {k: [list(v.shape), str(v.dtype)] for k, v in ours_state.items()}
    out["upstream_shapes"] = {k: [list(v.shape), str(v.dtype)] for k, v in up_state.items()}
    if case.get("CTX_INIT"):
        out["init_ctx"] = diff(ours_state["ctx"], up_state["ctx"])
    up_buffers = model.prompt_learner
    out["buffers"] = max(diff(learner.token_prefix, up_buffers.token_prefix),
                         diff(learner.token_suffix, up_buffers.token_suffix),
                         diff(learner.tokenized_prompts, up_buffers.tokenized_prompts))
    learner.load_state_dict(up_state, strict=True)  # identical learnable tensors from here on

    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([2, 0])
    out["logits"] = diff(our_logits(trainer, images), upstream_logits(model, images, fp32_casts))

    sched.step()  # past the warm-up epoch (LR 1e-5), so the step below moves the prompt visibly
    trainer.update_lr()
    out["lr"] = [optim.param_groups[0]["lr"], trainer.get_current_lr()]
    trainer.set_model_mode("train")
    summary = trainer.forward_backward({"img": images, "label": labels})
    up_loss, up_grads = upstream_step(model, trained, optim, images, labels, fp32_casts)
    out["loss"] = abs(summary["loss"] - up_loss)
    up_grads = ours_named(trainer, up_grads)
    ours_grads = {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}
    out["grad_names"] = sorted(ours_grads) == sorted(up_grads)
    out["grads"] = max(diff(ours_grads[n], up_grads[n]) for n in ours_grads)
    out["grad_scale"] = max(float(g.abs().max()) for g in up_grads.values())
    up_after = ours_named(trainer, model.prompt_learner.state_dict())
    out["params_after_step"] = max(diff(v, up_after[k]) for k, v in learner.state_dict().items())
    out["logits_after_step"] = diff(our_logits(trainer, images), upstream_logits(model, images, fp32_casts))
    up_params = ours_named(trainer, dict(model.prompt_learner.named_parameters()))
    out["upstream_optimizer_dtypes"] = optimizer_state_dtypes(optim, {id(p): n for n, p in up_params.items()})
    out["optimizer_dtypes"] = optimizer_state_dtypes(trainer._optims["prompt_learner"],
                                                     {id(p): n for n, p in learner.named_parameters()})
    out["upstream_param_dtypes"] = {n: str(p.dtype) for n, p in up_params.items()}
    out["param_dtypes"] = {n: str(p.dtype) for n, p in learner.named_parameters()}

    # Upstream's checkpoint, written by Dassl's own save_model (its scheduler pickles its successor).
    run = WORK / f"upstream-run-{case['id']}"
    writer = DasslTrainerBase()
    writer.register_model(UPSTREAM_NAME, trained, optim, sched)
    writer.save_model(0, str(run))
    fpath = run / UPSTREAM_NAME / "model.pth.tar-1"
    try:
        torch.load(fpath, map_location="cpu", weights_only=True)
        out["pickled_objects"] = False
    except Exception:  # noqa: BLE001 - torch's refusal of pickled objects
        out["pickled_objects"] = True
    up_eval = upstream_logits(model, images, fp32_casts)
    torch.manual_seed(123)  # another initial prompt: the checkpoint must replace it all
    fresh = build_ours(our_cfg, CLASSNAMES)
    fresh.load_model(str(run), epoch=1)
    out["upstream_checkpoint_logits"] = diff(our_logits(fresh, images), up_eval)
    ours_run = WORK / f"ours-run-{case['id']}"
    trainer.save_model(0, str(ours_run))
    again = build_ours(our_cfg, CLASSNAMES)
    again.load_model(str(ours_run), epoch=1)
    out["own_vs_upstream_checkpoint"] = diff(our_logits(again, images), our_logits(fresh, images))

    # The same checkpoint on other classes (base-to-new): upstream's own load_model against ours.
    if learner.csc:  # a class-specific context fits its own classes only (upstream's load fails too)
        return out
    up_new_cfg, our_new_cfg = case_cfgs(case, NEW_CLASSNAMES, clip_file)
    new_model, new_trained, _, _ = build_upstream(up_new_cfg, state, NEW_CLASSNAMES)
    holder = SimpleNamespace(get_model_names=lambda: [UPSTREAM_NAME], _models={UPSTREAM_NAME: new_trained})
    with contextlib.redirect_stdout(sys.stderr):
        importlib.import_module(f"trainers.{HOST.lower()}").__dict__[HOST].load_model(holder, str(run), epoch=1)
    new_ours = build_ours(our_new_cfg, NEW_CLASSNAMES)
    new_ours.load_model(str(run), epoch=1)
    out["new_classes_logits"] = diff(our_logits(new_ours, images), upstream_logits(new_model, images, fp32_casts))
    return out


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    plpp_base.load_clip = cached_load_clip(plpp_base.load_clip)
    state = clip_state()
    clip_file = str(WORK / f"clip-{HOST}.pt")
    torch.save(state, clip_file)
    results = {}
    for case in CASES:
        try:
            results[case["id"]] = run_case(case, state, clip_file)
        except Exception as exc:  # noqa: BLE001 - reported per case, so one failure does not hide the others
            import traceback

            traceback.print_exc()
            results[case["id"]] = {"error": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
