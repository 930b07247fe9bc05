"""The upstream text pass, written out independently of ``plpp.text``: the reference the fast pass must equal.

Whole prompts ``[N, 77, d]`` go through the ``clip`` package's own blocks (``block(x)``, its causal mask),
with deep prompts put in before later blocks as MaPLe does; the feature is read at the EOT token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stock_states(clip_model, prompts: torch.Tensor, deep: Sequence[torch.Tensor] = (),
                 deep_start: int = 1) -> torch.Tensor:
    """Final-norm states ``[N, L, d]`` of whole prompt embeddings ``[N, L, d]``."""
    dtype = clip_model.transformer.resblocks[0].attn.in_proj_weight.dtype
    x = (prompts.to(dtype) + clip_model.positional_embedding.to(dtype)).permute(1, 0, 2)
    for i, block in enumerate(clip_model.transformer.resblocks):
        if 1 <= i <= len(deep):
            n = deep[i - 1].shape[0]
            x = torch.cat([x[:deep_start], deep[i - 1].to(x.dtype)[:, None].expand(-1, x.shape[1], -1),
                           x[deep_start + n :]])
        x = block(x)
    return clip_model.ln_final(x.permute(1, 0, 2)).to(dtype)


def stock_features(clip_model, prompts: torch.Tensor, tokenized: torch.Tensor, deep: Sequence[torch.Tensor] = (),
                   deep_start: int = 1) -> torch.Tensor:
    """Text features ``[N, D]`` (not normalised) of whole prompts, read at each prompt's EOT."""
    states = stock_states(clip_model, prompts, deep, deep_start)
    return states[torch.arange(states.shape[0]), tokenized.argmax(dim=-1)] @ clip_model.text_projection
