"""The fast text pass is the upstream 77-token pass: features, PLPP terms, gradients and predictions.

The fast pass (a shared prefix run once with its keys/values cached, prompts truncated at their EOT in
length buckets, the last block at the EOT only) uses the stock blocks' own weights; these tests hold it
to the full pass (``TEXT_PASS full``: the ``clip`` package's blocks at all 77 tokens) and to an
independent reference (``tests/text_reference.py``), for every host and prompt layout.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from plpp.clip_utils import import_clip, tokenize
from plpp.engine import get_cfg_default
from plpp.perplexity import perplexity_losses
from plpp.text import TextEncoder, TextLayout, TextPrompts, text_layout
from plpp.text.plan import BUCKET_OVERHEAD_TOKENS, make_plan, split_lengths
from plpp.trainers import extend_cfg
from plpp.trainers.base import check_clip_cfg
from plpp.trainers.cocoop import CoCoOpCLIP
from plpp.trainers.coop import CustomCLIP
from plpp.trainers.ivlp import IVLPCLIP
from plpp.trainers.kgcoop import KgCoOpCLIP
from plpp.trainers.maple import MaPLeCLIP
from plpp.trainers.prograd import ProGradCLIP
from plpp.trainers.promptsrc import PromptSRCCLIP
from plpp.trainers.zsclip import IMAGENET_TEMPLATES_SELECT, zeroshot_text_features
from tests.conftest import build_tiny_clip
from tests.text_reference import stock_features

FILL = " ".join(["x"] * 70)  # with 4 tokens before it: [SOS] 4 + 70 + "." + [EOT] = 77, the whole context
FILL_SHORT = " ".join(["x"] * 60)
CLASSNAMES = ["cat", "golden retriever", "hot air balloon", FILL, "axolotl", "sea_lion"]  # 1, 2, 3, 70, 4, 2 tokens
HOSTS = {"CoOp": CustomCLIP, "CoCoOp": CoCoOpCLIP, "MaPLe": MaPLeCLIP, "IVLP": IVLPCLIP, "PromptSRC": PromptSRCCLIP,
         "KgCoOp": KgCoOpCLIP, "ProGrad": ProGradCLIP}
CASES = {  # host, TRAINER overrides
    "coop": ("CoOp", {}),
    "coop_csc": ("CoOp", {"COOP.CSC": True}),
    "coop_middle": ("CoOp", {"COOP.CLASS_TOKEN_POSITION": "middle"}),
    "coop_front_csc": ("CoOp", {"COOP.CLASS_TOKEN_POSITION": "front", "COOP.CSC": True}),
    "cocoop": ("CoCoOp", {}),
    "maple": ("MaPLe", {}),
    "ivlp": ("IVLP", {}),
    "promptsrc": ("PromptSRC", {}),
    "kgcoop": ("KgCoOp", {}),
    "prograd": ("ProGrad", {}),
}
SHARED_PREFIX_CASES = ("coop", "cocoop", "maple", "ivlp", "promptsrc", "kgcoop", "prograd")


@pytest.fixture(autouse=True)
def many_buckets(monkeypatch):
    """Buckets cost nothing here, so every distinct prompt length gets one (up to 8): the bucketing and
    reordering run in every test of this module (elsewhere these tiny prompts fit one bucket)."""
    monkeypatch.setitem(BUCKET_OVERHEAD_TOKENS, "cpu", 0)


@pytest.fixture(scope="module")
def clip_model():
    """Two heads (width 128) and three text layers, so heads, caching and a middle block are all exercised."""
    return build_tiny_clip(seed=4, transformer_width=128, transformer_heads=2, transformer_layers=3, vision_layers=3,
                           vision_width=128)


def _cfg(**trainer) -> CN:
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.TRAINER.COOP.N_CTX = 4
    cfg.TRAINER.COCOOP.N_CTX = 4
    cfg.TRAINER.COCOOP.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 3
    for key in ("IVLP", "PROMPTSRC"):
        cfg.TRAINER[key].PROMPT_DEPTH_TEXT = cfg.TRAINER[key].PROMPT_DEPTH_VISION = 3
    cfg.merge_from_list([x for k, v in trainer.items() for x in (f"TRAINER.{k}", v)])
    return cfg


def _model(case: str, clip_model, classnames=CLASSNAMES):
    host, opts = CASES[case]
    if host == "PromptSRC":  # its frozen references' longer templates cannot hold a context-filling name
        classnames = [FILL_SHORT if name == FILL else name for name in classnames]
    torch.manual_seed(0)
    model = HOSTS[host](_cfg(**opts), classnames, clip_model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("prompt_learner."))
    with torch.no_grad():  # move away from the init so every parameter matters
        for p in model.prompt_learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _step(model, image, label, shift: bool, autocast) -> dict[str, torch.Tensor]:
    """A PLPP training step's outputs: logits, the PLPP terms, and the gradient of every learnable tensor."""
    model.zero_grad(set_to_none=True)
    with autocast():
        logits, ctx, states = model.forward_with_states(image, shift=shift)
        terms = perplexity_losses(ctx, states, model.token_embedding.weight, topk=5, temperature=0.5)
        loss = F.cross_entropy(logits.float(), label) + 0.5 * terms["ppl"] + 0.5 * terms["ippl"]
    loss.backward()
    out = {"logits": logits.detach().float(), "ppl": terms["ppl"].detach(), "ippl": terms["ippl"].detach()}
    for name, p in model.prompt_learner.named_parameters():
        assert p.grad is not None, name
        out[f"grad {name}"] = p.grad.clone()
    return out


