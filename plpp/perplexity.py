"""Perplexity and inverted-perplexity losses of a learnable prompt (PLPP).

The method (see ``METHOD.md``) reads the frozen CLIP model at the prompt twice:

* a *teacher* from the token-embedding layer: cosine similarity ``s_i = cos(p_i, E)``
  between prompt vector ``p_i`` and every row of ``E`` (``[V, d]``); its top-k gives
  the label set ``K_i`` and the soft label ``q_i = softmax(s_{i,K_i} / tau)``;
* a *student* from a training-free LM head tied to the embedding: ``z_i = E h_i``
  where ``h_i`` is the text encoder's state at prompt position ``i``;
  ``log p_i = log_softmax(z_i)`` over the full vocabulary.

``L_ppl`` is the cross-entropy of ``p_i`` against the (detached) soft label, and
``L_ippl`` swaps the roles: the LM head restricted to ``K_i`` and renormalized
(detached) teaches ``log q_i``.

Memory: ``V`` is ~49k for CLIP, and the rows ``N`` (prompt positions times any
per-image / per-class leading dims) can be many thousands, so an ``[N, V]``
tensor is never built. Rows are processed in chunks; each chunk's
``[chunk, V]`` work is wrapped in non-reentrant activation checkpointing when a
gradient is needed, so backward only keeps the chunk inputs and recomputes the
``[chunk, V]`` matrices one chunk at a time.

This module imports only torch and the standard library.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "default_chunk_size", "nearest_words", "perplexity_losses"]

#: Target number of elements of one ``[chunk, V]`` matrix (2**22 fp32 = 16 MiB).
DEFAULT_CHUNK_ELEMENTS: int = 2**22

# Norm floor for cosine similarity (same value as ``F.cosine_similarity``'s default eps).
_COS_EPS: float = 1e-8


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk so that a ``[chunk, vocab_size]`` matrix has about 2**22 elements.

    For CLIP (V = 49408) this is 84 rows. Always at least 1.
    """
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, int(vocab_size)))


def _check_chunk_size(chunk_size: int | None, vocab_size: int) -> int:
    """Validate ``chunk_size`` (``None`` -> default) and return it as an int."""
    if chunk_size is None:
        return default_chunk_size(vocab_size)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None for the default), got {chunk_size}")
    return chunk_size


def _check_embedding(embedding: torch.Tensor) -> None:
    """Validate the ``[V, d]`` token-embedding weight."""
    if not isinstance(embedding, torch.Tensor):
        raise TypeError(f"embedding must be a torch.Tensor, got {type(embedding).__name__}")
    if embedding.dim() != 2:
        raise ValueError(f"embedding must have shape [V, d], got {tuple(embedding.shape)}")
    if embedding.shape[0] == 0 or embedding.shape[1] == 0:
        raise ValueError(f"embedding is empty: shape {tuple(embedding.shape)}")


