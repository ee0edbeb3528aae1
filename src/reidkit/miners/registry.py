"""Miner registry: config names -> miner classes, so a loss config can say `miner: semi_hard`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..registry import Registry

_MINERS: Registry[type] = Registry("miner", ConfigError)


def register_miner(name: str) -> Callable[[type], type]:
    return _MINERS.register(name)


def list_miners() -> list[str]:
    return _MINERS.names()


def check_kwargs(kind: str, name: str, cls: type, cfg: dict[str, Any]) -> None:
    """Reject unknown constructor arguments with a message listing the valid ones."""
    params = inspect.signature(cls).parameters
    unknown = sorted(set(cfg) - set(params))
    if unknown:
        raise ConfigError(f"{kind} {name!r}: unknown argument(s) {unknown}; valid: {sorted(params)}")


def build_miner(name: str | dict[str, Any], **cfg: Any):
    """Build a miner by name (`build_miner("semi_hard", margin=0.2)`) or from `{"name": ..., **cfg}`."""
    if isinstance(name, dict):
        cfg = {**name, **cfg}
        if "name" not in cfg:
            raise ConfigError(f"miner config {name!r}: missing 'name'; available: {', '.join(list_miners())}")
        name = cfg.pop("name")
    cls = _MINERS.get(name)
    check_kwargs("miner", name, cls, cfg)
    return cls(**cfg)
