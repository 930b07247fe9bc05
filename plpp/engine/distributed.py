"""Process-group helpers on PyTorch's own ``torch.distributed`` (torchrun sets the environment).

A single-process run sees rank 0 of a world of 1 and touches no backend: every helper here is a
no-op (or the identity) then, so the training loop calls them unconditionally.

What the engine does with them (docs/DISTRIBUTED.md):

* ``all_reduce_gradients`` averages the trainable parameters' gradients before each optimizer step
  (the prompt learner only; the frozen CLIP towers are never reduced or wrapped);
* ``all_gather_rows`` concatenates per-rank rows *with gradients*, which class sharding of the text
  encoder uses (``trainers/sharding.py``);
* ``shard_range`` and ``ShardSampler`` split a sequence over ranks in contiguous blocks without
  padding, so a sharded evaluation counts every image exactly once;
* ``main_process_first`` lets rank 0 build shared files (dataset images, few-shot caches) before
  the other ranks read them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def launched_with_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str = "") -> bool:
    """Join the process group that torchrun set up; return True when running multi-process.

    ``backend`` "" picks ``nccl`` when CUDA is available, else ``gloo``. With CUDA, each process
    uses the GPU ``LOCAL_RANK``.
    """
    if not launched_with_torchrun() or is_dist():
        return is_dist()
    if not backend:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def cleanup_distributed() -> None:
    """Leave the process group (at the end of a torchrun run); nothing to do otherwise."""
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


@contextmanager
def main_process_first():
    """Run the body on rank 0 first, then on the other ranks (which then find its files written).

    Used around dataset building: Fashion-MNIST's PNGs and the few-shot caches are written
    atomically by whoever builds first, so this only avoids every rank doing the same work.
    """
    if is_dist() and not is_main_process():
        dist.barrier()
    try:
        yield
    finally:
        if is_dist() and is_main_process():
            dist.barrier()


def _collective_device() -> torch.device:
    """Where tensors must live for the process group's backend (NCCL: the current GPU)."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shared_random_seed() -> int:
    """A random seed drawn on rank 0 and broadcast, so every rank draws the same ``SEED < 0`` run."""
    seed = torch.tensor([int.from_bytes(os.urandom(4), "little") >> 1], dtype=torch.int64, device=_collective_device())
    if is_dist():
        dist.broadcast(seed, src=0)
    return int(seed.item())


def broadcast_code(code: int) -> int:
    """Rank 0's ``code`` on every rank (a decision only rank 0 may take, e.g. about the output folder)."""
    if not is_dist():
        return code
    value = torch.tensor([int(code)], dtype=torch.int64, device=_collective_device())
    dist.broadcast(value, src=0)
    return int(value.item())


def broadcast_parameters(params: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values of ``params`` to every rank (as DDP does once at construction)."""
    if not is_dist():
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def all_reduce_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average the gradients of ``params`` over ranks, in one collective.

    ``params`` are the trainable parameters of the registered models (the prompt learner); the
    frozen towers are never touched. All gradients travel in one flat fp32 buffer with one extra
    entry per parameter that counts the ranks where it has a gradient: a parameter without a
    gradient on every rank stays ``None`` (so the optimizer skips it, as in a single process), and a
    parameter with a gradient on some ranks only gets the mean with zeros for the others. Every
    rank therefore makes the same decision and calls the same collectives.
    """
    if not is_dist():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = _collective_device()
    chunks, flags = [], []
    for p in params:
        if p.grad is None:
            chunks.append(torch.zeros(p.numel(), dtype=torch.float32, device=device))
            flags.append(0.0)
        else:
            chunks.append(p.grad.detach().reshape(-1).to(device=device, dtype=torch.float32))
            flags.append(1.0)
    chunks.append(torch.tensor(flags, dtype=torch.float32, device=device))
    flat = torch.cat(chunks)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    world = get_world_size()
    offset = 0
    for i, p in enumerate(params):
        n = p.numel()
        has_grad = flat[-len(params) + i].item() > 0
        if has_grad:
            mean = flat[offset : offset + n].view_as(p).div_(world)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(mean.to(device=p.grad.device, dtype=p.grad.dtype))
        offset += n


def average_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each number over ranks (the step's loss terms and accuracy, for the log).

    Each rank's values are means over its equal share of the global batch, so their mean is the
    global-batch value a 1-process run would log.
    """
    if not is_dist() or not values:
        return values
    keys = sorted(values)
    buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    buf /= get_world_size()
    return {**values, **{k: float(v) for k, v in zip(keys, buf.tolist())}}


class _GatherRows(torch.autograd.Function):
    """Forward: concatenate each rank's rows. Backward: sum the gradient over ranks, keep own rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        rank, longest = get_rank(), max(sizes)
        ctx.sizes, ctx.rank = sizes, rank
        device = _collective_device()
        local = tensor.detach().to(device)
        if local.shape[0] < longest:  # all_gather needs equal shapes: pad, then drop the padding
            pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
            local = torch.cat([local, pad])
        parts = [torch.empty_like(local) for _ in sizes]
        dist.all_gather(parts, local.contiguous())
        out = torch.cat([part[:n] for part, n in zip(parts, sizes)])
        return out.to(tensor.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank's loss may use every row, so each row's gradient is the sum over ranks. An
        # all-reduce of the whole [sum(sizes), ...] gradient is simple and backend-independent; it is
        # small here (class features), so a reduce-scatter would save little.
        summed = grad.detach().contiguous().to(_collective_device())
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return summed[start : start + ctx.sizes[ctx.rank]].to(grad.device), None


def all_gather_rows(tensor: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 in rank order, differentiably.

    Args:
        tensor: this rank's rows ``[n_r, ...]`` (trailing dims equal on all ranks).
        sizes: ``n_r`` of every rank, known to all of them (default: all equal to this rank's).

    Returns:
        ``[sum(sizes), ...]`` on every rank. The backward pass gives this rank's rows the *sum* over
        ranks of the gradients flowing into them, so that if each rank's loss ``L_k`` uses the
        gathered tensor, averaging the parameter gradients over ranks afterwards (as
        ``all_reduce_gradients`` does) yields exactly the gradient of ``mean_k L_k``.
        Single process: returns ``tensor`` itself.
    """
    if not is_dist():
        return tensor
    sizes = tuple(int(n) for n in sizes) if sizes is not None else (tensor.shape[0],) * get_world_size()
    if len(sizes) != get_world_size() or sizes[get_rank()] != tensor.shape[0]:
        raise ValueError(f"all_gather_rows: sizes {sizes} do not match the world size {get_world_size()} and this "
                         f"rank's {tensor.shape[0]} rows (rank {get_rank()})")
    return _GatherRows.apply(tensor, sizes)


def shard_range(n: int, rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous block ``[start, stop)`` of ``range(n)`` owned by ``rank``: sizes differ by at most one."""
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world is None else world
    return rank * n // world, (rank + 1) * n // world


class ShardSampler(Sampler[int]):
    """This rank's contiguous block of ``range(len(data))``, in order, with no padding or duplicates.

    ``DistributedSampler`` pads every rank to the same length by repeating indices, which would
    count some test images twice; here blocks may differ by one item and their concatenation in
    rank order is exactly the sequential order, so gathered predictions match a 1-process run.
    """

    def __init__(self, data: Sequence, rank: int | None = None, world: int | None = None) -> None:
        self.start, self.stop = shard_range(len(data), rank, world)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
