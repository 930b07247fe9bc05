"""IVLP, PromptSRC, KgCoOp, ProGrad, linear-probe CLIP and their PLPP versions, on tiny random CLIPs.

Each host's extra term is checked against a naive formula on random tensors; the trainers train on a
tiny Fashion-MNIST, ``--eval-only`` reproduces their accuracy, and prompt checkpoints load for another
class set; the PLPP versions with both PLPP weights at 0 equal their host bit for bit.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import plpp.datasets  # noqa: F401  (registers FashionMNIST)
from plpp.clip_utils import import_clip, tokenize
from plpp.engine import TRAINER_REGISTRY, build_trainer, get_cfg_default, set_random_seed
from plpp.engine.checkpoint import CheckpointError
from plpp.trainers import extend_cfg
from plpp.trainers.frozen_clip import PROMPTSRC_TEMPLATES, template_text_features
from plpp.trainers.ivlp import IVLPCLIP
from plpp.trainers.kgcoop import knowledge_distance
from plpp.trainers.linear_probe import fit_logistic_regression, search_c
from plpp.trainers.prograd import ProGrad, ProGradCLIP, prograd_project, zero_shot_term
from plpp.trainers.promptsrc import PromptSRC, gpa_weights, self_regulating_terms
from tests.conftest import PYTHON, REPO, TINY_OPTS, build_tiny_clip, subprocess_env, train_args, write_fashion_mnist
from tests.test_scripts import commands, ok, run_script, script_env

HOSTS = ["IVLP", "PromptSRC", "KgCoOp", "ProGrad"]
TRAINERS = HOSTS + ["LinearProbeCLIP"] + [f"PLPP_{h}" for h in HOSTS]
CLASSNAMES = ["cat", "golden retriever", "sea_lion", "fire truck"]


def _cfg(**opts) -> CN:
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_list([str(x) for kv in opts.items() for x in kv])
    return cfg


# --- each host's extra term against a naive formula --------------------------------------------------


def test_promptsrc_terms_equal_naive_formulas():
    torch.manual_seed(0)
    b, c, d = 3, 5, 8
    img, zs_img = F.normalize(torch.randn(b, d), dim=1), F.normalize(torch.randn(b, d), dim=1)
    txt, zs_txt = F.normalize(torch.randn(c, d), dim=1), F.normalize(torch.randn(c, d), dim=1)
    logits, zs_logits = 10 * torch.randn(b, c), 10 * torch.randn(b, c)
    terms = self_regulating_terms(img, txt, logits, zs_img, zs_txt, zs_logits)
    p, q = logits.softmax(1), zs_logits.softmax(1)
    kl = sum(q[i, j] * (q[i, j].log() - p[i, j].log()) for i in range(b) for j in range(c)) / (b * c)
    assert torch.allclose(terms["scl_text"], (txt - zs_txt).abs().sum() / (c * d))
    assert torch.allclose(terms["scl_image"], (img - zs_img).abs().sum() / (b * d))
    assert torch.allclose(terms["scl_logits"], kl, atol=1e-6)


def test_kgcoop_distance_equals_naive_formula():
    torch.manual_seed(1)
    t, h = torch.randn(6, 10), torch.randn(6, 10)
    cos = [float(t[i] @ h[i] / (t[i].norm() * h[i].norm())) for i in range(6)]
    assert knowledge_distance(t, h).item() == pytest.approx(1 - sum(cos) / 6, abs=1e-6)
    assert knowledge_distance(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_prograd_projection_never_conflicts_and_keeps_agreeing_gradients():
    gen = torch.Generator().manual_seed(2)
    conflicts = 0
    for _ in range(200):
        g, z = torch.randn(4, 7, generator=gen), torch.randn(4, 7, generator=gen)
        unit = z / z.norm()
        for lam in (1.0, 2.0):
            out = prograd_project(g, z, lam)
            assert (out * z).sum() >= -1e-5 * g.norm() * z.norm()  # never against the zero-shot gradient
        out = prograd_project(g, z, 1.0)
        if (g * z).sum() >= 0:
            assert out is g  # they agree: the plain gradient
        else:
            conflicts += 1
            assert torch.allclose(out, g - (g * unit).sum() * unit, atol=1e-6)
            assert torch.allclose(prograd_project(g, z, 0.5), g - 0.5 * (g * unit).sum() * unit, atol=1e-6)
    assert 50 < conflicts < 150
    g = torch.randn(5)
    assert prograd_project(g, torch.zeros(5)) is g


def test_prograd_zero_shot_term_is_tempered_cross_entropy():
    torch.manual_seed(3)
    z, zs = torch.randn(4, 6), torch.randn(4, 6)
    for temperature in (1.0, 2.0):
        q, log_p = (zs / temperature).softmax(1), (z / temperature).log_softmax(1)
        naive = sum(-(q[i] * log_p[i]).sum() for i in range(4)) / 4 * temperature**2
        assert zero_shot_term(z, zs, temperature).item() == pytest.approx(naive.item(), rel=1e-6)


def test_gpa_weights_are_normalised_gaussian_densities():
    pdf = [math.exp(-0.5 * ((e - 15) / 1) ** 2) / math.sqrt(2 * math.pi) for e in range(1, 21)]
    assert gpa_weights(20, 15, 1) == pytest.approx([v / sum(pdf) for v in pdf], rel=1e-12)
    far = gpa_weights(2, 100, 1)  # densities underflow to 0/0; log-space weights stay finite
    assert far == pytest.approx([0.0, 1.0])
    with pytest.raises(ValueError, match="GPA_STD must be > 0"):
        gpa_weights(5, 3, 0)


def _reference_fit(x, y, k, c):
    """Newton's method on ½‖W‖² + C Σ CE (binary: one sigmoid weight vector); pseudo-inverse steps keep the
    unpenalised softmax biases summing to zero, as a fit started at zero does."""
    x = x.double()
    rows, d = (1 if k == 2 else k), x.shape[1]

    def objective(theta):
        w, b = theta[: rows * d].view(rows, d), theta[rows * d :]
        z = x @ w.t() + b
        ce = (F.binary_cross_entropy_with_logits(z[:, 0], y.double(), reduction="sum") if k == 2
              else F.cross_entropy(z, y, reduction="sum"))
        return 0.5 * w.pow(2).sum() + c * ce

    theta = torch.zeros(rows * (d + 1), dtype=torch.float64)
    for _ in range(50):
        grad = torch.autograd.functional.jacobian(objective, theta)
        theta = theta - torch.linalg.pinv(torch.autograd.functional.hessian(objective, theta)) @ grad
    assert torch.autograd.functional.jacobian(objective, theta).abs().max() < 1e-9  # the reference converged
    return theta[: rows * d].view(rows, d), theta[rows * d :]


@pytest.mark.parametrize("k", [3, 2])
def test_logistic_regression_matches_a_plain_fit(k):
    gen = torch.Generator().manual_seed(4)
    y = torch.arange(30) % k
    x = torch.randn(30, 4, generator=gen) + 1.5 * F.one_hot(y, 4).float()
    weight, bias = fit_logistic_regression(x, y, k, c=0.3)
    ref_w, ref_b = _reference_fit(x, y, k, 0.3)
    assert torch.allclose(weight, ref_w, atol=1e-5) and torch.allclose(bias, ref_b, atol=1e-5)


def test_logistic_regression_matches_scikit_learn_when_installed():
    linear_model = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(5)
    y = torch.arange(40) % 4
    x = torch.randn(40, 6, generator=gen) + 2 * F.one_hot(y, 6).float()
    ref = linear_model.LogisticRegression(C=0.1, max_iter=10000, tol=1e-10).fit(x.double().numpy(), y.numpy())
    weight, bias = fit_logistic_regression(x, y, 4, c=0.1)
    assert torch.allclose(weight, torch.from_numpy(ref.coef_), atol=1e-4)
    assert torch.allclose(bias, torch.from_numpy(ref.intercept_), atol=1e-4)


def test_c_search_follows_lpclip():
    def peaked(c):  # validation accuracy falls with the distance of log10(C) from 1.3
        return -abs(math.log10(c) - 1.3), f"model@{c:g}"

    c, model, history = search_c(peaked, steps=4)
    # grid peak 1e2 -> [1e1, 1e3]: keep 1e1 (right moves to 1e2), keep 1e1 (-> 10^1.5), keep 10^1.5 (left
    # moves to 10^1.25), keep 10^1.25 (the last round's better end)
    assert c == pytest.approx(10**1.25) and model == f"model@{c:g}"
    assert [h[0] for h in history[7:9]] == pytest.approx([10.0, 1000.0]) and len(history) == 7 + 2 * 4
    c, _, _ = search_c(lambda c: (50.0, None), steps=8)  # ties: the grid's first C, then always the left end
    assert c == pytest.approx(1e5)


# --- models ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_model():
    """Text width 64, vision width 128: prompt widths must be read from the model."""
    return build_tiny_clip(seed=1, vision_width=128)


def _ivlp(clip_model, depth_vision=2, classnames=CLASSNAMES, **opts):
    torch.manual_seed(0)
    cfg = _cfg(**{"TRAINER.IVLP.PROMPT_DEPTH_TEXT": 2, "TRAINER.IVLP.PROMPT_DEPTH_VISION": depth_vision, **opts})
    return IVLPCLIP(cfg, classnames, clip_model)


def test_ivlp_prompts_are_independent_and_replace_their_layers(clip_model):
    model = _ivlp(clip_model)
    learner = model.prompt_learner
    assert learner.ctx.shape == (2, 64) and [p.shape for p in learner.deep_text_prompts] == [(2, 64)]
    assert learner.vision_ctx.shape == (2, 128) and [p.shape for p in learner.deep_vision_prompts] == [(2, 128)]
    assert not hasattr(learner, "proj")  # no coupling between the towers
    image = torch.randn(2, 3, 32, 32)
    seen = []
    hook = clip_model.visual.transformer.resblocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model.encode_image(image)
    hook.remove()
    assert torch.equal(seen[0][-2:], learner.deep_vision_prompts[0].unsqueeze(1).expand(-1, 2, -1))
    seen.clear()
    hook = clip_model.transformer.resblocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    model.text_encoder.mode = "full"  # the stock blocks' own forward (the fast pass equals it: test_text_pass)
    with torch.no_grad():
        model.encode_text()
    hook.remove()
    assert torch.equal(seen[0][1:3], learner.deep_text_prompts[0].unsqueeze(1).expand(-1, 4, -1))
    language_only = _ivlp(clip_model, depth_vision=0)
    assert language_only.prompt_learner.vision_ctx is None
    with torch.no_grad():
        stock = F.normalize(clip_model.visual(image), dim=-1)
        assert torch.allclose(language_only.encode_image(image), stock, atol=1e-6)


def test_ivlp_refuses_settings_that_cannot_work(clip_model):
    with pytest.raises(ValueError, match="PROMPT_DEPTH_TEXT 3 must be between 1 and 2"):
        IVLPCLIP(_cfg(**{"TRAINER.IVLP.PROMPT_DEPTH_TEXT": 3, "TRAINER.IVLP.PROMPT_DEPTH_VISION": 1}), CLASSNAMES,
                 clip_model)
    with pytest.raises(ValueError, match="N_CTX_TEXT 5 is more than the 4 tokens"):
        _ivlp(clip_model, **{"TRAINER.IVLP.N_CTX_TEXT": 5})
    with pytest.raises(ValueError, match="N_CTX_VISION must be at least 1"):
        _ivlp(clip_model, **{"TRAINER.IVLP.N_CTX_VISION": 0})
    rn = build_tiny_clip(vision_layers=(1, 1, 1, 1), vision_width=64, image_resolution=64)
    with pytest.raises(ValueError, match="needs a ViT backbone"):
        _ivlp(rn)
    _ivlp(rn, depth_vision=0)  # text prompts only: any backbone


def test_prograd_context_follows_upstream_word_count(clip_model):
    cfg = _cfg(**{"DATASET.NAME": "OxfordPets", "TRAINER.COOP.N_CTX": 16, "TRAINER.COOP.CTX_INIT": "template"})
    learner = ProGradCLIP(cfg, CLASSNAMES, clip_model).prompt_learner
    text = "a type of pet, a photo of a"  # 8 words, 9 tokens: the 9th ("a") stays fixed text
    ids = tokenize(text)[0]
    assert torch.equal(learner.ctx[:8], torch.zeros(8, 64))
    assert torch.allclose(learner.ctx[8:], clip_model.token_embedding.weight[ids[1:9]])
    assert torch.equal(learner.tokenized_prompts[0], tokenize("X X X X X X X X " + text + " cat.")[0])
    assert torch.allclose(learner.token_suffix[0, 0], clip_model.token_embedding.weight[ids[9]])
    with pytest.raises(ValueError, match="N_CTX 4 is less than the 8 words"):
        ProGradCLIP(_cfg(**{"DATASET.NAME": "OxfordPets", "TRAINER.COOP.N_CTX": 4,
                            "TRAINER.COOP.CTX_INIT": "template"}), CLASSNAMES, clip_model)


def test_frozen_text_features_are_computed_in_fp32(clip_model):
    names = ["cat", "sea_lion"]
    with torch.no_grad():
        raw = [clip_model.encode_text(tokenize([t.format(n.replace("_", " ")) for n in names]))
               for t in PROMPTSRC_TEMPLATES[:3]]
    ensemble = template_text_features(clip_model, names, PROMPTSRC_TEMPLATES[:3])
    mean_raw = template_text_features(clip_model, names, PROMPTSRC_TEMPLATES[:3], normalize_each=False)
    assert torch.allclose(ensemble, F.normalize(torch.stack([F.normalize(r, dim=-1) for r in raw]).mean(0), dim=-1),
                          atol=1e-6)
    assert torch.allclose(mean_raw, F.normalize(torch.stack(raw).mean(0), dim=-1), atol=1e-6)
    half = build_tiny_clip(seed=1, vision_width=128)
    import_clip().model.convert_weights(half)  # an fp16 backbone: a temporary fp32 copy computes them
    from_half = template_text_features(half, names, PROMPTSRC_TEMPLATES[:1])
    assert from_half.dtype == torch.float32 and half.text_projection.dtype == torch.float16
    assert torch.allclose(from_half, F.normalize(raw[0], dim=-1), atol=2e-3)


# --- trainers on a real (tiny) Fashion-MNIST folder --------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """5 classes, so base (3 classes) and new (2) differ in size."""
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root, n_classes=5, train_per_class=6, test_per_class=3)
    return root


def _trainer_cfg(name, data_root, clip_file, out, **opts) -> CN:
    tiny = dict(zip(TINY_OPTS[::2], TINY_OPTS[1::2]))
    cfg = _cfg(**{"TRAINER.NAME": name, "DATASET.NAME": "FashionMNIST", "DATASET.ROOT": data_root,
                  "MODEL.BACKBONE.NAME": clip_file, "OUTPUT_DIR": out, "USE_CUDA": False, "SEED": 1,
                  "DATALOADER.TRAIN_X.BATCH_SIZE": 4, "DATASET.NUM_SHOTS": 4, "OPTIM.NAME": "sgd", "OPTIM.LR": 0.01,
                  "OPTIM.MAX_EPOCH": 2, "TRAINER.COOP.N_CTX": 4, "TRAINER.IVLP.PROMPT_DEPTH_TEXT": 2,
                  "TRAINER.IVLP.PROMPT_DEPTH_VISION": 2, "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 2,
                  "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION": 2, "TRAINER.PROMPTSRC.GPA_MEAN": 2,
                  "TRAINER.LINEAR_PROBE.MAX_ITER": 50, "TRAINER.LINEAR_PROBE.SEARCH_STEPS": 2, **tiny, **opts})
    cfg.freeze()
    return cfg


def _build(cfg: CN):
    """The trainer of ``cfg``, seeded as ``train.py`` seeds it."""
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def _learner_state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer._models[trainer.get_model_names()[0]].state_dict().items()}


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_trains_and_eval_only_reproduces(tmp_path, data_root, tiny_clip_file, name):
    is_probe = name == "LinearProbeCLIP"
    classes = "all" if is_probe else "base"
    out = tmp_path / "train"
    trainer = _build(_trainer_cfg(name, data_root, tiny_clip_file, out, **{"DATASET.SUBSAMPLE_CLASSES": classes}))
    trainer.train()
    trained = json.loads((out / "results.json").read_text())
    assert trained["eval_only"] is False and trained["total"] == (15 if is_probe else 9)
    model_dir = out / trainer.get_model_names()[0]
    epoch = 1 if is_probe else 2
    state = torch.load(model_dir / f"model.pth.tar-{epoch}", weights_only=True)["state_dict"]
    assert not any(k.startswith(("token_", "tokenized", "frozen", "hand_crafted", "zero_shot")) for k in state)

    again = build_trainer(_trainer_cfg(name, data_root, tiny_clip_file, tmp_path / "eval",
                                       **{"DATASET.SUBSAMPLE_CLASSES": classes}))
    again.load_model(str(out), epoch=epoch)
    assert again.test() == trained["accuracy"]

    new = build_trainer(_trainer_cfg(name, data_root, tiny_clip_file, tmp_path / "new",
                                     **{"DATASET.SUBSAMPLE_CLASSES": "new"}))
    if is_probe:
        with pytest.raises(CheckpointError, match="evaluates only that class set"):
            new.load_model(str(out), epoch=epoch)
        return
    new.load_model(str(out), epoch=epoch)  # a base-trained prompt on the 2 new classes
    assert all(torch.equal(v, new._models["prompt_learner"].state_dict()[k]) for k, v in state.items())
    assert 0.0 <= new.test() <= 100.0
    assert json.loads((tmp_path / "new" / "results.json").read_text())["total"] == 6


@pytest.mark.parametrize("host", HOSTS)
def test_plpp_with_zero_weights_equals_its_host(tmp_path, data_root, tiny_clip_file, host):
    zero = {"TRAINER.PLPP.PPL_WEIGHT": 0.0, "TRAINER.PLPP.IPPL_WEIGHT": 0.0, "OPTIM.MAX_EPOCH": 1}
    states = []
    for name in (host, f"PLPP_{host}"):
        trainer = _build(_trainer_cfg(name, data_root, tiny_clip_file, tmp_path / name, **zero))
        trainer.train()
        states.append(_learner_state(trainer))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0]), host


class _RecordingPromptSRC(PromptSRC):
    """PromptSRC that keeps a copy of the prompts at the end of each epoch, before GPA touches them."""

    def after_epoch(self) -> None:
        self.seen = getattr(self, "seen", []) + [_learner_state(self)]
        super().after_epoch()


def test_gpa_is_the_gaussian_weighted_mean_of_the_epoch_prompts(tmp_path, data_root, tiny_clip_file):
    cfg = _trainer_cfg("PromptSRC", data_root, tiny_clip_file, tmp_path, **{"OPTIM.MAX_EPOCH": 3,
                                                                             "TRAINER.PROMPTSRC.GPA_MEAN": 2})
    trainer = _RecordingPromptSRC(cfg)
    trainer.train()
    weights = gpa_weights(3, 2, 1)
    final = _learner_state(trainer)
    for name, _ in trainer.model.prompt_learner.named_parameters():
        expected = sum(w * seen[name] for w, seen in zip(weights, trainer.seen))
        assert torch.allclose(final[name], expected, atol=1e-7), name
        assert not torch.allclose(final[name], trainer.seen[-1][name])  # not just the last epoch's prompts


def test_promptsrc_resume_is_bit_identical(tmp_path, data_root, tiny_clip_file):
    three = {"OPTIM.MAX_EPOCH": 3}
    straight = _build(_trainer_cfg("PromptSRC", data_root, tiny_clip_file, tmp_path / "a", **three))
    straight.train()
    first = _build(_trainer_cfg("PromptSRC", data_root, tiny_clip_file, tmp_path / "b", **three))
    first.before_train()
    for epoch in range(2):  # a run stopped after two of its three epochs
        first.epoch = epoch
        first.before_epoch()
        first.run_epoch()
        first.after_epoch()
    first.close_writer()
    resumed = _build(_trainer_cfg("PromptSRC", data_root, tiny_clip_file, tmp_path / "b", **three))
    resumed.train()
    assert resumed.start_epoch == 2
    a, b = _learner_state(straight), _learner_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _RecordingProGrad(ProGrad):
    def before_optimizer_step(self, params):
        guides = dict(self._zero_shot_grads)
        before = {id(p): p.grad.clone() for p in params if p.grad is not None}
        super().before_optimizer_step(params)
        self.steps = getattr(self, "steps", []) + [(before[id(p)], guides[id(p)], p.grad.clone()) for p in params]


def test_prograd_step_never_conflicts_with_the_zero_shot_gradient(tmp_path, data_root, tiny_clip_file):
    cfg = _trainer_cfg("ProGrad", data_root, tiny_clip_file, tmp_path, **{"OPTIM.MAX_EPOCH": 1})
    trainer = _RecordingProGrad(cfg)
    trainer.train()
    assert len(trainer.steps) == 5  # 5 classes x 4 shots, batches of 4
    for before, guide, after in trainer.steps:
        assert (after * guide).sum() >= -1e-6 * after.norm() * guide.norm()
        if (before * guide).sum() >= 0:
            assert torch.equal(before, after)
        else:
            assert not torch.equal(before, after)
    # with a gradient scaler (amp) the step is the same: both gradients are scaled alike
    batch = next(iter(trainer.train_loader_x))
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**10)):
        torch.manual_seed(0)  # the same initial context
        fresh = ProGrad(cfg)
        fresh.scaler = scaler
        fresh.batch_idx, fresh.num_batches = 0, 2
        fresh.forward_backward(batch)
        results.append(fresh.model.prompt_learner.ctx.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_linear_probe_refuses_to_tune_on_the_test_set(tmp_path, data_root, tiny_clip_file):
    trainer = build_trainer(_trainer_cfg("LinearProbeCLIP", data_root, tiny_clip_file, tmp_path))
    trainer.dm.dataset._val = list(trainer.dm.dataset.test)  # ImageNet's layout: val is the test set
    with pytest.raises(ValueError, match="C would be tuned on the test set"):
        trainer.run_epoch()


def test_bad_settings_are_refused_by_name(tmp_path, data_root, tiny_clip_file):
    cases = [
        ("IVLP", {"TRAINER.IVLP.PROMPT_DEPTH_TEXT": 0}, "TRAINER.IVLP.PROMPT_DEPTH_TEXT must be at least 1"),
        ("PromptSRC", {"TRAINER.PROMPTSRC.GPA_STD": 0}, "TRAINER.PROMPTSRC.GPA_STD must be > 0"),
        ("KgCoOp", {"TRAINER.COOP.W": -1.0}, "TRAINER.COOP.W"),
        ("ProGrad", {"LOSS.NAME": "focal"}, "LOSS.NAME 'focal' is not a ProGrad loss"),
        ("ProGrad", {"LOSS.LAMBDA": -0.5}, "LOSS.LAMBDA"),
        ("LinearProbeCLIP", {"TRAINER.LINEAR_PROBE.MAX_ITER": 0}, "MAX_ITER >= 1"),
    ]
    for name, opts, message in cases:
        with pytest.raises(ValueError, match=message):
            build_trainer(_trainer_cfg(name, data_root, tiny_clip_file, tmp_path, **opts))


# --- configs, train.py, scripts and tables -----------------------------------------------------------


def _yaml(path: Path) -> CN:
    cfg = _cfg()
    cfg.merge_from_file(str(path))
    return cfg


def test_configs_load_with_upstream_values():
    root = REPO / "configs" / "trainers"
    for host in HOSTS + ["LinearProbeCLIP"]:
        files = sorted((root / host).glob("*.yaml"))
        assert files, host
        for path in files:
            cfg = _yaml(path)
            if (root / f"PLPP_{host}").is_dir():
                assert cfg == _yaml(root / f"PLPP_{host}" / path.name), path
    src = _yaml(root / "PromptSRC" / "vit_b16_c2_ep20_batch4_4+4ctx.yaml")
    node = src.TRAINER.PROMPTSRC
    assert (src.OPTIM.LR, src.OPTIM.MAX_EPOCH, src.DATALOADER.TRAIN_X.BATCH_SIZE) == (0.0025, 20, 4)
    assert (node.N_CTX_TEXT, node.PROMPT_DEPTH_TEXT, node.TEXT_LOSS_WEIGHT, node.IMAGE_LOSS_WEIGHT,
            node.GPA_MEAN, node.GPA_STD) == (4, 9, 25, 10, 15, 1)
    xd = _yaml(root / "PromptSRC" / "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml").TRAINER.PROMPTSRC
    assert (xd.PROMPT_DEPTH_VISION, xd.GPA_MEAN, xd.GPA_STD) == (3, 6, 10)
    few = _yaml(root / "PromptSRC" / "vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml")
    assert (few.OPTIM.MAX_EPOCH, few.TRAINER.PROMPTSRC.GPA_MEAN, few.TRAINER.PROMPTSRC.GPA_STD) == (50, 30, 30)
    ivlp = _yaml(root / "IVLP" / "vit_b16_c2_ep5_batch4_2+2ctx.yaml")
    assert (ivlp.OPTIM.LR, ivlp.TRAINER.IVLP.N_CTX_VISION, ivlp.TRAINER.IVLP.PROMPT_DEPTH_VISION) == (0.0035, 2, 12)
    kg = _yaml(root / "KgCoOp" / "vit_b16_ep100_ctxv1.yaml")
    assert (kg.DATALOADER.TRAIN_X.BATCH_SIZE, kg.OPTIM.MAX_EPOCH, kg.TRAINER.COOP.W) == (128, 100, 8.0)
    pg = _yaml(root / "ProGrad" / "rn50_ep50.yaml")
    assert (pg.LOSS.NAME, pg.LOSS.T, pg.LOSS.LAMBDA, pg.TRAINER.COOP.CTX_INIT) == ("prograd", 1.0, 1.0, "template")
    for name in TRAINERS:
        assert name in TRAINER_REGISTRY


def _train_py(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "train.py", *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)


def test_train_py_plpp_promptsrc_then_eval_only(tmp_path, data_root, tiny_clip_file):
    opts = {"OPTIM.MAX_EPOCH": 1, "DATASET.NUM_SHOTS": 2, "DATALOADER.TRAIN_X.BATCH_SIZE": 4,
            "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 2, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION": 2}
    config = "configs/trainers/PLPP_PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
    out = tmp_path / "train"
    res = _train_py(train_args(data_root, tiny_clip_file, out, trainer="PLPP_PromptSRC", config=config,
                               opts=[str(x) for kv in opts.items() for x in kv]))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "loss_scl_text" in log and "loss_scl_logits" in log and "loss_ppl" in log and "GPA: using" in log
    evaluator = _build(_trainer_cfg("PLPP_PromptSRC", data_root, tiny_clip_file, tmp_path / "eval", **opts))
    evaluator.load_model(str(out), epoch=1)
    assert evaluator.test() == json.loads((out / "results.json").read_text())["accuracy"]


def test_scripts_know_the_new_trainers(tmp_path):
    env = script_env(tmp_path, tmp_path / "out", SEEDS="1")
    expected = {
        ("main.sh", "dtd", "16", "PromptSRC", "-"): ("PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml",
                                                      "TRAINER.PROMPTSRC.GPA_MEAN 45 TRAINER.PROMPTSRC.GPA_STD 5"),
        ("main.sh", "caltech101", "16", "PLPP_PromptSRC", "-"): (
            "PLPP_PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml", "DATASET.NUM_SHOTS 16"),
        ("main.sh", "dtd", "4", "ProGrad", "-"): ("ProGrad/vit_b16_ep100.yaml", "/nctx4_cscFalse_ctpend/seed1 "),
        ("main.sh", "dtd", "2", "LinearProbeCLIP", "-"): ("LinearProbeCLIP/vit_b16.yaml", "/vit_b16_2shots/seed1 "),
        ("base2new_train.sh", "dtd", "1", "IVLP"): ("IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
                                                   "SUBSAMPLE_CLASSES base"),
        ("base2new_train.sh", "dtd", "1", "PLPP_KgCoOp"): ("PLPP_KgCoOp/vit_b16_ep100_ctxv1.yaml", "/shots_16/"),
        ("base2new_train.sh", "imagenet", "1", "ProGrad"): ("ProGrad/vit_b16_ep50.yaml", "/shots_16/ProGrad/"),
        ("xd_train.sh", "1", "PLPP_PromptSRC"): ("PLPP_PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml",
                                                 "DATASET.NUM_SHOTS 16"),
    }
    for (script, *args), (config, part) in expected.items():
        lines = commands(ok(run_script(script, "--dry-run", *args, env=env)))
        assert len(lines) == 1 and f"--config-file configs/trainers/{config} " in lines[0], (script, args, lines)
        assert part in lines[0], (script, args, lines[0])
    line = commands(ok(run_script("main.sh", "--dry-run", "caltech101", "16", "PromptSRC", "-", env=env)))[0]
    assert "GPA_MEAN" not in line  # 30/30 from the config file on the other datasets
    for script, *args in (("base2new_train.sh", "dtd", "1", "LinearProbeCLIP"),
                          ("xd_train.sh", "1", "LinearProbeCLIP")):
        res = run_script(script, *args, env=env)
        assert res.returncode != 0 and "run it with scripts/plpp/main.sh (few-shot)" in res.stderr


def test_results_table_reads_a_linear_probe_run(tmp_path, data_root, tiny_clip_file, capsys):
    from plpp.results.cli import main as plpp_results

    run = tmp_path / "out" / "fashion_mnist" / "LinearProbeCLIP" / "vit_b16_4shots" / "seed1"
    trainer = _build(_trainer_cfg("LinearProbeCLIP", data_root, tiny_clip_file, run))
    trainer.train()
    accuracy = json.loads((run / "results.json").read_text())["accuracy"]
    assert plpp_results(["fewshot", str(tmp_path / "out"), "--format", "json", "--seeds", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["trainer"] == "LinearProbeCLIP"
    assert summary["datasets"]["fashion_mnist"]["4"]["mean"] == pytest.approx(accuracy)
