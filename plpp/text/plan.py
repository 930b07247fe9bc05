"""Which tokens a fast text pass computes: the shared prefix once per group, each prompt up to its EOT.

Prompts of different lengths are grouped into length buckets; each bucket is truncated at its longest
EOT. More buckets compute fewer padding tokens but run more (smaller) kernels, so the split minimises
``tokens + overhead × buckets`` (exact either way: a causal transformer never lets a token after the EOT
change the EOT's state). A token costs ∝ width², a kernel launch does not, so the overhead in tokens is
``BUCKET_OVERHEAD_TOKENS[device] × (512 / width)²``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import TextLayout

__all__ = ["BUCKET_OVERHEAD_TOKENS", "MAX_BUCKETS", "Bucket", "TextPlan", "bucket_overhead", "make_plan",
           "split_lengths"]

#: What one more bucket costs, in tokens of work at width 512, per device type: each bucket runs its own
#: kernels in every layer, which on a GPU cost about as much as a few thousand tokens, on a CPU a few dozen.
#: A heuristic: it changes speed only, never results.
BUCKET_OVERHEAD_TOKENS: dict[str, int] = {"cpu": 48, "cuda": 4096}
DEFAULT_OVERHEAD_TOKENS = 4096
REFERENCE_WIDTH = 512
MAX_BUCKETS = 8


def bucket_overhead(device: torch.device, width: int) -> int:
    """One bucket's fixed cost in tokens of work, for a tower of this width on this device."""
    base = BUCKET_OVERHEAD_TOKENS.get(torch.device(device).type, DEFAULT_OVERHEAD_TOKENS)
    return int(base * (REFERENCE_WIDTH / width) ** 2)


@dataclass(frozen=True)
class Bucket:
    """Prompts computed together: ``rows [n]`` (indices into the pass), ``length`` tokens each after the
    shared prefix, and ``eot [n]``, each prompt's EOT index within those tokens."""

    rows: torch.Tensor
    length: int
    eot: torch.Tensor


@dataclass(frozen=True)
class TextPlan:
    """The buckets of a pass, ``order [C]`` (where each prompt lands when the buckets are concatenated;
    ``None`` when that is the prompts' own order) and the tokens computed per layer."""

    layout: TextLayout
    groups: int
    buckets: tuple[Bucket, ...]
    order: torch.Tensor | None
    tokens: int

    @property
    def full_tokens(self) -> int:
        """Tokens per layer of the 77-token reference pass: every prompt at full length."""
        return self.groups * self.layout.n_prompts * self.layout.context_length

    @property
    def longest(self) -> int:
        return max(b.length for b in self.buckets)


def split_lengths(lengths: list[int], groups: int, overhead: int, max_buckets: int = MAX_BUCKETS) -> list[int]:
    """Bucket upper bounds (ascending) minimising ``groups × Σ count·bound + overhead × buckets``.

    ``lengths`` are the tokens each prompt needs; a prompt goes to the first bound ≥ its length.
    """
    values = sorted(set(lengths))
    counts = [lengths.count(v) for v in values]
    before = [0]
    for c in counts:
        before.append(before[-1] + c)
    inf = float("inf")
    # best[k][j]: cheapest split of the j shortest distinct lengths into k buckets; cut[k][j]: its last bucket start.
    best = [[inf] * (len(values) + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (len(values) + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, len(values) + 1):
            for i in range(j):
                if best[k - 1][i] == inf:
                    continue
                cost = best[k - 1][i] + groups * (before[j] - before[i]) * values[j - 1] + overhead
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, max_buckets + 1), key=lambda n: best[n][len(values)])
    bounds, j = [], len(values)
    while k:
        bounds.append(values[j - 1])
        j, k = cut[k][j], k - 1
    return bounds[::-1]


def make_plan(layout: TextLayout, groups: int, device: torch.device, width: int = REFERENCE_WIDTH) -> TextPlan:
    """The buckets for ``groups`` groups of ``layout``'s prompts on ``device`` (index tensors live there),
    for a tower of ``width`` (it sets what a bucket costs)."""
    device = torch.device(device)
    shared = layout.shared_len
    lengths = [e - shared + 1 for e in layout.eot]  # tokens after the prefix, up to and including the EOT
    bounds = split_lengths(lengths, groups, bucket_overhead(device, width))
    buckets, concat = [], []
    for low, high in zip([0, *bounds], bounds):
        rows = [i for i, n in enumerate(lengths) if low < n <= high]
        concat.extend(rows)
        buckets.append(Bucket(torch.tensor(rows, dtype=torch.long, device=device), high,
                              torch.tensor([lengths[i] - 1 for i in rows], dtype=torch.long, device=device)))
    order = None
    if concat != list(range(len(concat))):
        inverse = [0] * len(concat)
        for position, row in enumerate(concat):
            inverse[row] = position
        order = torch.tensor(inverse, dtype=torch.long, device=device)
    tokens = groups * (shared + sum(b.length * b.rows.numel() for b in buckets))
    return TextPlan(layout, groups, tuple(buckets), order, tokens)
