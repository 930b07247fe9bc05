"""CoOp's prompt layout and the PLPP term: shared and per-class paths equal a naive per-class computation."""

from __future__ import annotations

import pytest
import torch
from yacs.config import CfgNode as CN

from plpp.clip_utils import tokenize
from plpp.engine import get_cfg_default
from plpp.perplexity import perplexity_losses
from plpp.text import TextEncoder, TextPrompts, text_layout
from plpp.trainers import extend_cfg
from plpp.trainers.coop import CustomCLIP, PromptLearner
from tests.conftest import build_tiny_clip
from tests.text_reference import stock_states

CLASSNAMES = ["cat", "golden retriever", "sea_lion", "fire truck engine", "dog"]


def _cfg(**coop) -> CN:
    cfg = get_cfg_default()
    extend_cfg(cfg)
    for k, v in coop.items():
        setattr(cfg.TRAINER.COOP, k, v)
    return cfg


@pytest.fixture(scope="module")
def clip_model():
    return build_tiny_clip(seed=1)


def _reference_prompts(learner: PromptLearner) -> torch.Tensor:
    """CoOp's layout built by plain concatenation, class by class."""
    out = []
    for i, n in enumerate(learner.name_lens):
        ctx = learner.ctx[i] if learner.csc else learner.ctx
        pre, suf = learner.token_prefix[i : i + 1], learner.token_suffix[i : i + 1]
        cls, rest = suf[:, :n], suf[:, n:]
        pos = learner.class_token_position
        if pos == "end":
            parts = [pre, ctx[None], cls, rest]
        elif pos == "front":
            parts = [pre, cls, ctx[None], rest]
        else:
            h = learner.n_ctx // 2
            parts = [pre, ctx[None, :h], cls, ctx[None, h:], rest]
        out.append(torch.cat(parts, dim=1))
    return torch.cat(out, dim=0)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_prompt_layout_matches_coop(clip_model, position, csc):
    learner = PromptLearner(_cfg(N_CTX=4, CSC=csc, CLASS_TOKEN_POSITION=position).TRAINER.COOP, CLASSNAMES,
                            clip_model)
    assert torch.equal(learner(), _reference_prompts(learner))


def test_ctx_init_uses_word_embeddings(clip_model):
    learner = PromptLearner(_cfg(CTX_INIT="a photo of a").TRAINER.COOP, CLASSNAMES, clip_model)
    assert learner.n_ctx == 4
    ids = tokenize("a photo of a")[0, 1:5]
    assert torch.allclose(learner.ctx, clip_model.token_embedding.weight[ids])


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_text_encoder_matches_clip_encode_text(clip_model, mode):
    tokens = tokenize(["a photo of a cat.", "a dog", "a photo of a golden retriever."])
    enc = TextEncoder(clip_model)
    enc.mode = mode
    layout = text_layout(tokens)
    assert layout.shared_len == 2  # [SOS] a
    with torch.no_grad():
        out = enc(TextPrompts.from_full(layout, clip_model.token_embedding(tokens)), torch.tensor([0, 1]))
        assert torch.allclose(out.features[0], clip_model.encode_text(tokens), atol=1e-5)
    assert out.states.shape == (1, 2, clip_model.ln_final.weight.shape[0])


def _naive_per_class(model: CustomCLIP, clip_model, shift: bool, kw: dict) -> dict:
    """Per class: its own context states from the full text pass, the loss, then the mean over classes."""
    learner = model.prompt_learner
    states = stock_states(clip_model, learner())  # every class's states at all 77 positions
    totals = {"ppl": 0.0, "ippl": 0.0}
    logs = []
    for c in range(learner.n_cls):
        pos = learner.ctx_positions[c] - (1 if shift else 0)
        ctx = learner.ctx[c] if learner.csc else learner.ctx
        out = perplexity_losses(ctx, states[c, pos], model.token_embedding.weight, chunk_size=10**9, **kw)
        totals["ppl"] = totals["ppl"] + out["ppl"]
        totals["ippl"] = totals["ippl"] + out["ippl"]
        logs.append(torch.log(out["perplexity"]))
    n = learner.n_cls
    return {"ppl": totals["ppl"] / n, "ippl": totals["ippl"] / n, "perplexity": torch.exp(torch.stack(logs).mean())}


@pytest.mark.parametrize("position,csc", [("end", False), ("end", True), ("front", False), ("middle", True)])
@pytest.mark.parametrize("shift", [False, True])
def test_fast_paths_equal_naive_per_class(clip_model, position, csc, shift):
    torch.manual_seed(0)
    cfg = _cfg(N_CTX=4, CSC=csc, CLASS_TOKEN_POSITION=position)
    model = CustomCLIP(cfg, CLASSNAMES, clip_model)
    with torch.no_grad():
        model.prompt_learner.ctx.normal_(0, 0.05)
    kw = dict(topk=5, temperature=0.5)
    image = torch.randn(2, 3, 32, 32)
    _, ctx, states = model.forward_with_states(image, shift=shift)
    assert ctx.dim() == (2 if (position == "end" and not csc) else 3)
    fast = perplexity_losses(ctx, states, model.token_embedding.weight, chunk_size=3, **kw)
    naive = _naive_per_class(model, clip_model, shift, kw)
    for key in ("ppl", "ippl", "perplexity"):
        assert torch.allclose(fast[key], naive[key], atol=1e-5, rtol=1e-5), key
    param = model.prompt_learner.ctx
    g_fast = torch.autograd.grad(fast["ppl"] + fast["ippl"], param)[0]
    g_naive = torch.autograd.grad(naive["ppl"] + naive["ippl"], param)[0]
    assert torch.allclose(g_fast, g_naive, atol=1e-6, rtol=1e-4)


def test_checkpoint_of_base_classes_loads_for_new_classes(clip_model):
    cfg = _cfg(N_CTX=4)
    base = PromptLearner(cfg.TRAINER.COOP, CLASSNAMES[:3], clip_model)
    new = PromptLearner(cfg.TRAINER.COOP, CLASSNAMES[3:] + ["zebra", "ant"], clip_model)
    sd = base.state_dict()
    assert list(sd) == ["ctx"]  # class-dependent tensors are never saved
    new.load_state_dict(sd, strict=True)
    assert torch.equal(new.ctx, base.ctx)


def test_cached_text_features_give_identical_logits(clip_model):
    model = CustomCLIP(_cfg(N_CTX=4), CLASSNAMES, clip_model).eval()
    image = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain = model(image)
        model.cache_text_features()
        cached = model(image)
    assert torch.equal(plain, cached)
    model.clear_text_cache()
    assert model._text_cache is None