def _close(got: torch.Tensor, want: torch.Tensor, rel: float, key: str) -> None:
    """Equal within ``rel`` of the reference's scale (gradients have entries near zero)."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * scale, msg=key)


def _worst(got: dict, want: dict) -> float:
    """The largest difference over all outputs, relative to each reference output's scale."""
    return max(((got[k] - want[k]).abs().max() / want[k].abs().max()).item() for k in want)


AUTOCAST = {"bf16": torch.bfloat16, "amp": torch.float16}  # PREC bf16 and amp, as autocast on this CPU


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("prec", ["fp32", "bf16", "amp"])
def test_fast_pass_equals_full_pass(clip_model, case, prec):
    gen = torch.Generator().manual_seed(1)
    image, label = torch.randn(3, 3, 32, 32, generator=gen), torch.tensor([3, 0, 5])
    runs = [("full", "fp32"), ("fast", "fp32")] if prec == "fp32" else [("full", "fp32"), ("full", prec),
                                                                        ("fast", prec)]
    results = {}
    for mode, run_prec in runs:
        model = _model(case, clip_model)
        model.text_encoder.mode = mode
        autocast = contextlib.nullcontext if run_prec == "fp32" else \
            (lambda p=run_prec: torch.autocast("cpu", dtype=AUTOCAST[p]))
        results[mode, run_prec] = _step(model, image, label, shift=case == "coop", autocast=autocast)
    full, fast = results["full", prec], results["fast", prec]
    assert full.keys() == fast.keys()
    if prec == "fp32":
        for key in full:
            _close(fast[key], full[key], 1e-5, key)
    else:  # both passes round to 16 bits; the fast one must be as close to fp32 as the full one is
        reference = results["full", "fp32"]
        assert _worst(fast, reference) <= 1.5 * _worst(full, reference) + 1e-3
        assert _worst(fast, full) < 0.1
    layout = model.prompt_learner.layout
    assert max(layout.eot) == 76 or case == "promptsrc"  # one prompt fills the whole context
    assert (layout.shared_len > 0) == (case in SHARED_PREFIX_CASES)
    assert len(model.text_encoder.plan(layout, 1).buckets) == 5  # one per distinct length, reordered


