"""Loss registry: config names -> loss classes, so a trainer builds any loss with `build_loss(name, **cfg)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..errors import ConfigError
from ..miners.registry import build_miner, check_kwargs
from ..registry import Registry

_LOSSES: Registry[type[nn.Module]] = Registry("loss", ConfigError)


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    return _LOSSES.register(name)


def list_losses() -> list[str]:
    return _LOSSES.names()


def loss_class(name: str) -> type[nn.Module]:
    return _LOSSES.get(name)


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
