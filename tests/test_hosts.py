"""CoCoOp, MaPLe and zero-shot CLIP on tiny random CLIPs, and PLPP plugged into each host."""

from __future__ import annotations

import json
import re
import subprocess
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import plpp.datasets  # noqa: F401  (registers FashionMNIST)
from plpp.clip_utils import encode_image_with_prompts, import_clip, load_clip, tokenize
from plpp.engine import TRAINER_REGISTRY, build_trainer, get_cfg_default
from plpp.trainers import extend_cfg
from plpp.trainers.cocoop import CoCoOpCLIP
from plpp.trainers.maple import MaPLeCLIP
from plpp.trainers.zsclip import IMAGENET_TEMPLATES_SELECT
from tests.conftest import PYTHON, REPO, TINY_OPTS, build_tiny_clip, subprocess_env, train_args, write_fashion_mnist
from tests.text_reference import stock_features, stock_states

CLASSNAMES = ["cat", "golden retriever", "sea_lion", "fire truck"]
NEW_CLASSNAMES = ["dog", "hot air balloon", "ant"]
HOSTS = {"CoCoOp": CoCoOpCLIP, "MaPLe": MaPLeCLIP}


def _cfg(maple_depth: int = 2, **opts) -> CN:
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.COCOOP.N_CTX = 4
    cfg.TRAINER.COCOOP.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = maple_depth
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


@pytest.fixture(scope="module")
def clip_model():
    """Text width 64, vision width 128: the coupling maps must read both from the model."""
    return build_tiny_clip(seed=1, vision_width=128)


def _model(host: str, clip_model, classnames=CLASSNAMES, **kw):
    torch.manual_seed(0)
    model = HOSTS[host](_cfg(**kw), classnames, clip_model)
    with torch.no_grad():  # move away from the init so every parameter matters
        for p in model.prompt_learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_widths_come_from_the_model(clip_model):
    meta = _model("CoCoOp", clip_model).prompt_learner.meta_net
    assert (meta.linear1.in_features, meta.linear1.out_features, meta.linear2.out_features) == (32, 2, 64)
    learner = _model("MaPLe", clip_model).prompt_learner
    assert learner.proj.weight.shape == (128, 64) and learner.deep_projections[0].weight.shape == (128, 64)
    assert [p.shape for p in learner.deep_text_prompts] == [(2, 64)]


def test_maple_context_is_the_leading_words_of_ctx_init(clip_model):
    learner = MaPLeCLIP(_cfg(), CLASSNAMES, clip_model).prompt_learner
    ids = tokenize("a photo of a cat.")[0]
    assert torch.equal(learner.tokenized_prompts[0], ids)  # "of a" stays as fixed text after the 2 ctx tokens
    assert torch.allclose(learner.ctx, clip_model.token_embedding.weight[ids[1:3]])
    with pytest.raises(ValueError, match="TRAINER.MAPLE.N_CTX 5"):
        MaPLeCLIP(_cfg(**{"TRAINER.MAPLE.N_CTX": 5}), CLASSNAMES, clip_model)
    with pytest.raises(ValueError, match="PROMPT_DEPTH 3 must be between 1 and 2"):
        MaPLeCLIP(_cfg(maple_depth=3), CLASSNAMES, clip_model)


def test_cocoop_batched_text_pass_equals_per_image_loop(clip_model):
    model = _model("CoCoOp", clip_model).eval()
    learner = model.prompt_learner
    image = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        img = model.encode_image(image)
        expected = []
        for b in range(len(image)):  # CoCoOp's reference: one 77-token pass over all classes per image
            ctx = (learner.ctx + learner.meta_net(img[b])).expand(learner.n_cls, -1, -1)
            prompts = torch.cat([learner.token_prefix, ctx, learner.token_suffix], dim=1)
            text = stock_features(clip_model, prompts, learner.tokenized_prompts)
            text = text / text.norm(dim=-1, keepdim=True)
            expected.append(model.logit_scale.exp() * img[b] @ text.t())
        expected = torch.stack(expected)
        batched = model(image)
        passes = []
        model.text_encoder.register_forward_hook(lambda *_: passes.append(1))
        model.max_tokens_per_pass = 2 * model.text_encoder.tokens_per_pass(learner.layout)
        chunked = model(image)
        assert len(passes) == 3  # chunks of 2 + 2 + 1 images
        model.cache_text_features()  # a no-op: the text depends on the image
        assert model._text_cache is None
    assert torch.allclose(batched, expected, atol=1e-5) and torch.allclose(chunked, expected, atol=1e-5)
    with pytest.raises(RuntimeError, match="depend on the image"):
        model.encode_text()


