"""Causal attention of a prompt's own tokens over a cached shared prefix and over themselves.

Pure tensor maths (no modules): the text encoder runs a class-independent prefix once, keeps its keys
and values per layer, and lets every prompt's remaining tokens attend to them. The prefix keys are
never copied per prompt: the scores against them are one matmul per group, and one softmax runs over
the prefix and the prompt's own keys together, so the result is the stock causal attention of the
whole prompt.
"""

from __future__ import annotations

import torch

__all__ = ["causal_attention"]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     past: tuple[torch.Tensor, torch.Tensor] | None = None,
                     query_positions: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of each prompt's queries over its group's prefix and its own earlier tokens.

    Shapes (G groups, N prompts per group, H heads, T own tokens, Q queries, P prefix tokens, e head width):

    * ``q`` ``[G, N, H, Q, e]``; ``k``, ``v`` ``[G, N, H, T, e]`` (the prompts' own tokens, positions 0..T-1
      after the prefix);
    * ``past`` ``(k, v)``, each ``[G, H, P, e]``: the group's prefix, visible to every query; ``None``: no prefix;
    * ``query_positions`` ``[N, Q]``: the own-token position of each query (own key ``t`` is visible to a
      query at ``p`` when ``t <= p``); ``None``: every position is a query (``Q = T``, in order).

    Returns ``[G, N, H, Q, e]``. Scores are scaled by ``e ** -0.5`` as in ``nn.MultiheadAttention`` and
    softmaxed in fp32 (they are small: ``Q × (P + T)`` per prompt and head).
    """
    g, n, h, n_q, e = q.shape
    t = k.shape[-2]
    q = q * e**-0.5
    keys = torch.arange(t, device=q.device)
    if query_positions is None:
        visible = keys[None, :] <= keys[:, None]  # [T, T]
    else:
        visible = (keys[None, None, :] <= query_positions[:, :, None]).unsqueeze(1)  # [N, 1, Q, T]
    own = (q @ k.transpose(-1, -2)).float().masked_fill(~visible, float("-inf"))  # [G, N, H, Q, T]
    if past is None:
        return torch.softmax(own, dim=-1).to(v.dtype) @ v
    past_k, past_v = past
    p = past_k.shape[-2]
    grouped = q.transpose(1, 2).reshape(g, h, n * n_q, e)  # [G, H, N·Q, e]: one matmul per group and head
    shared = (grouped @ past_k.transpose(-1, -2)).float().view(g, h, n, n_q, p).transpose(1, 2)
    probs = torch.softmax(torch.cat([shared, own], dim=-1), dim=-1).to(v.dtype)  # [G, N, H, Q, P + T]
    from_past = probs[..., :p].transpose(1, 2).reshape(g, h, n * n_q, p) @ past_v
    return from_past.view(g, h, n, n_q, e).transpose(1, 2) + probs[..., p:] @ v
