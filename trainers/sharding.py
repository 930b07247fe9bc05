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
(shared context before the class name: the prompts' shared prefix), every rank runs that prefix
anyway (it is part of each class's pass) and returns its states ``[M, d]``: every rank computes the
same PLPP terms, whose gradients the average keeps. Otherwise (class-specific or middle/front
context) the per-class states ``[C, M, d]`` are gathered with the features, in one call.
"""

from __future__ import annotations

import torch
from torch import nn

from plpp.engine.distributed import all_gather_rows, get_world_size, is_dist, shard_range
from plpp.engine.utils import logger
from plpp.text import TextEncoder, TextOutput, TextPrompts


class ClassShardedTextEncoder(TextEncoder):
    """A :class:`TextEncoder` (same tower, mode and checkpointing) that encodes this rank's classes and gathers.

    ``forward(prompts, states_at)`` returns what the plain encoder returns for all ``n_cls`` prompts (one
    group): features ``[1, C, D]`` and states ``[1, M, d]`` (shared prefix) or ``[1, C, M, d]``.
    """

    def __init__(self, encoder: TextEncoder, n_cls: int) -> None:
        nn.Module.__init__(self)
        self.tower = encoder.tower
        self.mode, self.use_checkpoint, self._plans = encoder.mode, encoder.use_checkpoint, encoder._plans
        self.n_cls = n_cls
        world = get_world_size()
        self.sizes = [stop - start for start, stop in (shard_range(n_cls, r, world) for r in range(world))]

    def forward(self, prompts: TextPrompts, states_at: torch.Tensor | None = None) -> TextOutput:
        if prompts.layout.n_prompts != self.n_cls or prompts.groups != 1:
            raise RuntimeError(f"DISTRIBUTED.SHARD_CLASSES: the text encoder was sharded for {self.n_cls} class "
                               f"prompts in one group but got {prompts.layout.n_prompts} in {prompts.groups}; "
                               "this host does not support class sharding")
        start, stop = shard_range(self.n_cls)
        per_class = states_at is not None and states_at.dim() == 2
        local = super().forward(prompts.rows(start, stop), states_at[start:stop] if per_class else states_at)
        feats = local.features[0]
        if not per_class:
            states = local.states
            return TextOutput(all_gather_rows(feats, self.sizes)[None], states)
        states = local.states[0]
        width = feats.shape[1]
        both = all_gather_rows(torch.cat([feats, states.flatten(1).to(feats.dtype)], dim=1), self.sizes)
        gathered = both[:, width:].view(self.n_cls, *states.shape[1:]).to(states.dtype)
        return TextOutput(both[:, :width][None], gathered[None])


def shard_text_encoder(model: nn.Module) -> None:
    """Replace ``model.text_encoder`` by its class-sharded version when running multi-process.

    ``model`` is a host model with ``prompt_learner`` (``n_cls``) and a :class:`TextEncoder`. Hosts
    whose text pass is not one row per class (CoCoOp: images × classes) are refused. A single-process
    run keeps the plain encoder.
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
    model.text_encoder = ClassShardedTextEncoder(encoder, learner.n_cls)
    start, stop = shard_range(learner.n_cls)
    logger.info(f"Text encoder sharded by class over {world} processes ({stop - start} classes on rank 0)")
