"""Optimizers and epoch-wise LR schedules with Dassl's semantics.

The schedule is a closed-form function of the epoch count, so its state is two integers and a few
floats: checkpoints stay loadable with ``torch.load(weights_only=True)`` (Dassl's warm-up wrapper
pickles its successor scheduler and passes ``verbose``, which torch ≥ 2.7 rejects).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

AVAILABLE_OPTIMIZERS = ("adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw")
AVAILABLE_SCHEDULERS = ("single_step", "multi_step", "cosine")
AVAILABLE_WARMUP = ("constant", "linear")


def build_optimizer(model_or_params: nn.Module | Iterable, optim_cfg, param_groups=None) -> torch.optim.Optimizer:
    """Build the optimizer named by ``OPTIM.NAME`` from a module or an iterable of parameters."""
    name = optim_cfg.NAME
    if name not in AVAILABLE_OPTIMIZERS:
        raise ValueError(f"OPTIM.NAME '{name}' is not supported; choose one of {', '.join(AVAILABLE_OPTIMIZERS)}")
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    if param_groups is not None and optim_cfg.STAGED_LR:
        raise ValueError("OPTIM.STAGED_LR cannot be combined with explicit param_groups")
    if param_groups is None:
        if isinstance(model_or_params, nn.Module):
            if optim_cfg.STAGED_LR:
                new_layers = optim_cfg.NEW_LAYERS
                if isinstance(new_layers, str):
                    new_layers = [new_layers]
                base, new = [], []
                for lname, module in model_or_params.named_children():
                    (new if lname in new_layers else base).extend(module.parameters())
                param_groups = [{"params": base, "lr": lr * optim_cfg.BASE_LR_MULT}, {"params": new}]
            else:
                param_groups = model_or_params.parameters()
        else:
            param_groups = model_or_params
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=wd,
                                betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2))
    if name == "amsgrad":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=wd,
                                betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2), amsgrad=True)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    if name == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                                   alpha=optim_cfg.RMSPROP_ALPHA)
    if name == "radam":
        return torch.optim.RAdam(param_groups, lr=lr, weight_decay=wd,
                                 betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2))
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd,
                             betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2))


class EpochLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Dassl's warm-up + main schedule as one closed-form function of ``last_epoch``.

    ``last_epoch`` counts completed ``step()`` calls (one per epoch). During the first
    ``warmup_epoch`` epochs the LR is the warm-up LR; afterwards the main schedule runs with its own
    count starting at 0 (``recount=True``, Dassl's default) or continuing the epoch count.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, max_epoch: int,
                 stepsize: list[int], gamma: float, warmup_epoch: int = 0, warmup_type: str = "constant",
                 warmup_cons_lr: float = 1e-5, warmup_min_lr: float = 1e-5, recount: bool = True) -> None:
        self.kind = kind
        self.max_epoch = int(max_epoch)
        self.stepsize = [int(s) for s in stepsize]
        self.gamma = float(gamma)
        self.warmup_epoch = max(int(warmup_epoch), 0)
        self.warmup_type = warmup_type
        self.warmup_cons_lr = float(warmup_cons_lr)
        self.warmup_min_lr = float(warmup_min_lr)
        self.recount = bool(recount)
        super().__init__(optimizer)

    def _main_lr(self, base_lr: float, t: int) -> float:
        if self.kind == "cosine":
            # Closed form of CosineAnnealingLR(T_max=max_epoch) for 0 <= t <= T_max (MAX_EPOCH 0: never stepped).
            if self.max_epoch <= 0:
                return base_lr
            return base_lr * (1 + math.cos(math.pi * t / self.max_epoch)) / 2
        if self.kind == "single_step":
            return base_lr * self.gamma ** (t // self.stepsize[0])
        return base_lr * self.gamma ** sum(1 for m in self.stepsize if m <= t)

    def lr_at(self, epoch: int) -> list[float]:
        """LRs used during (0-based) ``epoch``."""
        if epoch < self.warmup_epoch:
            if self.warmup_type == "constant":
                return [self.warmup_cons_lr for _ in self.base_lrs]
            if epoch == 0:
                return [self.warmup_min_lr for _ in self.base_lrs]
            return [b * epoch / self.warmup_epoch for b in self.base_lrs]
        t = epoch - self.warmup_epoch if self.recount else epoch
        return [self._main_lr(b, t) for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        return self.lr_at(max(self.last_epoch, 0))


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg) -> EpochLRScheduler:
    """Build the per-epoch schedule of ``OPTIM.LR_SCHEDULER`` with optional warm-up (Dassl keys)."""
    kind = optim_cfg.LR_SCHEDULER
    if kind not in AVAILABLE_SCHEDULERS:
        raise ValueError(f"OPTIM.LR_SCHEDULER '{kind}' is not supported; choose one of "
                         f"{', '.join(AVAILABLE_SCHEDULERS)}")
    stepsize = optim_cfg.STEPSIZE
    stepsize = list(stepsize) if isinstance(stepsize, (list, tuple)) else [stepsize]
    if kind == "single_step":
        step = stepsize[-1]
        stepsize = [max(optim_cfg.MAX_EPOCH, 1) if step <= 0 else step]
    elif kind == "multi_step" and not stepsize:
        raise ValueError("OPTIM.STEPSIZE must list the milestone epochs for multi_step")
    warmup = optim_cfg.WARMUP_EPOCH if optim_cfg.WARMUP_EPOCH > 0 else 0
    if warmup and optim_cfg.WARMUP_TYPE not in AVAILABLE_WARMUP:
        raise ValueError(f"OPTIM.WARMUP_TYPE '{optim_cfg.WARMUP_TYPE}' is not supported; choose one of "
                         f"{', '.join(AVAILABLE_WARMUP)}")
    return EpochLRScheduler(
        optimizer, kind, optim_cfg.MAX_EPOCH, stepsize, optim_cfg.GAMMA, warmup_epoch=warmup,
        warmup_type=optim_cfg.WARMUP_TYPE, warmup_cons_lr=optim_cfg.WARMUP_CONS_LR,
        warmup_min_lr=optim_cfg.WARMUP_MIN_LR, recount=optim_cfg.WARMUP_RECOUNT,
    )
