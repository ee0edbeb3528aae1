"""One model factory: `build_model(name, **cfg)`, in the spirit of timm's `create_model`.

Model modules register their builders with `@register_model("name", task=..., options=...)`: `task` names the
training task that trains the model ("embedding": identity/metric losses on one image at a time; "pair": a
Siamese network scoring image pairs), `options` the task-config options (`model.<option>`) that only this model
takes, so the trainer refuses them for other models instead of ignoring them. Every module of this package (and
its subpackages) is imported on first use, so a new model file needs no edit anywhere else; a model defined
outside the package registers when its module is imported.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn as nn

from ..errors import ConfigError, ModelError
from ..registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder, the training task that trains it and its model-specific options."""

    name: str
    builder: Callable[..., nn.Module]
    task: str = "embedding"
    options: tuple[str, ...] = ()


_MODELS: Registry[ModelSpec] = Registry("model", ModelError)
_discovered = False


def register_model(name: str, task: str = "embedding", options: Sequence[str] = ()) -> Callable:
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS.register(name)(ModelSpec(name, builder, task, tuple(options)))
        return builder

    return decorator


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    package = importlib.import_module("reidkit.models")
    for info in pkgutil.walk_packages(package.__path__, prefix="reidkit.models."):
        if info.name != __name__:
            importlib.import_module(info.name)
    _discovered = True


def list_models(task: str | None = None) -> list[str]:
    """Registered model names (of one training task if given)."""
    _discover()
    return [n for n in _MODELS.names() if task is None or _MODELS.get(n).task == task]


def model_spec(name: str) -> ModelSpec:
    """The registration of `name`; unknown names raise a ModelError listing the valid ones."""
    _discover()
    return _MODELS.get(name)


def builder_params(name: str, params: dict) -> dict:
    """`params` (config `model.params`) checked against the keyword arguments of model `name`'s builder."""
    accepted = inspect.signature(model_spec(name).builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [k for k in params if k not in accepted and not takes_any]
    if unknown:
        raise ConfigError(f"model.params: {', '.join(map(repr, unknown))} not taken by model {name!r} "
                          f"(its builder takes: {', '.join(accepted) or 'nothing'})")
    return dict(params)


def build_model(name: str, **cfg) -> nn.Module:
    """Build a registered model; unknown names raise a ModelError listing the valid ones."""
    return model_spec(name).builder(**cfg)
