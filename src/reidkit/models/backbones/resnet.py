"""ResNet-50 and ResNet-50-IBN-a (random init), with key names of torchvision / the official IBN-Net code.

So a user's `resnet50` file from torchvision or `resnet50_ibn_a` file from IBN-Net loads into the backbone
(their `fc.*` keys are reported as unexpected). `last_stride=1` keeps layer4 at stride 16, the
strong-baseline practice for re-identification (Luo et al. 2019).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Backbone, check_last_stride, init_conv_norm, no_offline_weights, register_backbone


class IBN(nn.Module):
    """Instance-batch normalisation (IBN-a): InstanceNorm on the first half of the channels, BatchNorm on the rest."""

    def __init__(self, channels: int, in_ratio: float = 0.5):
        super().__init__()
        self.half = int(channels * in_ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(first.contiguous()), self.BN(second.contiguous())], dim=1)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, torchvision's "v1.5") -> 1x1 with 4x expansion."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, ibn: bool = False):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = IBN(planes) if ibn else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), last_stride: int = 2, ibn: bool = False):
        super().__init__()
        check_last_stride("resnet", last_stride)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._in_ch = 64
        # IBN-a puts IN in layers 1-3 only: layer4 features must stay discriminative.
        self.layer1 = self._make_layer(64, layers[0], 1, ibn)
        self.layer2 = self._make_layer(128, layers[1], 2, ibn)
        self.layer3 = self._make_layer(256, layers[2], 2, ibn)
        self.layer4 = self._make_layer(512, layers[3], last_stride, False)
        self.out_channels = 512 * Bottleneck.expansion
        self.output_stride = 32 if last_stride == 2 else 16
        init_conv_norm(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, ibn: bool) -> nn.Sequential:
        layers = [Bottleneck(self._in_ch, planes, stride, ibn)]
        self._in_ch = planes * Bottleneck.expansion
        layers += [Bottleneck(self._in_ch, planes, 1, ibn) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register_backbone("resnet50")
def resnet50(pretrained: bool = False, last_stride: int = 2) -> ResNet:
    if pretrained:
        raise no_offline_weights("resnet50")
    return ResNet((3, 4, 6, 3), last_stride=last_stride)


@register_backbone("resnet50_ibn_a")
def resnet50_ibn_a(pretrained: bool = False, last_stride: int = 2) -> ResNet:
    if pretrained:
        raise no_offline_weights("resnet50_ibn_a")
    return ResNet((3, 4, 6, 3), last_stride=last_stride, ibn=True)