def test_one_block_over_a_cached_prefix_equals_the_stock_block(clip_model):
    """``TextEncoder._block`` (attention run here on the block's own weights) against ``block(x)`` itself."""
    block, encoder = clip_model.transformer.resblocks[1], TextEncoder(clip_model)
    gen = torch.Generator().manual_seed(3)
    p, n = 6, 3
    prefix = torch.randn(1, 1, p, 128, generator=gen)  # [G, 1, P, d]: shared by the n prompts
    tails = torch.randn(1, n, 77 - p, 128, generator=gen)  # [G, n, T, d]
    whole = torch.cat([prefix.expand(-1, n, -1, -1), tails], dim=2)[0]  # [n, 77, d]
    with torch.no_grad():
        want = block(whole.permute(1, 0, 2)).permute(1, 0, 2)  # the stock forward with its own causal mask
        got_prefix, (got,) = encoder._block(block, prefix, [tails], None, None)
        torch.testing.assert_close(got_prefix[0, 0], want[0, :p], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[0], want[:, p:], rtol=1e-5, atol=1e-5)
        queries = torch.tensor([[0, 3], [5, 5], [70, 1]])  # the last block: only these positions
        got_prefix, (picked,) = encoder._block(block, prefix, [tails], torch.tensor([2, 4]), [queries])
        torch.testing.assert_close(got_prefix[0, 0], want[0, [2, 4]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(picked[0], want[torch.arange(n)[:, None], p + queries], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["coop", "coop_middle", "cocoop", "maple"])
def test_fast_pass_equals_the_stock_clip_blocks(clip_model, case):
    """Against the ``clip`` package's blocks run directly (not through ``plpp.text``)."""
    model = _model(case, clip_model)
    learner = model.prompt_learner
    with torch.no_grad():
        if case == "cocoop":
            ctx = learner.conditional_context(model.encode_image(torch.randn(2, 3, 32, 32)))
            got = model.encode_conditional_text(ctx)[0]
            prompts = learner.conditional_text_prompts(ctx).full()
            want = torch.stack([stock_features(clip_model, p, learner.tokenized_prompts) for p in prompts])
        else:
            got = model.encode_text()[0]
            prompts = learner.text_prompts()
            want = stock_features(clip_model, prompts.full()[0], learner.tokenized_prompts, prompts.deep,
                                  prompts.deep_start)
        want = want / want.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fp16_weights_fast_pass_equals_full_pass():
    """``PREC fp16`` (half CLIP weights, fp32 master prompts), here on the CPU where half kernels exist."""
    clip_model = build_tiny_clip(seed=5)
    import_clip().model.convert_weights(clip_model)
    try:
        with torch.no_grad():
            clip_model.encode_text(tokenize(["a cat."]))
    except RuntimeError as exc:
        pytest.skip(f"CPU half kernels missing: {exc}")
    image, label = torch.randn(2, 3, 32, 32, dtype=torch.float16), torch.tensor([1, 3])
    results = {}
    for mode in ("full", "fast"):
        model = _model("coop", clip_model)
        model.text_encoder.mode = mode
        results[mode] = _step(model, image, label, shift=False, autocast=contextlib.nullcontext)
    for key in results["full"]:
        _close(results["fast"][key], results["full"][key], 2e-2, key)


# --- evaluation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["coop", "coop_front_csc", "cocoop", "maple"])
def test_evaluation_predictions_are_identical(clip_model, case):
    images = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    logits = {}
    for mode in ("full", "fast"):
        model = _model(case, clip_model).eval()
        model.text_encoder.mode = mode
        with torch.no_grad():
            model.cache_text_features()  # CoOp and MaPLe: once per evaluation; CoCoOp: per image
            logits[mode] = model(images)
    assert torch.equal(logits["fast"].argmax(dim=1), logits["full"].argmax(dim=1))
    _close(logits["fast"], logits["full"], 1e-5, "logits")


def test_zero_shot_template_ensemble(clip_model):
    names = CLASSNAMES[:3] + ["axolotl", "sea lion"]
    templates = IMAGENET_TEMPLATES_SELECT + ["{} texture."]  # the last shares only [SOS]
    features = {}
    for mode in ("full", "fast"):
        encoder = TextEncoder(clip_model)
        encoder.mode = mode
        features[mode] = zeroshot_text_features(clip_model, names, templates, batch_size=3, encoder=encoder)
    with torch.no_grad():
        per_template = []
        for template in templates:
            feats = clip_model.encode_text(tokenize([template.format(n) for n in names]))
            per_template.append(feats / feats.norm(dim=-1, keepdim=True))
        mean = torch.stack(per_template).mean(0)
    want = mean / mean.norm(dim=-1, keepdim=True)
    for mode, got in features.items():
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=mode)
    assert text_layout(tokenize([templates[0].format(n) for n in names])).shared_len == 5  # [SOS] itap of a


# --- what the fast pass computes -----------------------------------------------------------------------

@pytest.mark.parametrize("case,groups", [("coop", 1), ("cocoop", 3), ("coop_middle", 1)])
def test_the_prefix_runs_once_and_nothing_after_an_eot_runs(clip_model, case, groups):
    model = _model(case, clip_model)
    learner, encoder = model.prompt_learner, model.text_encoder
    shapes = []
    hook = encoder.tower.blocks[0].ln_1.register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape))
    image = torch.randn(groups, 3, 32, 32)
    logits, _, states = model.forward_with_states(image)
    hook.remove()
    layout, plan = learner.layout, encoder.plan(learner.layout, groups)
    shared = layout.shared_len
    if shared:  # one prefix block per group, then each bucket from position P
        assert shapes[0] == (groups, 1, shared, 128) and states.shape[-2:] == (learner.n_ctx, 128)
        shapes = shapes[1:]
    assert [s[1:3] for s in shapes] == [(b.rows.numel(), b.length) for b in plan.buckets]
    assert all(s[0] == groups for s in shapes)
    assert groups * shared + sum(s[0] * s[1] * s[2] for s in shapes) == plan.tokens
    longest = max(e + 1 - shared for e in layout.eot)
    assert plan.longest == longest and plan.tokens < plan.full_tokens
    assert logits.shape == (groups, len(CLASSNAMES))