@pytest.mark.parametrize("host", sorted(HOSTS))
@pytest.mark.parametrize("shift", [False, True])
def test_context_states_equal_every_class_states(clip_model, host, shift):
    model = _model(host, clip_model)
    learner = model.prompt_learner
    image = torch.randn(3, 3, 32, 32)
    logits, ctx, states = model.forward_with_states(image, shift=shift)
    pos = torch.arange(1, 1 + learner.n_ctx) - int(shift)
    with torch.no_grad():
        assert torch.allclose(logits, model(image), atol=1e-5)
        if host == "MaPLe":
            assert ctx is learner.ctx and states.shape == ctx.shape == (2, 64)
            prompts = learner.text_prompts()
            full = [stock_states(clip_model, prompts.full()[0], prompts.deep, prompts.deep_start)]  # [C, L, d]
            states = states.unsqueeze(0)
        else:
            assert ctx.shape == states.shape == (3, 4, 64)
            full = [stock_states(clip_model, p) for p in learner.conditional_text_prompts(ctx).full()]
        for b, per_class in enumerate(full):
            for c in range(learner.n_cls):
                assert torch.allclose(states[b], per_class[c, pos], atol=1e-5), (b, c)


def _block_inputs(blocks, run) -> list[torch.Tensor]:
    """Inputs [L, N, w] of each block, and the last block's output, while ``run()`` runs."""
    seen: list[torch.Tensor] = []
    hooks = [blk.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach())) for blk in blocks]
    hooks.append(blocks[-1].register_forward_hook(lambda _m, _a, out: seen.append(out.detach())))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_maple_deep_prompts_change_exactly_the_prompted_layers(clip_model):
    deep = _model("MaPLe", clip_model, maple_depth=2)
    shallow = _model("MaPLe", clip_model, maple_depth=1)
    deep.text_encoder.mode = shallow.text_encoder.mode = "full"  # whole blocks at 77 tokens, so the hooks see them
    shallow.prompt_learner.load_state_dict(deep.prompt_learner.state_dict(), strict=False)  # same ctx and proj
    learner = deep.prompt_learner
    image = torch.randn(2, 3, 32, 32)
    n = learner.n_ctx
    text_len, vision_len = learner.tokenized_prompts.shape[1], 1 + (32 // 16) ** 2 + n
    deep_vision = learner.vision_prompts()[1][0]
    towers = (
        (clip_model.transformer.resblocks, lambda m: m.encode_text(), text_len, torch.arange(1, 1 + n),
         learner.deep_text_prompts[0]),
        (clip_model.visual.transformer.resblocks, lambda m: m.encode_image(image), vision_len,
         torch.arange(vision_len - n, vision_len), deep_vision),
    )
    for blocks, run, length, prompted, deep_prompt in towers:
        kept = torch.ones(length, dtype=torch.bool)
        kept[prompted] = False
        a = _block_inputs(blocks, partial(run, deep))  # [input to block 0, input to block 1, output of block 1]
        b = _block_inputs(blocks, partial(run, shallow))
        assert torch.equal(a[0], b[0])  # block 0 sees the same tokens, so its outputs agree ...
        assert torch.equal(a[1][kept], b[1][kept])
        assert torch.allclose(a[1][prompted], deep_prompt.detach().unsqueeze(1).expand(-1, a[1].shape[1], -1))
        assert not torch.allclose(b[1][prompted], a[1][prompted])  # ... except the replaced prompt tokens,
        assert not torch.allclose(a[2], b[2], atol=1e-4)  # so the prompted layer's outputs differ


def test_vision_runner_without_prompts_is_stock_clip(clip_model):
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encode_image_with_prompts(clip_model.visual, image), clip_model.visual(image),
                              atol=1e-5)


