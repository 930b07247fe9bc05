"""How a host declares its prompts to the text encoder: where they stop being shared, where each ends.

A host builds one ``TextLayout`` when it is built (it depends on the class names only) and hands the
encoder a ``TextPrompts`` per pass: the shared leading tokens once per group (``[G, P, d]``: once per
step, or once per image for CoCoOp), and each prompt's remaining tokens. Deep prompts (MaPLe, IVLP)
are declared as the tokens that replace positions ``deep_start ..`` before each later block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

__all__ = ["TextLayout", "TextPrompts", "TextWork", "text_layout"]


@dataclass(frozen=True)
class TextLayout:
    """Fixed facts about a set of prompts (hashable, so the encoder can cache its plan for them).

    ``shared_len``: the first P tokens are identical for every prompt of a group (0: nothing shared, the
    prompts are only truncated). ``eot``: each prompt's EOT position, where its feature is read.
    ``context_length``: the full prompt length L (77 for CLIP). ``note``: why nothing is shared, for the log.
    """

    shared_len: int
    eot: tuple[int, ...]
    context_length: int
    note: str = ""

    def __post_init__(self) -> None:
        if not self.eot:
            raise ValueError("a text layout needs at least one prompt")
        if not 0 <= self.shared_len <= min(self.eot):
            raise ValueError(f"shared_len {self.shared_len} must be between 0 and the earliest EOT ({min(self.eot)}): "
                             "every prompt's EOT lies after the shared prefix")
        if max(self.eot) >= self.context_length:
            raise ValueError(f"EOT position {max(self.eot)} is outside the context of {self.context_length} tokens")

    @property
    def n_prompts(self) -> int:
        return len(self.eot)

    def rows(self, start: int, stop: int) -> TextLayout:
        """The layout of prompts ``start .. stop-1``."""
        return TextLayout(self.shared_len, self.eot[start:stop], self.context_length, self.note)


def text_layout(tokenized: torch.Tensor, shared_len: int = 0, extend: bool = True, note: str = "") -> TextLayout:
    """The layout of token ids ``[C, L]`` (CLIP's EOT has the largest id, as ``clip`` pools at ``argmax``).

    ``shared_len`` leading positions are known to be identical across prompts (e.g. ``[SOS][ctx]`` with a
    shared context). With ``extend`` the prefix grows over the following positions whose token ids agree
    in every prompt (their embeddings are then identical too), stopping before the earliest EOT.
    """
    tokenized = tokenized.detach().cpu()
    eot = tuple(int(i) for i in tokenized.argmax(dim=-1))
    shared = min(shared_len, min(eot))
    if extend:
        while shared < min(eot) and bool((tokenized[:, shared] == tokenized[0, shared]).all()):
            shared += 1
    return TextLayout(shared, eot, tokenized.shape[1], note)


@dataclass
class TextPrompts:
    """One text pass's prompt embeddings, split at ``layout.shared_len`` (P).

    ``shared`` ``[G, P, d]``: the leading tokens of group g's prompts. ``rest`` ``[C, L-P, d]`` (the same
    for every group) or ``[G, C, L-P, d]``: each prompt's tokens from position P. ``deep``: ``deep[i]``
    ``[n, d]`` replaces positions ``deep_start .. deep_start+n-1`` of every prompt before block ``i+1``.
    """

    layout: TextLayout
    shared: torch.Tensor
    rest: torch.Tensor
    deep: Sequence[torch.Tensor] = field(default_factory=tuple)
    deep_start: int = 1

    def __post_init__(self) -> None:
        p, c, length = self.layout.shared_len, self.layout.n_prompts, self.layout.context_length
        if self.shared.dim() != 3 or self.shared.shape[1] != p:
            raise ValueError(f"shared tokens must be [G, {p}, d], got {tuple(self.shared.shape)}")
        if self.rest.dim() not in (3, 4) or self.rest.shape[-3:-1] != (c, length - p):
            raise ValueError(f"rest tokens must be [C={c}, L-P={length - p}, d] (or with a leading group dim), "
                             f"got {tuple(self.rest.shape)}")
        if self.rest.dim() == 4 and self.rest.shape[0] != self.shared.shape[0]:
            raise ValueError(f"rest has {self.rest.shape[0]} groups, shared {self.shared.shape[0]}")
        for tokens in self.deep:
            if tokens.dim() != 2 or not 0 <= self.deep_start <= length - tokens.shape[0]:
                raise ValueError(f"deep prompt {tuple(tokens.shape)} does not fit at position {self.deep_start} "
                                 f"of {length} tokens")

    @classmethod
    def from_full(cls, layout: TextLayout, prompts: torch.Tensor, deep: Sequence[torch.Tensor] = (),
                  deep_start: int = 1) -> TextPrompts:
        """Split whole prompts ``[C, L, d]`` (one group) at the layout's shared length."""
        p = layout.shared_len
        return cls(layout, prompts[:1, :p], prompts[:, p:], tuple(deep), deep_start)

    @property
    def groups(self) -> int:
        return self.shared.shape[0]

    def full(self) -> torch.Tensor:
        """Whole prompts ``[G, C, L, d]`` (what the 77-token reference path runs)."""
        g, c = self.groups, self.layout.n_prompts
        rest = self.rest if self.rest.dim() == 4 else self.rest.unsqueeze(0).expand(g, -1, -1, -1)
        shared = self.shared.unsqueeze(1).expand(-1, c, -1, -1)
        return torch.cat([shared.to(rest.dtype), rest], dim=2)

    def rows(self, start: int, stop: int) -> TextPrompts:
        """The same pass restricted to prompts ``start .. stop-1``."""
        return TextPrompts(self.layout.rows(start, stop), self.shared, self.rest[..., start:stop, :, :],
                           self.deep, self.deep_start)


class TextWork(NamedTuple):
    """What a host's text pass runs per training step: ``groups`` groups of ``layout``'s prompts, the shared
    prefix running ``prefix_runs`` (e.g. "once per step", "once per image"); for the log and checkpointing."""

    layout: TextLayout
    groups: int
    prefix_runs: str
