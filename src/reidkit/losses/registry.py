"""Loss registry: config names -> loss classes, so a trainer builds any loss with `build_loss(name, **cfg)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..miners.registry import build_miner, check_kwargs

_LOSSES: dict[str, type[nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _LOSSES and _LOSSES[name] is not cls:
            raise ConfigError(f"loss name {name!r} registered twice")
        _LOSSES[name] = cls
        return cls

    return decorator


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def loss_class(name: str) -> type[nn.Module]:
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(list_losses())}")
    return _LOSSES[name]


def loss_parameters(name: str) -> list[str]:
    """Constructor arguments of a loss, so a trainer can pass shared settings (margin, ...) only where they apply."""
    return list(inspect.signature(loss_class(name)).parameters)


def build_loss(name: str, **cfg: Any) -> nn.Module:
    """Build a registered loss; `miner` may be a miner, a miner name, or `{"name": ..., **miner_cfg}`.

    >>> build_loss("triplet", margin=0.3, miner={"name": "semi_hard", "margin": 0.3})
    """
    cls = loss_class(name)
    check_kwargs("loss", name, cls, cfg)
    if isinstance(cfg.get("miner"), (str, dict)):
        cfg["miner"] = build_miner(cfg["miner"])
    return cls(**cfg)