@pytest.mark.parametrize("prec", ["fp32", "bf16", "fp16"])
def test_maple_runs_in_every_precision(prec):
    clip_model = build_tiny_clip(seed=2)
    if prec == "fp16":  # Precision maps fp16 to fp32 on the CPU, so cast the model as the clip package does
        import_clip().model.convert_weights(clip_model)
    model = MaPLeCLIP(_cfg(), CLASSNAMES, clip_model)
    image = torch.randn(2, 3, 32, 32, dtype=torch.float16 if prec == "fp16" else torch.float32)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16")
    with autocast:
        logits, ctx, states = model.forward_with_states(image)
        loss = F.cross_entropy(logits.float(), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(states).all()
    for p in model.prompt_learner.parameters():  # fp32 master copies with finite gradients
        assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all()
    model.eval()
    with torch.no_grad(), autocast:
        plain = model(image)
        model.cache_text_features()  # MaPLe's text does not depend on the image: cached for evaluation
        assert model._text_cache is not None
        assert torch.equal(model(image), plain)


@pytest.mark.parametrize("host,lr", [("CoCoOp", 0.5), ("MaPLe", 0.01)])  # MaPLe's tiny random ViT wants a small lr
def test_host_trains_and_loss_falls(clip_model, host, lr):
    model = _model(host, clip_model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("prompt_learner."))
    optim = torch.optim.SGD(model.prompt_learner.parameters(), lr=lr, momentum=0.9)
    torch.manual_seed(1)
    image, label = torch.randn(8, 3, 32, 32), torch.arange(8) % len(CLASSNAMES)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(image), label)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_checkpoint_loads_for_new_classes(clip_model, host):
    base = _model(host, clip_model).prompt_learner
    state = base.state_dict()
    assert not any(k.startswith(("token_", "tokenized")) for k in state)  # nothing class-dependent
    new = HOSTS[host](_cfg(), NEW_CLASSNAMES, clip_model).prompt_learner
    new.load_state_dict(state, strict=True)
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in state.items())


def test_maple_rejects_a_resnet_backbone():
    rn = build_tiny_clip(vision_layers=(1, 1, 1, 1), vision_width=64, image_resolution=64)
    with pytest.raises(ValueError, match="MaPLe needs a ViT backbone"):
        MaPLeCLIP(_cfg(), CLASSNAMES, rn)


# --- trainers on a real (tiny) Fashion-MNIST folder ---------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=4, train_per_class=6, test_per_class=3)
    return root


def _trainer_cfg(name, data_root, clip_file, out, **opts) -> CN:
    cfg = _cfg(**{"TRAINER.NAME": name, "DATASET.NAME": "FashionMNIST", "DATASET.ROOT": str(data_root),
                  "MODEL.BACKBONE.NAME": str(clip_file), "OUTPUT_DIR": str(out), "TRAINER.COCOOP.PREC": "fp32",
                  "TRAINER.MAPLE.PREC": "fp32", "DATALOADER.TRAIN_X.BATCH_SIZE": 4, "USE_CUDA": False,
                  **dict(zip(TINY_OPTS[::2], TINY_OPTS[1::2])), **opts})
    cfg.freeze()
    return cfg


@pytest.mark.parametrize("name", ["CoCoOp", "MaPLe", "PLPP_CoCoOp", "PLPP_MaPLe"])
def test_trainer_step_logs_every_term(tmp_path, data_root, tiny_clip_file, name):
    trainer = build_trainer(_trainer_cfg(name, data_root, tiny_clip_file, tmp_path))
    assert trainer.get_model_names() == ["prompt_learner"]
    trainer.batch_idx, trainer.num_batches = 0, 2
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    expected = {"loss", "loss_ce", "acc"} | ({"loss_ppl", "loss_ippl", "perplexity"} if "PLPP" in name else set())
    assert set(summary) == expected and all(torch.isfinite(torch.tensor(v)) for v in summary.values())
    w = trainer.cfg.TRAINER.PLPP
    total = summary["loss_ce"] + w.PPL_WEIGHT * summary.get("loss_ppl", 0) + w.IPPL_WEIGHT * summary.get("loss_ippl", 0)
    assert summary["loss"] == pytest.approx(total, rel=1e-4)


