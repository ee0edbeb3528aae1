"""Shared pieces of the pose-guided part models (GLAD, SpindleNet): box crops, backbone stages, the part model base.

Part boxes are (N, P, 4) tensors [x1, y1, x2, y2] in fractions of the input's width / height (computed from pose
keypoints by `reidkit.data.keypoints`; models never import the data layer). A part model's `forward(x, boxes)`
takes them; called without boxes it asks its `box_fn` (set by `reidkit.data.keypoints.attach_pose_boxes`, which
the Extractor calls) to compute them from the pose of each input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .backbones.efficientnet_lite import EfficientNetLite
from .backbones.mobilenetv2 import MobileNetV2
from .backbones.resnet import ResNet
from .backbones.simple_cnn import SimpleCNN


def crop_resize(maps: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """RoI-align by bilinear sampling (torchvision-free): maps (N, C, H, W), boxes (N, P, 4) [x1, y1, x2, y2] in
    fractions of W / H -> (N * P, C, h, w) crops, image-major. One affine grid per box (align_corners=False: 0 and
    1 are the outer pixel edges, so a box on pixel edges with an integer scale samples pixel centres exactly)."""
    n, p = boxes.shape[:2]
    b = boxes.reshape(n * p, 4).to(maps.dtype)
    theta = torch.zeros(n * p, 2, 3, dtype=maps.dtype, device=maps.device)
    theta[:, 0, 0] = b[:, 2] - b[:, 0]
    theta[:, 0, 2] = b[:, 0] + b[:, 2] - 1
    theta[:, 1, 1] = b[:, 3] - b[:, 1]
    theta[:, 1, 2] = b[:, 1] + b[:, 3] - 1
    grid = F.affine_grid(theta, [n * p, maps.shape[1], *size], align_corners=False)
    source = maps.unsqueeze(1).expand(n, p, *maps.shape[1:]).reshape(n * p, *maps.shape[1:])
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------------------------------------ backbone stages
# SpindleNet pools macro regions after stage 1 and micro regions after stage 2 of a three-stage network. The
# backbones only expose their final map, so the split is stated here per backbone family (output strides 8 / 16 /
# final), as plain data: the model keeps the backbone as its one registered module (no duplicated weights).

def _channel_stage_starts(out_channels: list[int]) -> list[int]:
    """Index of the first block of each stage (a stage = consecutive blocks with the same output channels)."""
    return [i for i, c in enumerate(out_channels) if i == 0 or c != out_channels[i - 1]]


def stage_plan(backbone: nn.Module) -> tuple[str, int, int]:
    """(family, first block of stage 2, first block of stage 3) for the supported backbones."""
    if isinstance(backbone, EfficientNetLite):
        starts = _channel_stage_starts([b._bn2.num_features for b in backbone._blocks])
        return "efficientnet_lite", starts[3], starts[5]  # stride 8 (40 ch) | 16 (112 ch) | head
    if isinstance(backbone, MobileNetV2):
        blocks = list(backbone.features)[1:-1]
        starts = _channel_stage_starts([b.conv[-1].num_features for b in blocks])
        return "mobilenetv2", 1 + starts[3], 1 + starts[5]  # stride 8 (32 ch) | 16 (96 ch) | head
    if isinstance(backbone, ResNet):
        return "resnet", 0, 0  # stem + layer1 + layer2 | layer3 | layer4
    if isinstance(backbone, SimpleCNN):
        return "simple_cnn", 6, 9  # two conv stages (stride 4) | one (8) | one
    raise ModelError(f"backbone {type(backbone).__name__}: the part models split efficientnet_lite*, mobilenetv2, "
                     "resnet50(_ibn_a) and simple_cnn into stages; this one is not supported")


def run_stage(backbone: nn.Module, plan: tuple[str, int, int], stage: int, x: torch.Tensor) -> torch.Tensor:
    """Stage 1, 2 or 3 of `backbone` on x; the three in a row equal `backbone(x)`."""
    family, a, b = plan
    if family == "efficientnet_lite":
        blocks = backbone._blocks
        if stage == 1:
            x = F.relu6(backbone._bn0(backbone._conv_stem(x)))
        for block in blocks[[0, a, b][stage - 1]:[a, b, len(blocks)][stage - 1]]:
            x = block(x)
        return F.relu6(backbone._bn1(backbone._conv_head(x))) if stage == 3 else x
    if family == "resnet":
        if stage == 1:
            x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
            return backbone.layer2(backbone.layer1(x))
        return backbone.layer3(x) if stage == 2 else backbone.layer4(x)
    layers = backbone.features
    bounds = [0, a, b, len(layers)]
    return layers[bounds[stage - 1]:bounds[stage]](x)


# ------------------------------------------------------------------------------------------ model base

class PartModel(nn.Module):
    """Base of the pose-guided part models: boxes in, a concatenated descriptor out.

    Subclasses set `box_layout` ("glad" / "spindle", the `reidkit.data.keypoints` geometry) and `box_params`
    (that geometry's parameters), so training and inference compute the same boxes from the same keypoints.
    """

    box_layout: str
    num_boxes: int

    def __init__(self, box_params: dict, pose_threshold: float, input_size: tuple[int, int]):
        super().__init__()
        if not 0.0 <= pose_threshold <= 1.0:
            raise ModelError(f"pose_threshold={pose_threshold!r}: expected a probability in [0, 1]")
        self.box_params = dict(box_params)
        self.pose_threshold = float(pose_threshold)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.box_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def descriptor_dim(self) -> int:
        return self.embedding_dim  # the streams' concatenation (set by the subclass)

    def boxes_for(self, x: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
        if boxes is None:
            if self.box_fn is None:
                raise ModelError(f"{type(self).__name__} needs part boxes: pass forward(x, boxes) or embed with "
                                 "reidkit's Extractor, which computes them from pose keypoints "
                                 "(reidkit.data.keypoints.attach_pose_boxes)")
            boxes = self.box_fn(x)
        if boxes.shape != (x.shape[0], self.num_boxes, 4):
            raise ModelError(f"{type(self).__name__}: boxes must be (N, {self.num_boxes}, 4) for N={x.shape[0]} "
                             f"inputs, got {tuple(boxes.shape)}")
        return boxes.to(device=x.device, dtype=x.dtype)

    def stream_outputs(self, features: list[torch.Tensor], feature_map: torch.Tensor | None
                       ) -> dict[str, Any] | torch.Tensor:
        """The outputs of the pooled streams (the whole image first): in eval mode the fused descriptor; in
        training the concatenated features, BNNeck features, the whole image's logits and the parts' logits.
        Subclasses own `bottlenecks`, `classifiers` (empty without identities) and `dropout`."""
        bn = [neck(f) for neck, f in zip(self.bottlenecks, features)]
        if not self.training:
            return fused_descriptor(bn)
        logits = [head(self.dropout(b)) for head, b in zip(self.classifiers, bn)] if self.classifiers else None
        return {"features": torch.cat(features, dim=1), "bn_features": torch.cat(bn, dim=1),
                "logits": logits[0] if logits else None,
                "part_logits": torch.stack(logits[1:], dim=1) if logits else None,
                "feature_map": feature_map}

    def embed(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding model's feature map -> embedding step (used by `explain`'s Grad-CAM) has no equivalent
        here: the descriptor pools several crops chosen by pose keypoints."""
        raise ModelError(f"{type(self).__name__} is a pose-guided part model: its descriptor pools several part "
                         "crops, not one feature map, so feature-map tools (explain) do not apply to it")


def bnneck(dim: int, enabled: bool) -> nn.Module:
    """Strong-baseline BNNeck (no shift) or identity."""
    if not enabled:
        return nn.Identity()
    bn = nn.BatchNorm1d(dim)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def classifier(dim: int, num_classes: int | None) -> nn.Module | None:
    if not num_classes:
        return None
    layer = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(layer.weight, std=0.001)
    return layer


def fused_descriptor(streams: list[torch.Tensor]) -> torch.Tensor:
    """Inference descriptor: each stream L2-normalised (equal say), concatenated, normalised again."""
    return F.normalize(torch.cat([F.normalize(s, dim=1) for s in streams], dim=1), dim=1)


def check_common(embedding_dim: int | None, local_dim: int, num_classes: int | None, dropout: float,
                 name: str) -> None:
    """Options of the shared model config that the part models do not offer."""
    if embedding_dim:
        raise ModelError(f"{name}: embedding_dim={embedding_dim} is not supported (the descriptor concatenates "
                         "the pooled streams, global pooling instead of FC as in GLAD)")
    if local_dim:
        raise ModelError(f"{name}: local_dim={local_dim}: the AlignedReID local branch is for model 'embedding'")
    if num_classes is not None and num_classes < 1:
        raise ModelError(f"{name}: num_classes={num_classes!r}: expected a positive integer or None")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"{name}: dropout={dropout!r}: expected 0 <= dropout < 1")
