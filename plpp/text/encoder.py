"""The one text encoder every host uses: only the tokens that can change the answer, or all 77.

CLIP's text transformer is causal and pools at the EOT token. So, in the ``fast`` pass (the default):

* nothing after a prompt's EOT is computed (prompts run in length buckets, each truncated at its
  longest EOT), and in the last block only the EOT (and any requested state) positions are computed;
* a class-independent prefix (``[SOS][ctx]``, with MaPLe's deep prompts) runs once per group (per step,
  per image for CoCoOp); every prompt's remaining tokens attend to its cached keys and values per layer.

The ``full`` pass is the upstream computation (every prompt through the stock blocks at all 77 tokens),
kept as the reference that tests compare against. Both return the same things in the same shapes, so
hosts never see which one ran.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import causal_attention
from .layout import TextLayout, TextPrompts
from .plan import TextPlan, make_plan
from .tower import TextTower, text_tower

__all__ = ["TEXT_PASS_CHOICES", "TextEncoder", "TextOutput"]

TEXT_PASS_CHOICES = ("fast", "full")
_PLAN_CACHE_SIZE = 64


class TextOutput(NamedTuple):
    """``features [G, C, D]``: each prompt's EOT state after the final norm and projection (not normalised).
    ``states``: the final-norm states at the requested positions, ``[G, M, d]`` (positions in the shared
    prefix, identical for every prompt of a group) or ``[G, C, M, d]``; ``None`` when none were asked for."""

    features: torch.Tensor
    states: torch.Tensor | None


def _put(x: torch.Tensor, offset: int, start: int, tokens: torch.Tensor) -> torch.Tensor:
    """``x [..., T, d]`` holds positions ``offset .. offset+T-1``: put ``tokens [n, d]`` at ``start ..``.

    As ``clip_utils.replace_tokens``, the tokens are expanded before the cast, so their gradient is summed
    over the rows in their own dtype (fp32 prompts of an fp16 model, as upstream MaPLe).
    """
    lo, hi = max(start, offset), min(start + tokens.shape[0], offset + x.shape[-2])
    if lo >= hi:
        return x
    block = tokens[lo - start : hi - start].expand(*x.shape[:-2], -1, -1).to(x.dtype)
    return torch.cat([x[..., : lo - offset, :], block, x[..., hi - offset :, :]], dim=-2)


class TextEncoder(nn.Module):
    """Text features (and token states) of ``TextPrompts``, through the fast or the reference pass.

    ``mode``: ``fast`` or ``full`` (``TRAINER.<HOST>.TEXT_PASS``). ``use_checkpoint``: recompute every block
    but the last in the backward pass (``TRAINER.<HOST>.TEXT_CHECKPOINT``), in either mode.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.tower: TextTower = text_tower(model)
        self.mode = "fast"
        self.use_checkpoint = False
        self._plans: OrderedDict[tuple, TextPlan] = OrderedDict()

    @property
    def dtype(self) -> torch.dtype:
        return self.tower.dtype

    @property
    def text_projection(self) -> torch.Tensor:
        return self.tower.text_projection

    # --- what a pass computes ------------------------------------------------------------------------

    def plan(self, layout: TextLayout, groups: int, device: torch.device | None = None) -> TextPlan:
        """The fast pass's buckets for ``groups`` groups of ``layout`` (cached per layout, groups, device)."""
        device = torch.device(device) if device is not None else self.tower.text_projection.device
        key = (layout, groups, device)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = make_plan(layout, groups, device, self.tower.text_projection.shape[0])
            if len(self._plans) > _PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        return plan

    def tokens_per_pass(self, layout: TextLayout, groups: int = 1, device: torch.device | None = None) -> int:
        """Tokens each block computes in one pass over ``groups`` groups of ``layout`` in the current mode."""
        if self.mode == "full":
            return groups * layout.n_prompts * layout.context_length
        return self.plan(layout, groups, device).tokens

    def describe(self, layout: TextLayout, groups: int = 1, prefix_runs: str = "once per step",
                 per: str = "step", device: torch.device | None = None) -> str:
        """One line saying which pass runs and how many tokens it computes (for the trainer's log)."""
        full = groups * layout.n_prompts * layout.context_length
        if self.mode == "full":
            return (f"full: every prompt through all {layout.context_length} tokens (the reference computation), "
                    f"{full:,} tokens per {per}")
        plan = self.plan(layout, groups, device)
        n = len(plan.buckets)
        if layout.shared_len:
            head = (f"fast: a shared prefix of {layout.shared_len} tokens runs {prefix_runs} with its keys/values "
                    f"cached, then each of {layout.n_prompts:,} prompts runs its own tokens up to its EOT")
        else:
            head = (f"fast: no shared prefix ({layout.note or 'the prompts differ from the first token'}), "
                    f"{layout.n_prompts:,} prompts truncated at their EOT")
        return (f"{head} ({n} length bucket{'s' if n > 1 else ''}, ≤ {plan.longest} tokens); "
                f"{plan.tokens:,} of {full:,} tokens per {per} ({plan.tokens / full:.1%})")

    # --- the pass ------------------------------------------------------------------------------------

    def forward(self, prompts: TextPrompts, states_at: torch.Tensor | None = None) -> TextOutput:
        """Features of every prompt, and the states at ``states_at``: ``[M]`` positions inside the shared
        prefix (the same for every prompt), or ``[C, M]`` per-prompt positions after it, up to the EOT."""
        self._check_positions(prompts.layout, states_at)
        if self.mode == "full":
            return self._reference(prompts, states_at)
        if self.mode != "fast":
            raise ValueError(f"TEXT_PASS '{self.mode}' is not valid; choose one of {', '.join(TEXT_PASS_CHOICES)}")
        return self._fast(prompts, states_at)

    @staticmethod
    def _check_positions(layout: TextLayout, states_at: torch.Tensor | None) -> None:
        if states_at is None:
            return
        shared = layout.shared_len
        if states_at.dim() == 1:
            if states_at.numel() and (int(states_at.min()) < 0 or int(states_at.max()) >= shared):
                raise ValueError(f"shared states are read inside the shared prefix (positions 0..{shared - 1}), "
                                 f"got {states_at.tolist()}; ask per prompt with [C, M] positions instead")
            return
        if states_at.dim() != 2 or states_at.shape[0] != layout.n_prompts:
            raise ValueError(f"per-prompt state positions must be [C={layout.n_prompts}, M], "
                             f"got {tuple(states_at.shape)}")
        eot = torch.tensor(layout.eot, device=states_at.device)[:, None]
        if states_at.numel() and (bool((states_at < shared).any()) or bool((states_at > eot).any())):
            raise ValueError(f"per-prompt state positions must lie from the shared prefix's end ({shared}) "
                             "to each prompt's EOT")

    def _reference(self, prompts: TextPrompts, states_at: torch.Tensor | None) -> TextOutput:
        """The stock blocks at the full context length (upstream's computation)."""
        full = prompts.full()
        g, c, length, width = full.shape
        x = self.tower.embed(full.reshape(g * c, length, width), 0)
        x = self.tower.run_reference(x, self.use_checkpoint, prompts.deep, prompts.deep_start).view(g, c, length, -1)
        eot = torch.tensor(prompts.layout.eot, device=x.device)
        pooled = x[:, torch.arange(c, device=x.device), eot]  # [G, C, d]
        features = self.tower.final(pooled) @ self.tower.text_projection
        if states_at is None:
            return TextOutput(features, None)
        if states_at.dim() == 1:
            return TextOutput(features, self.tower.final(x[:, 0, states_at]))
        picked = x[:, torch.arange(c, device=x.device)[:, None], states_at]  # [G, C, M, d]
        return TextOutput(features, self.tower.final(picked))

    def _fast(self, prompts: TextPrompts, states_at: torch.Tensor | None) -> TextOutput:
        tower, layout = self.tower, prompts.layout
        shared_len, groups = layout.shared_len, prompts.groups
        plan = self.plan(layout, groups, prompts.rest.device)
        per_prompt = states_at is not None and states_at.dim() == 2

        prefix = tower.embed(prompts.shared, 0).unsqueeze(1) if shared_len else None  # [G, 1, P, d]
        tails, queries = [], []  # per bucket: [G, n, T, d], and the positions its last block computes [n, Q]
        whole = len(plan.buckets) == 1 and plan.order is None  # one bucket, every prompt in order: no gather
        for bucket in plan.buckets:
            rest = prompts.rest[..., : bucket.length, :]
            rest = rest if whole else rest.index_select(-3, bucket.rows)
            x = tower.embed(rest, shared_len)
            tails.append(x if x.dim() == 4 else x.unsqueeze(0).expand(groups, -1, -1, -1))
            q = bucket.eot[:, None]
            if per_prompt:
                q = torch.cat([q, states_at.index_select(0, bucket.rows) - shared_len], dim=1)
            queries.append(q)
        prefix_queries = states_at if states_at is not None and not per_prompt else None

        blocks = list(tower.blocks)
        last = len(blocks) - 1
        for i, block in enumerate(blocks):
            if 1 <= i <= len(prompts.deep):
                tokens = prompts.deep[i - 1]
                prefix = None if prefix is None else _put(prefix, 0, prompts.deep_start, tokens)
                tails = [_put(x, shared_len, prompts.deep_start, tokens) for x in tails]
            if i == last:
                prefix, tails = self._block(block, prefix, tails, prefix_queries, queries)
            elif self.use_checkpoint and torch.is_grad_enabled() and any(
                    t is not None and t.requires_grad for t in (prefix, *tails)):
                prefix, *tails = checkpoint(self._block_all, block, prefix, *tails, use_reentrant=False)
            else:
                prefix, *tails = self._block_all(block, prefix, *tails)

        pooled = torch.cat([x[:, :, 0] for x in tails], dim=1)  # [G, C, d] in bucket order
        if plan.order is not None:
            pooled = pooled.index_select(1, plan.order)
        features = tower.final(pooled) @ tower.text_projection
        if states_at is None:
            return TextOutput(features, None)
        if not per_prompt:
            return TextOutput(features, tower.final(prefix[:, 0]))
        states = torch.cat([x[:, :, 1:] for x in tails], dim=1)  # [G, C, M, d]
        if plan.order is not None:
            states = states.index_select(1, plan.order)
        return TextOutput(features, tower.final(states))

    def _block_all(self, block: nn.Module, prefix: torch.Tensor | None, *tails: torch.Tensor):
        """One block at every position (the blocks before the last)."""
        prefix, tails = self._block(block, prefix, list(tails), None, None)
        return (prefix, *tails)

    def _block(self, block: nn.Module, prefix: torch.Tensor | None, tails: list[torch.Tensor],
               prefix_queries: torch.Tensor | None, queries: list[torch.Tensor] | None):
        """One block: the prefix (its keys/values kept for the tails), then each bucket of tails.

        With ``queries`` (the last block) only those positions are computed: the prefix's at
        ``prefix_queries`` (none: keys/values only), each bucket's at ``queries[b] [n, Q]``.
        """
        tower = self.tower
        past = None
        if prefix is not None:
            last = queries is not None
            if last and prefix_queries is None:  # the tails only need this block's prefix keys and values
                _, k, v = tower.qkv(block, prefix, lambda t: t[..., :0, :])
                past, prefix = (k[:, 0], v[:, 0]), None
            else:
                pick = (lambda t: t[..., prefix_queries, :]) if last else None
                q, k, v = tower.qkv(block, prefix, pick)
                past = (k[:, 0], v[:, 0])
                positions = prefix_queries[None] if last else None
                attended = causal_attention(q, k, v, None, positions)
                prefix = tower.finish(block, pick(prefix) if last else prefix, attended)
        out = []
        for b, x in enumerate(tails):
            if queries is None:
                q, k, v = tower.qkv(block, x)
                out.append(tower.finish(block, x, causal_attention(q, k, v, past)))
                continue
            rows = torch.arange(x.shape[1], device=x.device)[:, None]

            def pick(t: torch.Tensor, rows=rows, positions=queries[b]) -> torch.Tensor:
                return t[:, rows, positions]  # [G, n, T, ·] → [G, n, Q, ·]

            q, k, v = tower.qkv(block, x, pick)
            out.append(tower.finish(block, pick(x), causal_attention(q, k, v, past, queries[b])))
        return prefix, out
