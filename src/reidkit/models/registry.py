"""One model factory: `build_model(name, **cfg)`, in the spirit of timm's `create_model`.

Model modules register their builders with `@register_model("name")`. Every module of this package (and its
subpackages) is imported on first use, so a new model file needs no edit anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import torch.nn as nn

from ..errors import ModelError
from ..registry import Registry

_BUILDERS: Registry[Callable[..., nn.Module]] = Registry("model", ModelError)
_discovered = False


def register_model(name: str) -> Callable:
    return _BUILDERS.register(name)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    package = importlib.import_module("reidkit.models")
    for info in pkgutil.walk_packages(package.__path__, prefix="reidkit.models."):
        if info.name != __name__:
            importlib.import_module(info.name)
    _discovered = True


def list_models() -> list[str]:
    _discover()
    return _BUILDERS.names()


def build_model(name: str, **cfg) -> nn.Module:
    """Build a registered model; unknown names raise a ModelError listing the valid ones."""
    _discover()
    return _BUILDERS.get(name)(**cfg)
