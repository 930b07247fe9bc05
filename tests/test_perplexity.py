"""Tests for plpp.perplexity against an independent, naive full-[N, V] reference."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from plpp.perplexity import default_chunk_size, nearest_words, perplexity_losses

torch.set_num_threads(1)

V, D, M = 500, 32, 4


def make_inputs(
    lead: tuple[int, ...], seed: int = 0, vocab: int = V, dim: int = D, m: int = M
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random prompts/hidden ``[*lead, m, dim]`` and embedding ``[vocab, dim]``."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randn(*lead, m, dim, generator=g)
    hidden = torch.randn(*lead, m, dim, generator=g)
    embedding = torch.randn(vocab, dim, generator=g) * 0.5
    return prompts, hidden, embedding


def naive_losses(
    prompts: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    topk: int,
    temperature: float,
    hard: bool = False,
) -> dict[str, torch.Tensor]:
    """Straightforward per-row reference: builds the full [N, V] matrices, loops over rows."""
    d = embedding.shape[1]
    p = prompts.float().reshape(-1, d)
    h = hidden.float().reshape(-1, d)
    e = embedding.float()
    sim_all = F.cosine_similarity(p[:, None, :], e[None, :, :], dim=-1)  # [N, V]
    logp_all = torch.log_softmax(h @ e.t(), dim=-1)  # [N, V]
    k = 1 if hard else topk
    ppl_terms, ippl_terms, ce_terms = [], [], []
    for i in range(p.shape[0]):
        order = torch.sort(sim_all[i], descending=True).indices
        idx = order[:k]
        if hard:
            q = torch.ones(1)
            log_q = torch.zeros(1) + 0.0 * sim_all[i, idx]  # keep a graph, as the module does
        else:
            scaled = sim_all[i, idx] / temperature
            log_q = scaled - torch.logsumexp(scaled, dim=0)
            q = torch.exp(log_q)
        logp = logp_all[i, idx]
        z_k = (h[i] @ e.t())[idx]
        p_hat = torch.exp(z_k - torch.logsumexp(z_k, dim=0))
        ppl_terms.append(-(q.detach() * logp).sum())
        ippl_terms.append(-(p_hat.detach() * log_q).sum())
        ce_terms.append(-logp_all[i, order[0]].detach())
    return {
        "ppl": torch.stack(ppl_terms).mean(),
        "ippl": torch.stack(ippl_terms).mean(),
        "perplexity": torch.exp(torch.stack(ce_terms).mean()),
    }


LEADS = [(), (3,), (3, 2)]


def _assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@pytest.mark.parametrize("lead", LEADS, ids=["MxD", "BxMxD", "CxBxMxD"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("topk", [1, 5, 20])
def test_soft_matches_naive(lead: tuple[int, ...], temperature: float, topk: int) -> None:
    prompts, hidden, embedding = make_inputs(lead, seed=topk)
    out = perplexity_losses(prompts, hidden, embedding, topk=topk, temperature=temperature)
    ref = naive_losses(prompts, hidden, embedding, topk, temperature)
    assert set(out) == {"ppl", "ippl", "perplexity"}
    for key in out:
        assert out[key].dtype == torch.float32 and out[key].dim() == 0
        _assert_close(out[key], ref[key])
    if topk == 1:
        assert out["ippl"].item() == 0.0


@pytest.mark.parametrize("lead", LEADS, ids=["MxD", "BxMxD", "CxBxMxD"])
def test_hard_matches_naive_and_identities(lead: tuple[int, ...]) -> None:
    prompts, hidden, embedding = make_inputs(lead, seed=7)
    out = perplexity_losses(prompts, hidden, embedding, topk=20, temperature=0.5, hard=True)
    ref = naive_losses(prompts, hidden, embedding, 20, 0.5, hard=True)
    for key in out:
        _assert_close(out[key], ref[key])
    assert out["ippl"].item() == 0.0
    _assert_close(out["ppl"], torch.log(out["perplexity"]), atol=1e-6, rtol=1e-6)
    # hard == soft with k = 1 (softmax over one element is 1)
    k1 = perplexity_losses(prompts, hidden, embedding, topk=1, temperature=3.0)
    for key in out:
        _assert_close(out[key], k1[key], atol=0.0, rtol=0.0)


def _grads(out: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    loss = out["ppl"] + 0.7 * out["ippl"]
    return list(torch.autograd.grad(loss, inputs))


@pytest.mark.parametrize("hard", [False, True])
def test_chunked_equals_unchunked_values_and_grads(hard: bool) -> None:
    prompts, hidden, embedding = make_inputs((3, 2), seed=11)  # N = 24 rows
    results = []
    for chunk in (None, 24, 5, 1):  # 5 splits 24 rows unevenly (5+5+5+5+4)
        p = prompts.clone().requires_grad_()
        h = hidden.clone().requires_grad_()
        e = embedding.clone().requires_grad_()
        out = perplexity_losses(p, h, e, topk=5, temperature=0.7, hard=hard, chunk_size=chunk)
        results.append(({k: v.detach() for k, v in out.items()}, _grads(out, [p, h, e])))
    # gradients against the naive reference too
    p = prompts.clone().requires_grad_()
    h = hidden.clone().requires_grad_()
    e = embedding.clone().requires_grad_()
    ref = naive_losses(p, h, e, 5, 0.7, hard=hard)
    ref_vals = {k: v.detach() for k, v in ref.items()}
    ref_grads = _grads(ref, [p, h, e])
    for vals, grads in results:
        for key in vals:
            _assert_close(vals[key], results[0][0][key], atol=1e-6, rtol=1e-6)
            _assert_close(vals[key], ref_vals[key])
        for g, g0, gr in zip(grads, results[0][1], ref_grads, strict=True):
            _assert_close(g, g0, atol=1e-6, rtol=1e-5)
            _assert_close(g, gr)


def _is_zero(g: torch.Tensor | None) -> bool:
    return g is None or bool((g == 0).all())


def test_gradient_routing() -> None:
    prompts, hidden, embedding = make_inputs((2,), seed=3)
    # hidden independent of prompts (e.g. detached): L_ppl has no path to prompts
    p = prompts.clone().requires_grad_()
    h = hidden.clone().requires_grad_()
    out = perplexity_losses(p, h, embedding, topk=5, temperature=1.0)
    g_ppl_p, g_ppl_h = torch.autograd.grad(out["ppl"], [p, h], allow_unused=True, retain_graph=True)
    g_ippl_p, g_ippl_h = torch.autograd.grad(out["ippl"], [p, h], allow_unused=True)
    assert _is_zero(g_ppl_p)
    assert g_ppl_h is not None and g_ppl_h.abs().sum() > 0
    assert _is_zero(g_ippl_h)
    assert g_ippl_p is not None and g_ippl_p.abs().sum() > 0
    assert out["perplexity"].grad_fn is None and not out["perplexity"].requires_grad

    # prompts feed hidden through a differentiable map: L_ppl reaches prompts only via hidden
    w = torch.randn(D, D, generator=torch.Generator().manual_seed(5)) / math.sqrt(D)
    p_enc = prompts.clone().requires_grad_()  # path through the "encoder"
    p_cos = prompts.clone().requires_grad_()  # path through the cosine teacher
    h2 = torch.tanh(p_enc @ w)
    out = perplexity_losses(p_cos, h2, embedding, topk=5, temperature=1.0)
    g_enc, g_cos = torch.autograd.grad(out["ppl"], [p_enc, p_cos], allow_unused=True, retain_graph=True)
    assert g_enc is not None and g_enc.abs().sum() > 0
    assert _is_zero(g_cos)
    g_enc, g_cos = torch.autograd.grad(out["ippl"], [p_enc, p_cos], allow_unused=True)
    assert _is_zero(g_enc)
    assert g_cos is not None and g_cos.abs().sum() > 0

    # the same tensor used for both: total gradient = encoder path (ppl) + cosine path (ippl)
    p_same = prompts.clone().requires_grad_()
    out = perplexity_losses(p_same, torch.tanh(p_same @ w), embedding, topk=5, temperature=1.0)
    (g_total,) = torch.autograd.grad(out["ppl"] + out["ippl"], [p_same])
    p_a = prompts.clone().requires_grad_()
    p_b = prompts.clone().requires_grad_()
    out = perplexity_losses(p_b, torch.tanh(p_a @ w), embedding, topk=5, temperature=1.0)
    g_a, g_b = torch.autograd.grad(out["ppl"] + out["ippl"], [p_a, p_b])
    _assert_close(g_total, g_a + g_b, atol=1e-6, rtol=1e-5)


def test_no_grad_and_frozen_inputs() -> None:
    prompts, hidden, embedding = make_inputs((2,), seed=4)
    ref = perplexity_losses(prompts, hidden, embedding, topk=5, temperature=1.0)
    assert all(not v.requires_grad for v in ref.values())
    p = prompts.clone().requires_grad_()
    with torch.no_grad():
        out = perplexity_losses(p, hidden, embedding, topk=5, temperature=1.0)
    assert all(not v.requires_grad for v in out.values())
    for key in out:
        _assert_close(out[key], ref[key], atol=0.0, rtol=0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_fp32(dtype: torch.dtype) -> None:
    prompts, hidden, embedding = make_inputs((2,), seed=9)
    p_lo, h_lo, e_lo = prompts.to(dtype), hidden.to(dtype), embedding.to(dtype)
    p_lo.requires_grad_()
    out = perplexity_losses(p_lo, h_lo, e_lo, topk=5, temperature=0.5)
    ref = naive_losses(p_lo.detach().float(), h_lo.float(), e_lo.float(), 5, 0.5)
    for key in out:
        assert out[key].dtype == torch.float32 and out[key].dim() == 0
        _assert_close(out[key], ref[key])
    (g,) = torch.autograd.grad(out["ippl"], [p_lo])
    assert g.dtype == dtype and torch.isfinite(g.float()).all()
    # mixed dtypes are fine too (all cast to fp32 inside)
    mixed = perplexity_losses(prompts, h_lo, e_lo, topk=5, temperature=0.5)
    assert mixed["ppl"].dtype == torch.float32


def test_prompt_on_vocabulary_has_low_perplexity() -> None:
    g = torch.Generator().manual_seed(1)
    embedding = F.normalize(torch.randn(V, D, generator=g), dim=-1)
    ids = torch.tensor([3, 141, 59, 265])
    prompts = embedding[ids] * 2.0  # cosine is scale-free
    hidden = embedding[ids] * 50.0  # LM head logits 50 * cos: the own token dominates
    out = perplexity_losses(prompts, hidden, embedding, topk=1, temperature=1.0)
    assert 1.0 <= out["perplexity"].item() < 1.01
    idx, sim = nearest_words(prompts, embedding, k=3)
    assert torch.equal(idx[:, 0], ids)
    _assert_close(sim[:, 0], torch.ones(4))
    # a zero hidden state makes the LM head uniform: perplexity is exactly V
    far = perplexity_losses(prompts, torch.zeros_like(hidden), embedding, topk=1, temperature=1.0)
    _assert_close(far["perplexity"], torch.tensor(float(V)), rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("lead", [(), (3, 2)])
def test_nearest_words_matches_naive(lead: tuple[int, ...]) -> None:
    prompts, _, embedding = make_inputs(lead, seed=2)
    idx, sim = nearest_words(prompts.half(), embedding, k=4, chunk_size=3)
    sim_all = F.cosine_similarity(prompts.half().float()[..., None, :], embedding, dim=-1)  # [..., M, V]
    ref_sim, ref_idx = torch.sort(sim_all, dim=-1, descending=True)
    assert idx.shape == (*lead, M, 4) and sim.shape == (*lead, M, 4)
    assert idx.dtype == torch.int64 and sim.dtype == torch.float32
    assert torch.equal(idx, ref_idx[..., :4])
    _assert_close(sim, ref_sim[..., :4])


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor numel produced by any aten op (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(
        self, func: Callable[..., object], types: object, args: tuple = (), kwargs: dict | None = None
    ) -> object:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_materializes_full_matrix() -> None:
    """No op output (forward or backward) is larger than one [chunk, V] block, and backward
    keeps no [chunk, V] block alive (activation checkpointing)."""
    n_lead, vocab, dim, chunk = 16, 4000, 8, 3  # N = 64 rows; [N, V] = 256k, [chunk, V] = 12k
    prompts, hidden, embedding = make_inputs((n_lead,), seed=6, vocab=vocab, dim=dim)
    p = prompts.clone().requires_grad_()
    h = hidden.clone().requires_grad_()
    n_rows = p.numel() // dim
    with _LargestOutput() as mode:
        out = perplexity_losses(p, h, embedding, topk=5, temperature=1.0, chunk_size=chunk)
        (out["ppl"] + out["ippl"]).backward()
    bound = max(chunk * vocab, vocab * dim)
    assert mode.largest <= bound < n_rows * vocab
    # backward memory: distinct storages kept for backward are O(V*d + N*d), not O(N*V)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        perplexity_losses(p, h, embedding, topk=5, temperature=1.0, chunk_size=chunk)
    saved_floats = sum(saved.values()) // 4
    assert saved_floats <= 2 * vocab * dim + 4 * n_rows * dim + 1024 < n_rows * vocab // 2
    # the probe itself works: the naive reference does build [N, V]
    with _LargestOutput() as mode:
        naive_losses(prompts, hidden, embedding, 5, 1.0)
    assert mode.largest >= n_rows * vocab
    # values still right with these tiny chunks
    ref = naive_losses(prompts, hidden, embedding, 5, 1.0)
    for key in out:
        _assert_close(out[key].detach(), ref[key])


def test_default_chunk_size() -> None:
    assert default_chunk_size(49408) == 84
    assert default_chunk_size(2**23) == 1
    assert default_chunk_size(V) * V <= 2**22


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden": torch.zeros(4, D + 1)}, "hidden"),
        ({"hidden": torch.zeros(2, 4, D)}, "hidden"),
        ({"prompts": torch.zeros(4, D + 1), "hidden": torch.zeros(4, D + 1)}, r"embedding\.shape"),
        ({"embedding": torch.zeros(V)}, "embedding"),
        ({"prompts": torch.zeros(0, D), "hidden": torch.zeros(0, D)}, "empty"),
        ({"prompts": torch.zeros(D), "hidden": torch.zeros(D)}, "prompts"),
        ({"embedding": torch.zeros(0, D)}, "embedding"),
        ({"topk": 0}, "topk"),
        ({"topk": V + 1}, "topk"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_inputs_raise(kwargs: dict, match: str) -> None:
    args = {
        "prompts": torch.zeros(4, D),
        "hidden": torch.zeros(4, D),
        "embedding": torch.randn(V, D),
        "topk": 5,
        "temperature": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        perplexity_losses(args.pop("prompts"), args.pop("hidden"), args.pop("embedding"), **args)


def test_bad_types_raise() -> None:
    p = torch.zeros(4, D)
    e = torch.randn(V, D)
    with pytest.raises(TypeError, match="topk"):
        perplexity_losses(p, p, e, topk=2.5, temperature=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hidden"):
        perplexity_losses(p, p.numpy(), e, topk=2, temperature=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        nearest_words(p, e, k=0)
    with pytest.raises(ValueError, match=r"embedding\.shape"):
        nearest_words(torch.zeros(4, D + 1), e)
