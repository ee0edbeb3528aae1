"""One model factory: `build_model(name, **cfg)`, in the spirit of timm's `create_model`.

Model modules register their builders with `@register_model("name")`. Every module of this package is
imported on first use, so a new model file needs no edit anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import torch.nn as nn

from ..errors import ModelError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_discovered = False


def register_model(name: str) -> Callable:
    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ModelError(f"model name {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return decorator


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    package = importlib.import_module("reidkit.models")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "registry":
            importlib.import_module(f"reidkit.models.{info.name}")
    _discovered = True


def list_models() -> list[str]:
    _discover()
    return sorted(_BUILDERS)


def build_model(name: str, **cfg) -> nn.Module:
    """Build a registered model; unknown names raise a ModelError listing the valid ones."""
    _discover()
    if name not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](**cfg)