def test_imagenet_names_compute_a_few_percent_of_the_tokens(monkeypatch):
    """CoOp's 16-token context before ImageNet's 1000 names (torchvision's metadata, no download)."""
    monkeypatch.setitem(BUCKET_OVERHEAD_TOKENS, "cpu", 48)
    torchvision = pytest.importorskip("torchvision")
    names = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    tokens = tokenize([f"{' '.join(['X'] * 16)} {name}." for name in names])
    layout = text_layout(tokens, shared_len=17)
    assert layout.shared_len == 17 and max(layout.eot) == 25
    plan = make_plan(layout, 1, torch.device("cpu"))
    assert 1 < len(plan.buckets) and plan.tokens / plan.full_tokens < 0.06
    assert sum(e + 1 - 17 for e in layout.eot) / len(names) == pytest.approx(3.945)  # tokens per name after [SOS][ctx]


def test_text_layout_shares_only_what_is_identical():
    tokens = tokenize(["a photo of a cat.", "a photo of a dog.", "a photo of an ant."])
    assert text_layout(tokens).shared_len == 4  # [SOS] a photo of
    assert text_layout(tokens, extend=False).shared_len == 0
    assert text_layout(tokens, shared_len=2, extend=False).shared_len == 2
    one = tokenize(["a photo of a cat."])
    assert text_layout(one).shared_len == int(one.argmax()) == 7  # never past the EOT: it runs in the tail
    with pytest.raises(ValueError, match="shared_len 9 must be between 0 and the earliest EOT"):
        TextLayout(9, (7,), 77)


def test_buckets_trade_padding_for_kernels():
    lengths = [3] * 100 + [70]
    assert split_lengths(lengths, groups=1, overhead=48) == [3, 70]  # 370 tokens + 2 buckets, not 7070
    assert split_lengths(lengths, groups=1, overhead=10**6) == [70]  # buckets too dear: one
    assert split_lengths([4, 4, 4], groups=1, overhead=0) == [4]
    assert split_lengths(list(range(1, 21)), groups=1, overhead=0, max_buckets=3)[-1] == 20


def test_wrong_prompts_and_positions_are_refused(clip_model):
    model = _model("coop", clip_model)
    learner, encoder = model.prompt_learner, model.text_encoder
    prompts = learner.text_prompts()
    with pytest.raises(ValueError, match=r"shared tokens must be \[G, 5, d\]"):
        TextPrompts(learner.layout, prompts.shared[:, :3], prompts.rest)
    with pytest.raises(ValueError, match=r"rest tokens must be \[C=6, L-P=72, d\]"):
        TextPrompts(learner.layout, prompts.shared, prompts.rest[:4])
    with pytest.raises(ValueError, match=r"shared states are read inside the shared prefix \(positions 0..4\)"):
        encoder(prompts, torch.tensor([3, 5]))
    with pytest.raises(ValueError, match="per-prompt state positions must lie from the shared prefix's end"):
        encoder(prompts, torch.full((6, 2), 2))


def test_text_pass_key_is_checked_and_described():
    cfg = _cfg(**{"COOP.TEXT_PASS": "quick"})
    with pytest.raises(ValueError, match=r"TRAINER.COOP.TEXT_PASS 'quick' is not valid; choose one of fast, full"):
        check_clip_cfg(cfg, "COOP")
    encoder = _model("coop_middle", build_tiny_clip()).text_encoder
    layout = text_layout(tokenize(["a cat.", "a dog."]), extend=False, note="class token at the middle")
    assert encoder.describe(layout).startswith("fast: no shared prefix (class token at the middle), 2 prompts")
    encoder.mode = "full"
    assert encoder.describe(layout) == ("full: every prompt through all 77 tokens (the reference computation), "
                                        "154 tokens per step")
