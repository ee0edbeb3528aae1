"""GLAD: Global-Local-Alignment Descriptor (Wei, Zhang, Yao, Gao, Tian, ACM MM 2017).

Four streams share one backbone: the whole image and three part crops (head, upper body, lower body) whose boxes
come from four pose keypoints (`reidkit.data.keypoints.glad_boxes`: B^h, B^ub, B^lb with the vertical extension
alpha). Each crop is resampled from the (normalised) input by `crop_resize` to its own size, so a part is seen at
the backbone's usual scale. Each stream is globally pooled (no FC layer, as in GLAD), passed through a BNNeck and
its own identity classifier: training has one identity loss per stream (`logits` = whole image, `part_logits`
(N, 3, classes) = the three parts, one tensor so distributed runs gather it like the other per-image outputs; the
`parts` task applies the configured identity loss to each), and a metric loss, if configured,
sees the concatenation (`features`). Inference: the four BN features, each L2-normalised, concatenated.

    model = build_model("glad", backbone="efficientnet_lite0", num_classes=617, input_size=(192, 96))
    out = model(x, boxes)           # training: features, bn_features, logits, part_logits, feature_map
    emb = model.eval()(x, boxes)    # (N, 4 * C)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import ModelError
from .backbones import build_backbone
from .parts import PartModel, bnneck, check_common, classifier, crop_resize
from .pooling import build_pooling
from .registry import register_model

STREAMS = ("global", "head", "upper_body", "lower_body")


class GLAD(PartModel):
    box_layout = "glad"
    num_boxes = 3

    def __init__(self, backbone: nn.Module, pooling: str, num_classes: int | None, input_size: tuple[int, int],
                 part_heights: tuple[float, float, float], alpha: float, pose_threshold: float,
                 bnneck_on: bool = True, dropout: float = 0.0, gem_p: float = 3.0, gem_learnable: bool = True):
        super().__init__({"alpha": float(alpha)}, pose_threshold, input_size)
        self.backbone = backbone
        channels = int(backbone.out_channels)
        self.pools = nn.ModuleList(build_pooling(pooling, gem_p=gem_p, gem_learnable=gem_learnable)
                                   for _ in STREAMS)
        self.bottlenecks = nn.ModuleList(bnneck(channels, bnneck_on) for _ in STREAMS)
        heads = [classifier(channels, num_classes) for _ in STREAMS]
        self.classifiers = nn.ModuleList(heads) if num_classes else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        height, width = self.input_size
        # crop sizes: a fraction of the input height each, the full width, rounded to the backbone's stride
        stride = int(getattr(backbone, "output_stride", 16))
        self.part_sizes = tuple((max(stride, round(height * f / stride) * stride), width) for f in part_heights)
        self.embedding_dim = channels * len(STREAMS)
        self.num_classes = num_classes
        self.input_mean = tuple(backbone.input_mean)
        self.input_std = tuple(backbone.input_std)

    def stream_maps(self, x: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
        """Backbone feature maps of the whole image and the three part crops."""
        crops = [crop_resize(x, boxes[:, i:i + 1], size) for i, size in enumerate(self.part_sizes)]
        return [self.backbone(image) for image in (x, *crops)]

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> dict[str, Any] | torch.Tensor:
        boxes = self.boxes_for(x, boxes)
        maps = self.stream_maps(x, boxes)
        return self.stream_outputs([pool(m) for pool, m in zip(self.pools, maps)], maps[0])


@register_model("glad", task="parts")
def build_glad(backbone: str = "efficientnet_lite0", pretrained: bool = False, pooling: str = "gem",
               embedding_dim: int | None = None, bnneck: bool = True, num_classes: int | None = None,
               dropout: float = 0.0, gem_p: float = 3.0, gem_learnable: bool = True, last_stride: int | None = None,
               input_size: tuple[int, int] = (256, 128), backbone_options: dict | None = None, local_dim: int = 0,
               local_pool: str = "max", alpha: float = 0.04, part_heights: tuple[float, ...] = (0.25, 0.42, 0.5),
               pose_threshold: float = 0.5) -> GLAD:
    """GLAD on any registered backbone. alpha: the vertical part extension (fraction of the crop height);
    part_heights: the crops' heights as fractions of the input height (width: the input width); pose_threshold:
    below this pose-presence probability a crop gets the fixed-proportion fallback boxes."""
    check_common(embedding_dim, local_dim, num_classes, dropout, "glad")
    if not 0.0 <= alpha < 0.5:
        raise ModelError(f"glad: alpha={alpha!r}: expected a fraction of the crop height in [0, 0.5)")
    if len(part_heights) != 3 or not all(0.0 < f <= 1.0 for f in part_heights):
        raise ModelError(f"glad: part_heights={part_heights!r}: expected three fractions of the input height")
    options = dict(backbone_options or {})
    if last_stride is not None:
        options["last_stride"] = last_stride
    net = build_backbone(backbone, pretrained=pretrained, **options)
    return GLAD(net, pooling, num_classes, tuple(input_size), tuple(part_heights), alpha, pose_threshold,
                bnneck_on=bnneck, dropout=dropout, gem_p=gem_p, gem_learnable=gem_learnable)