def test_zeroshot_clip_uses_the_dataset_template(tmp_path, data_root, tiny_clip_file):
    trainer = build_trainer(_trainer_cfg("ZeroshotCLIP", data_root, tiny_clip_file, tmp_path))
    assert trainer.get_model_names() == []
    clip_model = load_clip(str(tiny_clip_file))
    names = trainer.dm.dataset.classnames
    with torch.no_grad():
        ref = clip_model.encode_text(tokenize([f"a photo of a {c}." for c in names]))
    assert torch.allclose(trainer.text_features, ref / ref.norm(dim=-1, keepdim=True), atol=1e-5)
    assert 0.0 <= trainer.test() <= 100.0
    trainer.load_model(str(tmp_path / "any-folder"))  # nothing registered: --model-dir is ignored
    with pytest.raises(RuntimeError, match="ZeroshotCLIP is evaluation-only: use --eval-only"):
        trainer.train()
    ensemble = build_trainer(_trainer_cfg("ZeroshotCLIP2", data_root, tiny_clip_file, tmp_path / "zs2"))
    assert ensemble.templates() == IMAGENET_TEMPLATES_SELECT + ["a photo of a {}."]


def _yaml(path: Path) -> CN:
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_file(str(path))
    return cfg


def test_host_configs_load_and_plpp_configs_match_their_host():
    root = REPO / "configs" / "trainers"
    for host in ("CoCoOp", "MaPLe", "PLPP_CoCoOp", "PLPP_MaPLe"):
        files = sorted((root / host).glob("*.yaml"))
        assert files, host
        for path in files:
            cfg = _yaml(path)
            backbone = "data/proxy-world/proxy-clip.pt" if path.stem == "proxy" else "ViT-B/16"  # docs/PROXY.md
            assert cfg.MODEL.BACKBONE.NAME == backbone and cfg.OPTIM.NAME == "sgd"
            if host.startswith("PLPP_"):
                assert cfg == _yaml(root / host[5:] / path.name), path
    cocoop = _yaml(root / "CoCoOp" / "vit_b16_c4_ep10_batch1_ctxv1.yaml")
    assert (cocoop.DATALOADER.TRAIN_X.BATCH_SIZE, cocoop.OPTIM.LR, cocoop.OPTIM.MAX_EPOCH) == (1, 0.002, 10)
    assert (cocoop.TRAINER.COCOOP.N_CTX, cocoop.TRAINER.COCOOP.CTX_INIT) == (4, "a photo of a")
    xd = _yaml(root / "MaPLe" / "vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml")
    assert (xd.TRAINER.MAPLE.PROMPT_DEPTH, xd.OPTIM.LR, xd.OPTIM.MAX_EPOCH) == (3, 0.0026, 2)
    for name in ("CoCoOp", "MaPLe", "ZeroshotCLIP", "ZeroshotCLIP2", "PLPP_CoCoOp", "PLPP_MaPLe"):
        assert name in TRAINER_REGISTRY


# --- train.py end to end ------------------------------------------------------------------------------

def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "train.py", *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)


def _cli(trainer, config, data_root, clip_file, out, *extra, flags=()) -> list[str]:
    return train_args(data_root, clip_file, out, trainer=trainer, config=config, flags=flags,
                      opts=("OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base",
                            *extra))


@pytest.mark.parametrize("trainer,config,extra,keys", [
    ("PLPP_CoCoOp", "configs/trainers/PLPP_CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", (),
     {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias"}),
    ("PLPP_MaPLe", "configs/trainers/PLPP_MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", ("TRAINER.MAPLE.PROMPT_DEPTH", "2"),
     {"ctx", "proj.weight", "proj.bias", "deep_text_prompts.0", "deep_projections.0.weight",
      "deep_projections.0.bias"}),
])
def test_train_py_runs_each_host(tmp_path, data_root, tiny_clip_file, trainer, config, extra, keys):
    out = tmp_path / trainer
    res = _run(_cli(trainer, config, data_root, tiny_clip_file, out, *extra))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert re.search(r"epoch \[1/1\] batch \[\d+/\d+\] .* loss_ce .* loss_ppl .* loss_ippl .* perplexity .* acc", log)
    assert "Finish training" in log and "* total: 6" in log  # 2 base classes x 3 test images
    state = torch.load(out / "prompt_learner" / "model.pth.tar-1", weights_only=True)
    assert set(state["state_dict"]) == keys


def test_train_py_zeroshot_eval_only_needs_no_model_dir(tmp_path, data_root, tiny_clip_file):
    out = tmp_path / "zs"
    res = _run(_cli("ZeroshotCLIP", "configs/trainers/CoOp/vit_b16_ep50.yaml", data_root, tiny_clip_file, out,
                    flags=("--eval-only",)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "* total: 6" in (out / "log.txt").read_text()
    assert json.loads((out / "results.json").read_text())["eval_only"] is True
