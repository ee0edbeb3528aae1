"""SpindleNet-style region model (Zhao, Tian, Sun, Shao, Yan, Yi, Wang, Tang, CVPR 2017).

Seven body regions from pose keypoints (`reidkit.data.keypoints.spindle_boxes`, SPINDLE_REGIONS order: three
macro regions head-shoulder / upper body / lower body, four micro regions right arm / left arm / right leg /
left leg). The backbone is split into three stages (`models.parts.stage_plan`):
  * global:  stage 3 (stage 2 (stage 1 (x)))
  * macro:   RoI-aligned from the stage-1 map, then stages 2 and 3 (the paper's FEN-C1 -> C2 -> C3)
  * micro:   RoI-aligned from the stage-2 map, then stage 3
Every map is globally pooled; each region feature is reduced to `region_dim` (its own FC + ReLU) and the seven
are fused by a tree of fusion units, each an element-wise max of its inputs followed by FC + ReLU (the paper's
"element-wise maximization + inner product"):
    arms = U(right_arm, left_arm)       legs = U(right_leg, left_leg)
    upper = U(upper_body, arms)         lower = U(lower_body, legs)
    body = U(head_shoulder, upper, lower)
Streams: the global feature and `body`, each with a BNNeck and an identity classifier (`logits`, `part_logits`);
the inference descriptor concatenates both, each L2-normalised.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import ModelError
from .backbones import build_backbone
from .parts import PartModel, bnneck, check_common, classifier, crop_resize, run_stage, stage_plan
from .pooling import build_pooling
from .registry import register_model

REGIONS = ("head_shoulder", "upper_body", "lower_body", "right_arm", "left_arm", "right_leg", "left_leg")
MACRO = 3  # the first three regions are pooled after stage 1, the other four after stage 2
# (fused name, inputs): evaluated in order, so a unit may use an earlier unit's output.
FUSION_TREE = (("arms", ("right_arm", "left_arm")), ("legs", ("right_leg", "left_leg")),
               ("upper", ("upper_body", "arms")), ("lower", ("lower_body", "legs")),
               ("body", ("head_shoulder", "upper", "lower")))


def tree_fusion(features: dict[str, torch.Tensor], units: nn.ModuleDict,
                tree: tuple[tuple[str, tuple[str, ...]], ...] = FUSION_TREE) -> torch.Tensor:
    """Fuse named (N, D) features bottom-up: each unit takes the element-wise max of its inputs; the last
    unit's output is the fused feature."""
    values = dict(features)
    for name, inputs in tree:
        values[name] = units[name](torch.stack([values[i] for i in inputs]).amax(dim=0))
    return values[tree[-1][0]]


