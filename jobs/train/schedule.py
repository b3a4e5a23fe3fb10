"""Optimiser and learning-rate schedule: pure functions of the spec and the step."""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from jobs.spec import OptimConfig


def learning_rate(step: int, total_steps: int, optim: OptimConfig) -> float:
    """The lr at optimiser step `step` (0-based) of `total_steps`.

    Linear warm-up from `warmup_factor × lr` over `warmup_steps`, then step decay by `gamma` at
    each milestone fraction of training (SRN's 100/120 of 130 epochs), or cosine to 0.
    """
    if step < optim.warmup_steps:
        alpha = step / optim.warmup_steps
        return optim.lr * (optim.warmup_factor * (1 - alpha) + alpha)
    if optim.schedule == "constant":
        return optim.lr
    progress = step / max(total_steps, 1)
    if optim.schedule == "cosine":
        span = max(total_steps - optim.warmup_steps, 1)
        return 0.5 * optim.lr * (1 + math.cos(math.pi * min(step - optim.warmup_steps, span) / span))
    return optim.lr * optim.gamma ** bisect.bisect_right(list(optim.milestones), progress)


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW; norm weights and biases get no weight decay."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # On a GPU the fused kernels update every parameter in a few launches and keep AdamW's step count
    # on the device (the default implementation reads it on the host once per parameter). On the CPU
    # the default implementation stays: its results are the ones every earlier run produced.
    fused = {"fused": True} if decay and decay[0].is_cuda else {}
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, **fused)
    return torch.optim.AdamW(groups, lr=optim.lr, **fused)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