def _chunk_losses(
    p: torch.Tensor,
    h: torch.Tensor,
    e: torch.Tensor,
    e_inv_norm: torch.Tensor,
    k: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row losses for one chunk of rows.

    The full ``[n, V]`` cosine matrix only selects the label set (no gradient); the similarities
    that carry gradient are recomputed on the ``k`` selected words alone, so the backward pass of
    the cosine branch costs ``O(n·k·d)`` instead of ``O(n·V·d)``.

    Args:
        p: ``[n, d]`` fp32 prompt vectors (not normalized).
        h: ``[n, d]`` fp32 text-encoder states at the same positions.
        e: ``[V, d]`` fp32 embedding (the LM head is ``e.T``).
        e_inv_norm: ``[V]`` fp32 inverse row norms of ``e`` (cosine similarity without a normalized copy).
        k: size of the label set per row.
        temperature: softmax temperature of the teacher.

    Returns:
        ``(ppl_rows, ippl_rows, hard_ce_rows)``, each ``[n]`` fp32. ``hard_ce_rows`` is
        detached (it only feeds the logged perplexity).
    """
    p_unit = F.normalize(p, dim=-1, eps=_COS_EPS)
    with torch.no_grad():
        sim = (p_unit @ e.T).mul_(e_inv_norm)  # [n, V] cosine similarities, for selection only
        top_idx = sim.topk(k, dim=-1, largest=True, sorted=True).indices  # [n, k], column 0 = argmax
        del sim
    e_k = e[top_idx]  # [n, k, d] the selected words
    top_sim = torch.einsum("nd,nkd->nk", p_unit, e_k) * e_inv_norm[top_idx]  # cosine on K_i, with grad

    logits = h @ e.T  # [n, V] LM-head logits
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [n, 1]
    logits_k = logits.gather(-1, top_idx)  # [n, k]
    del logits
    log_p_k = logits_k - lse  # log p_{i,v}, v in K_i (full-vocabulary normalization)

    log_q = torch.log_softmax(top_sim / temperature, dim=-1)  # [n, k] teacher on K_i
    q = log_q.exp().detach()
    p_hat = torch.softmax(logits_k, dim=-1).detach()  # LM head renormalized on K_i

    ppl_rows = -(q * log_p_k).sum(-1)
    ippl_rows = -(p_hat * log_q).sum(-1)
    hard_ce_rows = -log_p_k[:, 0].detach()
    return ppl_rows, ippl_rows, hard_ce_rows


def perplexity_losses(
    prompts: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    *,
    topk: int,
    temperature: float,
    hard: bool = False,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """PLPP perplexity (``L_ppl``) and inverted-perplexity (``L_ippl``) losses.

    Args:
        prompts: ``[..., M, d]`` learnable prompt vectors (any leading dims: none,
            per image, per class, ...).
        hidden: ``[..., M, d]`` text-encoder states aligned with ``prompts`` (same shape).
        embedding: ``[V, d]`` CLIP token-embedding weight; the LM head is its transpose.
        topk: size ``k`` of the label set ``K_i`` (top-k cosine similarities), ``1 <= k <= V``.
            Ignored (treated as 1) when ``hard`` is True.
        temperature: ``tau > 0`` of the soft label ``q_i = softmax(s_{i,K_i} / tau)``.
        hard: use the one-hot label at ``argmax s_i`` (equivalent to ``k = 1``); then
            ``L_ippl`` is exactly 0 and ``L_ppl == log(perplexity)``.
        chunk_size: rows per chunk; ``None`` picks ``default_chunk_size(V)``
            (``chunk * V ~= 2**22``).

    Returns:
        ``{"ppl": L_ppl, "ippl": L_ippl, "perplexity": exp(mean hard-label CE)}``, each a
        0-dim fp32 tensor. ``L_ppl`` reaches the inputs only through ``hidden`` (and
        ``embedding`` via the LM head); ``L_ippl`` only through the cosine similarities
        (``prompts``, ``embedding``); ``perplexity`` is detached. All math is fp32
        whatever the input dtype. The label set uses the top-k of ``s_i``; ties are
        broken by ``torch.topk``.

    Raises:
        TypeError: a non-tensor input or a non-int ``topk`` / ``chunk_size``.
        ValueError: mismatched or empty shapes, ``topk`` outside ``[1, V]``,
            ``temperature <= 0`` (or not finite), ``chunk_size < 1``.
    """
    for name, t in (("prompts", prompts), ("hidden", hidden)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _check_embedding(embedding)
    if prompts.dim() < 2:
        raise ValueError(f"prompts must have shape [..., M, d], got {tuple(prompts.shape)}")
    if prompts.shape != hidden.shape:
        raise ValueError(
            f"prompts and hidden must have the same shape, got prompts {tuple(prompts.shape)} "
            f"and hidden {tuple(hidden.shape)}"
        )
    vocab, dim = embedding.shape
    if prompts.shape[-1] != dim:
        raise ValueError(
            f"last dim of prompts/hidden ({prompts.shape[-1]}) must equal embedding.shape[1] ({dim}); "
            f"prompts {tuple(prompts.shape)}, embedding {tuple(embedding.shape)}"
        )
    if prompts.numel() == 0:
        raise ValueError(f"prompts/hidden are empty: shape {tuple(prompts.shape)}")
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise TypeError(f"topk must be an int, got {type(topk).__name__}")
    if not 1 <= topk <= vocab:
        raise ValueError(f"topk must be in [1, V={vocab}] (V = embedding.shape[0]), got {topk}")
    try:
        tau = float(temperature)
    except (TypeError, ValueError) as err:
        raise TypeError(f"temperature must be a real number, got {type(temperature).__name__}") from err
    if not (tau > 0.0 and math.isfinite(tau)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    chunk = _check_chunk_size(chunk_size, vocab)
    k = 1 if hard else topk

    p = prompts.reshape(-1, dim).float()  # [N, d]
    h = hidden.reshape(-1, dim).float()  # [N, d]
    e = embedding.float()  # [V, d]
    e_inv_norm = e.norm(dim=-1).clamp_min(_COS_EPS).reciprocal()  # [V], once; a function of e
    n_rows = p.shape[0]

    # Recomputing in backward bounds memory by one chunk; a single chunk has nothing to bound.
    use_ckpt = n_rows > chunk and torch.is_grad_enabled() and (
        prompts.requires_grad or hidden.requires_grad or embedding.requires_grad
    )

    ppl_sum = p.new_zeros(())
    ippl_sum = p.new_zeros(())
    ce_sum = p.new_zeros(())
    for start in range(0, n_rows, chunk):
        p_c = p[start : start + chunk]
        h_c = h[start : start + chunk]
        if use_ckpt:
            ppl_r, ippl_r, ce_r = checkpoint(
                _chunk_losses, p_c, h_c, e, e_inv_norm, k, tau, use_reentrant=False, preserve_rng_state=False
            )
        else:
            ppl_r, ippl_r, ce_r = _chunk_losses(p_c, h_c, e, e_inv_norm, k, tau)
        ppl_sum = ppl_sum + ppl_r.sum()
        ippl_sum = ippl_sum + ippl_r.sum()
        ce_sum = ce_sum + ce_r.sum()

    return {
        "ppl": ppl_sum / n_rows,
        "ippl": ippl_sum / n_rows,
        "perplexity": torch.exp(ce_sum.detach() / n_rows),
    }


@torch.no_grad()
def nearest_words(
    prompts: torch.Tensor,
    embedding: torch.Tensor,
    k: int = 1,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest vocabulary rows of each prompt vector by cosine similarity (for logging).

    Args:
        prompts: ``[M, d]`` prompt vectors (extra leading dims ``[..., M, d]`` are kept).
        embedding: ``[V, d]`` CLIP token-embedding weight.
        k: how many nearest tokens per vector, ``1 <= k <= V``.
        chunk_size: rows per chunk (``None``: ``default_chunk_size(V)``).

    Returns:
        ``(indices, similarities)``: ``[M, k]`` int64 token ids and ``[M, k]`` fp32 cosine
        similarities, most similar first. Decoding ids to strings is done by the caller.
    """
    if not isinstance(prompts, torch.Tensor):
        raise TypeError(f"prompts must be a torch.Tensor, got {type(prompts).__name__}")
    _check_embedding(embedding)
    vocab, dim = embedding.shape
    if prompts.dim() < 1 or prompts.shape[-1] != dim:
        raise ValueError(
            f"last dim of prompts must equal embedding.shape[1] ({dim}); "
            f"prompts {tuple(prompts.shape)}, embedding {tuple(embedding.shape)}"
        )
    if prompts.numel() == 0:
        raise ValueError(f"prompts is empty: shape {tuple(prompts.shape)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, V={vocab}] (V = embedding.shape[0]), got {k}")
    chunk = _check_chunk_size(chunk_size, vocab)

    p_unit = F.normalize(prompts.reshape(-1, dim).float(), dim=-1, eps=_COS_EPS)  # [N, d]
    e_unit = F.normalize(embedding.float(), dim=-1, eps=_COS_EPS)  # [V, d]
    sims, idxs = [], []
    for start in range(0, p_unit.shape[0], chunk):
        top_sim, top_idx = (p_unit[start : start + chunk] @ e_unit.T).topk(k, dim=-1)
        sims.append(top_sim)
        idxs.append(top_idx)
    out_shape = (*prompts.shape[:-1], k)
    return torch.cat(idxs).reshape(out_shape), torch.cat(sims).reshape(out_shape)
