"""Backbone contract and registry: `build_backbone(name, pretrained=False, **kw)`.

Every backbone maps an RGB batch (N,3,H,W), normalised with its own `input_mean`/`input_std` (0..1 scale),
to its final feature map (N, out_channels, h, w). `output_stride` is H/h for inputs divisible by it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn as nn

from ...errors import ModelError
from ...registry import Registry

# Normalisation of torchvision-style ImageNet training (RGB scaled to 0..1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class: subclasses set these attributes and implement `forward` -> final feature map."""

    out_channels: int
    output_stride: int
    input_mean: tuple[float, float, float] = IMAGENET_MEAN
    input_std: tuple[float, float, float] = IMAGENET_STD
    # Where the loaded ImageNet weights came from (None = random init); for logs and model cards.
    weights_source: str | None = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map, named as in timm for code that expects it (e.g. a local/part branch)."""
        return self(x)


BackboneBuilder = Callable[..., Backbone]
_BACKBONES: Registry[BackboneBuilder] = Registry("backbone", ModelError)


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    return _BACKBONES.register(name)


def list_backbones() -> list[str]:
    return _BACKBONES.names()


def build_backbone(name: str, pretrained: bool = False, **kwargs) -> Backbone:
    """Build backbone `name`; `pretrained=True` loads its offline ImageNet weights (ModelError if it has none).

    Options a backbone does not take raise a ModelError naming the options it does take.
    """
    builder = _BACKBONES.get(name)
    accepted = [p for p in inspect.signature(builder).parameters if p != "pretrained"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelError(f"backbone {name!r} does not take option(s) {unknown}; it takes {accepted or 'none'}")
    return builder(pretrained=pretrained, **kwargs)


def check_last_stride(name: str, last_stride: int) -> None:
    if last_stride not in (1, 2):
        raise ModelError(f"{name}: last_stride={last_stride!r}; expected 1 or 2")


def no_offline_weights(name: str) -> ModelError:
    return ModelError(
        f"{name} has no offline ImageNet weights in reidkit; build it with pretrained=False and load your own "
        "with reidkit.models.embedding.load_user_weights(model.backbone, path)"
    )


def init_conv_norm(module: nn.Module) -> None:
    """He (fan-out) init for every conv, zero conv biases, unit/zero affine norms: the ImageNet-recipe init
    shared by every backbone trained from scratch."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
