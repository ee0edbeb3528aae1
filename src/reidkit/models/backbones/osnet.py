"""OSNet x1.0 / x0.25 (Zhou et al., "Omni-Scale Feature Learning for Person Re-Identification", ICCV 2019).

Random init; module names follow torchreid's `osnet.py` (conv1, conv2..conv5, OSBlock conv1/conv2a..d/gate/
conv3/downsample), so torchreid weights load into this backbone with their `fc.*`/`classifier.*` keys
reported as unexpected. The backbone ends at conv5 (the feature map); torchreid's 512-d fc belongs to the
head (`embedding_dim=512` in the embedding model plays that role). Output stride is 16: OSNet has no
strided last stage, so there is no last_stride option.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Backbone, init_conv_norm, no_offline_weights, register_backbone


class ConvLayer(nn.Module):
    """conv + BN (+ ReLU): torchreid's ConvLayer / Conv1x1 / Conv1x1Linear share this layout.

    instance_norm=True puts an affine InstanceNorm where the BN was (OSNet-AIN's first conv; the attribute keeps
    the name `bn`, as in torchreid's and Intel's files)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, relu: bool = True,
                 instance_norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.InstanceNorm2d(out_ch, affine=True) if instance_norm else nn.BatchNorm2d(out_ch)
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


class GroupNormGate(nn.Module):
    """Parameter-light aggregation gate of Intel's OSNet-AIN: channel weights = sigmoid(GroupNorm(pooled input)).

    Read from the 0267 graph: GlobalAveragePool -> reshape to 16 groups -> MeanVarianceNormalization -> per-channel
    scale and shift (`gn.weight`, `gn.bias`) -> Sigmoid -> Mul. The graph's MVN has no epsilon; eps=1e-9 is the one
    `OnnxExtractor` adds to keep onnxruntime from 0/0 (docs/deployment.md), so both runtimes compute the same gate.
    """

    def __init__(self, channels: int, groups: int = 16, eps: float = 1e-9):
        super().__init__()
        self.gn = nn.GroupNorm(groups, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gn(x.mean(dim=(2, 3), keepdim=True)))


class OSBlock(nn.Module):
    """Omni-scale residual block: 4 streams of 1..4 stacked light 3x3 convs (receptive fields 3..9).

    gate "fc": the unified aggregation gate of the paper (ChannelGate); "gn": Intel's GroupNormGate."""

    def __init__(self, in_ch: int, out_ch: int, bottleneck_reduction: int = 4, gate: str = "fc"):
        super().__init__()
        mid = out_ch // bottleneck_reduction
        self.conv1 = ConvLayer(in_ch, mid)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(4)))
        self.gate = GroupNormGate(mid) if gate == "gn" else ChannelGate(mid)
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
    def _make_layer(blocks: int, in_ch: int, out_ch: int, reduce: bool, later_gate: str = "fc") -> nn.Sequential:
        layers: list[nn.Module] = [OSBlock(in_ch, out_ch)]
        layers += [OSBlock(out_ch, out_ch, gate=later_gate) for _ in range(blocks - 1)]
        if reduce:  # transition: 1x1 conv then 2x2 average pooling
            layers.append(nn.Sequential(ConvLayer(out_ch, out_ch), nn.AvgPool2d(2, stride=2)))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))


