"""OSNet x1.0 / x0.25 (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019).

Random init; module names follow torchreid's `osnet.py` (conv1, conv2..conv5, OSBlock conv1/conv2a..d/gate/
conv3/downsample), so torchreid weights load into this backbone with their `fc.*`/`classifier.*` keys
reported as unexpected. The backbone ends at conv5 (the feature map); torchreid's 512-d fc belongs to the
head (`embedding_dim=512` in the embedding model plays that role). Output stride is 16: OSNet has no
strided last stage, so there is no last_stride option.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Backbone, init_conv_norm, no_offline_weights, register_backbone


class ConvLayer(nn.Module):
    """conv + BN (+ ReLU): torchreid's ConvLayer / Conv1x1 / Conv1x1Linear share this layout."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class LightConv3x3(nn.Module):
    """1x1 linear conv then depthwise 3x3 conv, BN, ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, groups=out_ch, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Unified aggregation gate shared by all streams: channel weights from the pooled input."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class OSBlock(nn.Module):
    """Omni-scale residual block: 4 streams of 1..4 stacked light 3x3 convs (receptive fields 3..9)."""

    def __init__(self, in_ch: int, out_ch: int, bottleneck_reduction: int = 4):
        super().__init__()
        mid = out_ch // bottleneck_reduction
        self.conv1 = ConvLayer(in_ch, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(4)))
        self.gate = ChannelGate(mid)
        self.conv3 = ConvLayer(mid, out_ch, relu=False)
        self.downsample = ConvLayer(in_ch, out_ch, relu=False) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        streams = (self.conv2a(x1), self.conv2b(x1), self.conv2c(x1), self.conv2d(x1))
        x2 = sum(self.gate(s) for s in streams)
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(x2) + identity)


class OSNet(Backbone):
    def __init__(self, channels: tuple[int, int, int, int], layers: tuple[int, int, int] = (2, 2, 2)):
        super().__init__()
        self.conv1 = ConvLayer(3, channels[0], 7, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = self._make_layer(layers[0], channels[0], channels[1], reduce=True)
        self.conv3 = self._make_layer(layers[1], channels[1], channels[2], reduce=True)
        self.conv4 = self._make_layer(layers[2], channels[2], channels[3], reduce=False)
        self.conv5 = ConvLayer(channels[3], channels[3])
        self.out_channels = channels[3]
        self.output_stride = 16
        init_conv_norm(self)

    @staticmethod
    def _make_layer(blocks: int, in_ch: int, out_ch: int, reduce: bool) -> nn.Sequential:
        layers: list[nn.Module] = [OSBlock(in_ch, out_ch)]
        layers += [OSBlock(out_ch, out_ch) for _ in range(blocks - 1)]
        if reduce:  # transition: 1x1 conv then 2x2 average pooling
            layers.append(nn.Sequential(ConvLayer(out_ch, out_ch), nn.AvgPool2d(2, stride=2)))
        return nn.Sequential(*layers)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))


@register_backbone("osnet_x1_0")
def osnet_x1_0(pretrained: bool = False) -> OSNet:
    if pretrained:
        raise no_offline_weights("osnet_x1_0")
    return OSNet((64, 256, 384, 512))


@register_backbone("osnet_x0_25")
def osnet_x0_25(pretrained: bool = False) -> OSNet:
    if pretrained:
        raise no_offline_weights("osnet_x0_25")
    return OSNet((16, 64, 96, 128))
