"""Class sharding of the text encoder over the ranks of a torchrun run (``DISTRIBUTED.SHARD_CLASSES True``).

CoOp and MaPLe run every class prompt through the text encoder at each step, so with 1,000 classes
the text tower's activations dominate GPU memory. With sharding, rank ``r`` of ``W`` encodes only
its contiguous block of classes (``shard_range``) and the pooled features are gathered with
gradients (``all_gather_rows``), so every rank still sees all ``[C, D]`` class features and the
activation memory per GPU falls roughly as ``1/W``.

Why the gradient stays exact (docs/DISTRIBUTED.md has the derivation): rank ``k``'s loss ``L_k``
(its images against all classes) reaches the rows of rank ``r`` only through the gather, whose
backward sums over ``k``; so rank ``r``'s prompt gradient is ``Σ_k ∂L_k/∂F_r · ∂F_r/∂θ``. The
engine then averages the gradients over ranks, giving ``(1/W) Σ_r Σ_k … = ∂(mean_k L_k)/∂θ``:
the gradient of the global-batch loss, exactly as without sharding.

PLPP needs the text states at the context positions. When they are the same for every class
(shared context before the class name: ``prompt_learner.shared_prefix``), each rank also encodes
class 0's prompt (one extra row, cheap) and returns its states ``[1, L, d]``: every rank then
computes the same PLPP terms, whose gradients the average keeps. Otherwise (class-specific or
middle/front context) the full states ``[C, L, d]`` are gathered with the features, in one call.
"""

from __future__ import annotations

import torch
from torch import nn

from plpp.clip_utils import TextEncoder
from plpp.engine.distributed import all_gather_rows, get_world_size, is_dist, shard_range
from plpp.engine.utils import logger


class ClassShardedTextEncoder(TextEncoder):
    """A :class:`TextEncoder` (same modules, shared) that encodes this rank's classes and gathers the rest.

    ``forward(prompts [C, L, d], tokenized [C, L])`` returns ``(features [C, D], states)`` like the
    plain encoder, with ``states`` ``[1, L, d]`` (class 0's) when ``first_states_only`` else ``[C, L, d]``.
    """

    def __init__(self, encoder: TextEncoder, n_cls: int, first_states_only: bool) -> None:
        super().__init__(encoder)  # reads transformer, positional_embedding, ln_final, text_projection
        self.use_checkpoint = encoder.use_checkpoint
        self.n_cls = n_cls
        self.first_states_only = first_states_only
        world = get_world_size()
        self.sizes = [stop - start for start, stop in (shard_range(n_cls, r, world) for r in range(world))]

    def forward(self, prompts: torch.Tensor, tokenized: torch.Tensor, return_states: bool = False, between=None):
        if prompts.shape[0] != self.n_cls:
            raise RuntimeError(f"DISTRIBUTED.SHARD_CLASSES: the text encoder was sharded for {self.n_cls} class "
                               f"prompts but got {prompts.shape[0]}; this host does not support class sharding")
        start, stop = shard_range(self.n_cls)
        extra_first = return_states and self.first_states_only and start > 0
        if extra_first:  # class 0's states are every class's: encode it here too (one more row)
            prompts = torch.cat([prompts[:1], prompts[start:stop]])
            tokenized = torch.cat([tokenized[:1], tokenized[start:stop]])
        else:
            prompts, tokenized = prompts[start:stop], tokenized[start:stop]
        feats, states = super().forward(prompts, tokenized, return_states, between)
        if extra_first:
            feats = feats[1:]
        if not return_states:
            return all_gather_rows(feats, self.sizes), None
        if self.first_states_only:
            return all_gather_rows(feats, self.sizes), states[:1]
        if extra_first:
            states = states[1:]
        width = feats.shape[1]
        both = all_gather_rows(torch.cat([feats, states.flatten(1).to(feats.dtype)], dim=1), self.sizes)
        return both[:, :width], both[:, width:].view(self.n_cls, *states.shape[1:]).to(states.dtype)


def shard_text_encoder(model: nn.Module) -> None:
    """Replace ``model.text_encoder`` by its class-sharded version when running multi-process.

    ``model`` is a host model with ``prompt_learner`` (``n_cls``, ``shared_prefix``) and a
    :class:`TextEncoder`. Hosts whose text pass is not one row per class (CoCoOp: images × classes)
    are refused. A single-process run keeps the plain encoder.
    """
    if not is_dist():
        logger.info("DISTRIBUTED.SHARD_CLASSES has no effect in a single-process run")
        return
    if hasattr(model, "encode_conditional_text"):
        raise ValueError("DISTRIBUTED.SHARD_CLASSES is not supported by CoCoOp hosts (their text pass is per image "
                         "and class); set DISTRIBUTED.SHARD_CLASSES False")
    learner = model.prompt_learner
    world = get_world_size()
    if learner.n_cls < world:
        raise ValueError(f"DISTRIBUTED.SHARD_CLASSES needs at least one class per process: {learner.n_cls} classes, "
                         f"{world} processes; set DISTRIBUTED.SHARD_CLASSES False")
    encoder = model.text_encoder
    if isinstance(encoder, ClassShardedTextEncoder):
        return
    model.text_encoder = ClassShardedTextEncoder(encoder, learner.n_cls, bool(learner.shared_prefix))
    start, stop = shard_range(learner.n_cls)
    logger.info(f"Text encoder sharded by class over {world} processes ({stop - start} classes on rank 0"
                f"{', plus class 0 for the context states' if learner.shared_prefix else ''})")