class GlobalDepthwiseConv(nn.Conv2d):
    """Learned global pooling (a depthwise conv whose kernel covers the whole map, Intel's `global_avgpool`).

    The kernel fits the map of a 256x128 input (16x8). Other input sizes resample the kernel to the map and scale
    it by the area ratio, so the weighted sum keeps its magnitude (an approximation: fine-tune at that size).
    """

    def __init__(self, channels: int, map_size: tuple[int, int] = (16, 8)):
        super().__init__(channels, channels, map_size, groups=channels, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(int(side) for side in x.shape[-2:])  # plain ints: an exported graph gets a fixed-shape kernel
        if size == tuple(self.kernel_size):
            return super().forward(x)
        area = self.kernel_size[0] * self.kernel_size[1] / (size[0] * size[1])
        weight = F.interpolate(self.weight, size=size, mode="bilinear", align_corners=False) * area
        return F.conv2d(x, weight, self.bias, groups=self.groups)


class OSNetAIN(Backbone):
    """Intel's OSNet-AIN (Open Model Zoo person-reidentification-retail-0267/0277), read from the 0267 graph.

    Against the paper's OSNet: an affine InstanceNorm on the input image (`in_first`) and after the first conv
    (`conv1.bn`), the second block of every stage gated by a GroupNormGate, and Intel's embedding head inside
    the backbone: learned global pooling (`global_avgpool`, a 16x8 depthwise conv), Linear + BatchNorm1d + PReLU
    (`fc.0/1/2`). The output is therefore the pooled embedding as an (N, feature_dim, 1, 1) map: use it with
    `pooling="avg"` (identity on a 1x1 map; GeM would clamp the PReLU's negative values). `forward_features`
    gives the conv5 map (stride 16) for part or local branches.

    `in_first` normalises every image per channel, so any per-channel scale and offset of the input cancels: the
    ImageNet mean/std the training pipeline applies give the same features as Intel's 0..255 input.
    """

    def __init__(self, channels: tuple[int, int, int, int], feature_dim: int = 256):
        super().__init__()
        self.in_first = nn.InstanceNorm2d(3, affine=True)
        self.conv1 = ConvLayer(3, channels[0], 7, stride=2, instance_norm=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = OSNet._make_layer(2, channels[0], channels[1], reduce=True, later_gate="gn")
        self.conv3 = OSNet._make_layer(2, channels[1], channels[2], reduce=True, later_gate="gn")
        self.conv4 = OSNet._make_layer(2, channels[2], channels[3], reduce=False, later_gate="gn")
        self.conv5 = ConvLayer(channels[3], channels[3])
        self.global_avgpool = GlobalDepthwiseConv(channels[3])
        self.fc = nn.Sequential(nn.Linear(channels[3], feature_dim), nn.BatchNorm1d(feature_dim), nn.PReLU(1))
        self.out_channels = feature_dim
        self.feature_channels = channels[3]
        self.output_stride = 16  # of the conv5 map (forward_features); forward pools it to 1x1
        # Set by an OpenVINO IR import, whose BatchNorms are folded (identity + bias): the first training batch
        # re-estimates their statistics. A plain attribute, not state: a checkpoint's BatchNorms are trained ones.
        self.calibrate_bn_on_first_batch = False
        init_conv_norm(self)

    def recalibrate_batchnorm(self, x: torch.Tensor) -> None:
        """Give every BatchNorm the statistics of its input on batch `x`, rescaling its affine so that the eval-mode
        function is unchanged: y = w (z - m) / sqrt(v + eps) + b holds for the new (m', v') with
        w' = w sqrt(v' + eps) / sqrt(v + eps) and b' = b + w (m' - m) / sqrt(v + eps). Training-mode BatchNorm
        (batch statistics) then starts where the imported eval-mode network is."""
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

        def record(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
            z = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)
            stats[module] = (z.mean(dim=1), z.var(dim=1, unbiased=False))

        hooks = [m.register_forward_pre_hook(record) for m in norms]
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                self.forward(x)
                for m in norms:
                    new_mean, new_var = stats[m]
                    old_std = (m.running_var + m.eps).sqrt()
                    m.bias.add_(m.weight * (new_mean - m.running_mean) / old_std)
                    m.weight.mul_((new_var + m.eps).sqrt() / old_std)
                    m.running_mean.copy_(new_mean)
                    m.running_var.copy_(new_var)
        finally:
            for hook in hooks:
                hook.remove()
            self.train(was_training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(self.in_first(x)))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.calibrate_bn_on_first_batch:
            self.calibrate_bn_on_first_batch = False
            self.recalibrate_batchnorm(x)
        pooled = self.global_avgpool(self.forward_features(x)).flatten(1)
        return self.fc(pooled)[:, :, None, None]


# width name -> stage channels; Intel ships x1.0 (0277) and x0.5 (0267), both vendored. Their x0.25 (0288) is left
# out: its 24-channel stage-3 gate cannot hold 16 GroupNorm groups, so its gate differs from the one read here.
OSNET_AIN_CHANNELS = {"x1_0": (64, 256, 384, 512), "x0_5": (32, 128, 192, 256)}
INTEL_ALIAS = {"x1_0": "intel-0277", "x0_5": "intel-0267"}  # `pretrained` names of the vendored files


def _osnet_ain(width: str, pretrained: bool | str, feature_dim: int) -> OSNetAIN:
    from .intel_import import load_intel_weights, vendored_weights

    net = OSNetAIN(OSNET_AIN_CHANNELS[width], feature_dim)
    name = f"osnet_ain_{width}"
    if pretrained is True or pretrained == INTEL_ALIAS[width]:
        pretrained = vendored_weights(name)
    if isinstance(pretrained, (str, os.PathLike)) and str(pretrained):
        load_intel_weights(net, pretrained, name)
        net.calibrate_bn_on_first_batch = Path(pretrained).suffix.lower() == ".xml"  # IR: BatchNorm folded
    return net


@register_backbone("osnet_ain_x1_0")
def osnet_ain_x1_0(pretrained: bool | str = False, feature_dim: int = 256) -> OSNetAIN:
    """pretrained=True (or "intel-0277"): the vendored Intel person-reidentification-retail-0277 (OpenVINO IR);
    a path: that Intel OSNet-AIN x1.0 file (.xml)."""
    return _osnet_ain("x1_0", pretrained, feature_dim)


@register_backbone("osnet_ain_x0_5")
def osnet_ain_x0_5(pretrained: bool | str = False, feature_dim: int = 256) -> OSNetAIN:
    """pretrained=True (or "intel-0267"): the vendored Intel person-reidentification-retail-0267; a path: that
    Intel OSNet-AIN x0.5 file (.onnx or OpenVINO .xml)."""
    return _osnet_ain("x0_5", pretrained, feature_dim)


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
