"""Optimizer and learning-rate schedule factories shared by the training tasks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from ..errors import ConfigError

ParamGroups = Iterable[dict] | Iterable[torch.nn.Parameter]


def build_optimizer(params: ParamGroups, name: str, *, lr: float, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = False, choices: tuple[str, ...] = ("adam", "adamw", "sgd"),
                    key: str = "optim.optimizer") -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum, optionally Nesterov) over `params` (tensors or parameter groups)."""
    if name not in choices:
        raise ConfigError(f"{key}={name!r}: expected {', '.join(choices[:-1])} or {choices[-1]}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def cosine_factor(fraction: float) -> float:
    """Cosine decay from 1 to 0.01 over fraction 0..1 (clamped)."""
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))


def warmup_then_decay(warmup_steps: int, total_steps: int, steps_per_epoch: int, scheduler: str,
                      milestones: list[int], gamma: float) -> Callable[[int], float]:
    """Per-step factor: linear warm-up from 10%, then cosine decay or step decay at epoch milestones."""
    if scheduler not in ("cosine", "step"):
        raise ConfigError(f"optim.scheduler={scheduler!r}: expected cosine or step")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        if scheduler == "cosine":
            return cosine_factor((step - warmup_steps) / max(1, total_steps - warmup_steps))
        epoch = step // steps_per_epoch
        return gamma ** sum(epoch >= m for m in milestones)

    return factor


def caffe_schedule(schedule: str, total_steps: int, warmup_steps: int, inv_gamma: float,
                   inv_power: float) -> Callable[[int], float]:
    """Per-step factor: optional linear warm-up times inv (Caffe: (1 + gamma * step) ** -power), cosine or 1."""
    if schedule not in ("inv", "cosine", "constant"):
        raise ConfigError(f"optim.schedule={schedule!r}: expected inv, cosine or constant")

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        if schedule == "inv":
            return warm * (1.0 + inv_gamma * step) ** -inv_power
        if schedule == "cosine":
            return warm * cosine_factor(step / max(1, total_steps))
        return warm

    return factor