class SpindleNet(PartModel):
    box_layout = "spindle"
    num_boxes = len(REGIONS)

    def __init__(self, backbone: nn.Module, pooling: str, num_classes: int | None, input_size: tuple[int, int],
                 region_dim: int, roi_scale: float, margin: float, pose_threshold: float, bnneck_on: bool = True,
                 dropout: float = 0.0, gem_p: float = 3.0, gem_learnable: bool = True):
        aspect = input_size[1] / input_size[0]
        super().__init__({"margin": float(margin), "aspect": float(aspect)}, pose_threshold, input_size)
        self.backbone = backbone
        self.plan = stage_plan(backbone)
        self.roi_scale = float(roi_scale)
        channels = int(backbone.out_channels)
        self.global_pool = build_pooling(pooling, gem_p=gem_p, gem_learnable=gem_learnable)
        self.region_pool = build_pooling(pooling, gem_p=gem_p, gem_learnable=gem_learnable)
        self.reduce = nn.ModuleDict({r: nn.Sequential(nn.Linear(channels, region_dim), nn.ReLU(inplace=True))
                                     for r in REGIONS})
        self.fusion = nn.ModuleDict({name: nn.Sequential(nn.Linear(region_dim, region_dim), nn.ReLU(inplace=True))
                                     for name, _ in FUSION_TREE})
        dims = (channels, region_dim)
        self.bottlenecks = nn.ModuleList(bnneck(d, bnneck_on) for d in dims)
        self.classifiers = nn.ModuleList(classifier(d, num_classes) for d in dims) if num_classes else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.embedding_dim = sum(dims)
        self.num_classes = num_classes
        self.input_mean = tuple(backbone.input_mean)
        self.input_std = tuple(backbone.input_std)

    def _roi(self, maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        size = (max(2, round(maps.shape[2] * self.roi_scale)), max(2, round(maps.shape[3] * self.roi_scale)))
        return crop_resize(maps, boxes, size)

    def region_features(self, x: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(global feature (N, C), {region: pooled feature (N, C)})."""
        n = x.shape[0]
        stage1 = run_stage(self.backbone, self.plan, 1, x)
        stage2 = run_stage(self.backbone, self.plan, 2, stage1)
        whole = run_stage(self.backbone, self.plan, 3, stage2)
        macro = self._roi(stage1, boxes[:, :MACRO])
        macro = run_stage(self.backbone, self.plan, 3, run_stage(self.backbone, self.plan, 2, macro))
        micro = run_stage(self.backbone, self.plan, 3, self._roi(stage2, boxes[:, MACRO:]))
        pooled = torch.cat([self.region_pool(macro).view(n, MACRO, -1),
                            self.region_pool(micro).view(n, len(REGIONS) - MACRO, -1)], dim=1)
        return self.global_pool(whole), {r: pooled[:, i] for i, r in enumerate(REGIONS)}

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> dict[str, Any] | torch.Tensor:
        boxes = self.boxes_for(x, boxes)
        global_feature, regions = self.region_features(x, boxes)
        fused = tree_fusion({r: self.reduce[r](f) for r, f in regions.items()}, self.fusion)
        return self.stream_outputs([global_feature, fused], None)


@register_model("spindle", task="parts")
def build_spindle(backbone: str = "efficientnet_lite0", pretrained: bool = False, pooling: str = "gem",
                  embedding_dim: int | None = None, bnneck: bool = True, num_classes: int | None = None,
                  dropout: float = 0.0, gem_p: float = 3.0, gem_learnable: bool = True,
                  last_stride: int | None = None, input_size: tuple[int, int] = (256, 128),
                  backbone_options: dict | None = None, local_dim: int = 0, local_pool: str = "max",
                  region_dim: int = 256, roi_scale: float = 0.5, margin: float = 0.08,
                  pose_threshold: float = 0.5) -> SpindleNet:
    """SpindleNet-style model on efficientnet_lite*, mobilenetv2, resnet50(_ibn_a) or simple_cnn. region_dim: size
    of the region features and fusion units (256 in the paper); roi_scale: region crops are this fraction of the
    stage map they are cut from (per side); margin: widening of the keypoint boxes (fraction of the crop width)."""
    check_common(embedding_dim, local_dim, num_classes, dropout, "spindle")
    if region_dim < 1:
        raise ModelError(f"spindle: region_dim={region_dim!r}: expected a positive size")
    if not 0.0 < roi_scale <= 2.0:
        raise ModelError(f"spindle: roi_scale={roi_scale!r}: expected a fraction of the stage map in (0, 2]")
    if not 0.0 <= margin < 0.5:
        raise ModelError(f"spindle: margin={margin!r}: expected a fraction of the crop width in [0, 0.5)")
    options = dict(backbone_options or {})
    if last_stride is not None:
        options["last_stride"] = last_stride
    net = build_backbone(backbone, pretrained=pretrained, **options)
    return SpindleNet(net, pooling, num_classes, tuple(input_size), region_dim, roi_scale, margin, pose_threshold,
                      bnneck_on=bnneck, dropout=dropout, gem_p=gem_p, gem_learnable=gem_learnable)
