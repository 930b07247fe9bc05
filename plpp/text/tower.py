"""The text tower as the encoder sees it: the one place that knows a backbone's text module layout.

``TextTower`` is the interface; ``ClipTextTower`` adapts the ``clip`` package's ``CLIP`` (sequence-first
``nn.MultiheadAttention`` blocks with ``ln_1``/``attn``/``ln_2``/``mlp``, ``positional_embedding``,
``ln_final``, ``text_projection``). Another backbone (e.g. open_clip's text tower: batch-first blocks,
layer scales) needs only its own subclass; hosts and the encoder stay as they are. The blocks' own
weights are used throughout; nothing is copied or modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from plpp.clip_utils import deep_prompt_hook, run_blocks

__all__ = ["ClipTextTower", "TextTower", "text_tower"]

Pick = Callable[[torch.Tensor], torch.Tensor]


class TextTower(nn.Module):
    """What the text encoder needs from a causal text transformer (hidden states are ``[..., T, d]``)."""

    @property
    def blocks(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the blocks run in (their weights')."""
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        raise NotImplementedError

    @property
    def text_projection(self) -> torch.Tensor:
        """``[d, D]``: pooled state → feature."""
        raise NotImplementedError

    def embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Prompt embeddings ``[..., T, d]`` at positions ``start .. start+T-1`` → block input (positions added)."""
        raise NotImplementedError

    def run_reference(self, x: torch.Tensor, use_checkpoint: bool, deep: Sequence[torch.Tensor] = (),
                      deep_start: int = 1) -> torch.Tensor:
        """The stock blocks on whole prompts ``[N, L, d]`` (the backbone's own forward and attention mask)."""
        raise NotImplementedError

    def qkv(self, block: nn.Module, x: torch.Tensor,
            pick: Pick | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block input ``x [..., T, d]`` → ``q [..., H, Q, e]``, ``k``/``v`` ``[..., H, T, e]``.

        ``pick`` selects the query positions from a ``[..., T, ·]`` tensor (``None``: all, ``Q = T``).
        """
        raise NotImplementedError

    def finish(self, block: nn.Module, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The rest of the block at the query positions: residual input ``x [..., Q, d]``, attention
        output ``[..., H, Q, e]`` → block output ``[..., Q, d]``."""
        raise NotImplementedError

    def final(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm, per token, in the blocks' dtype (states as hosts and PLPP read them)."""
        raise NotImplementedError


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[..., T, H·e]`` → ``[..., H, T, e]``."""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


class ClipTextTower(TextTower):
    """``clip.model.CLIP``'s text transformer (shares the model's modules)."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self._projection = clip_model.text_projection

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.transformer.resblocks

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.resblocks[0].attn.in_proj_weight.dtype

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def text_projection(self) -> torch.Tensor:
        return self._projection

    def embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        positions = self.positional_embedding[start : start + tokens.shape[-2]]
        return tokens.to(self.dtype) + positions.to(self.dtype)

    def run_reference(self, x: torch.Tensor, use_checkpoint: bool, deep: Sequence[torch.Tensor] = (),
                      deep_start: int = 1) -> torch.Tensor:
        between = deep_prompt_hook(deep, deep_start) if deep else None
        out = run_blocks(x.permute(1, 0, 2), self.transformer.resblocks, use_checkpoint, between)  # [L, N, d]
        return out.permute(1, 0, 2)

    def qkv(self, block: nn.Module, x: torch.Tensor,
            pick: Pick | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = block.attn
        h = block.ln_1(x)
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        if pick is None:
            q, k, v = F.linear(h, weight, bias).chunk(3, dim=-1)
        else:
            width = weight.shape[1]
            q = F.linear(pick(h), weight[:width], None if bias is None else bias[:width])
            k, v = F.linear(h, weight[width:], None if bias is None else bias[width:]).chunk(2, dim=-1)
        heads = attn.num_heads
        return _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)

    def finish(self, block: nn.Module, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        out = block.attn.out_proj
        x = x + F.linear(attended.transpose(-3, -2).flatten(-2), out.weight, out.bias)
        return x + block.mlp(block.ln_2(x))

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_final(x).to(self.dtype)


def text_tower(model: nn.Module) -> TextTower:
    """The adapter for ``model``: a ``TextTower`` as it is, or ``clip.model.CLIP``'s text side."""
    if isinstance(model, TextTower):
        return model
    needed = ("transformer", "positional_embedding", "ln_final", "text_projection")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise TypeError(f"{type(model).__name__} has no text tower this encoder knows (missing "
                        f"{', '.join(missing)}): pass a clip.model.CLIP or a plpp.text.TextTower adapter")
    return ClipTextTower(model)
