"""A tiny random-init CNN (4 conv-BN-ReLU stages) for demos and tests: trains in seconds on a CPU."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ModelError
from .base import Backbone, check_last_stride, init_conv_norm, no_offline_weights, register_backbone


class SimpleCNN(Backbone):
    def __init__(self, width: int = 32, last_stride: int = 2):
        super().__init__()
        check_last_stride("simple_cnn", last_stride)
        channels = [3, width, width * 2, width * 4, width * 8]
        strides = [2, 2, 2, last_stride]
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.out_channels = channels[-1]
        self.output_stride = 8 * last_stride
        init_conv_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_backbone("simple_cnn")
def simple_cnn(pretrained: bool = False, width: int = 32, last_stride: int = 2) -> SimpleCNN:
    if pretrained:
        raise no_offline_weights("simple_cnn")
    if width < 1:
        raise ModelError(f"simple_cnn: width={width!r}; expected a positive number of channels")
    return SimpleCNN(width, last_stride)
