"""PL-Net, part loss networks (Yao et al. 2017): unsupervised parts from where the feature-map channels fire.

Part generation (once, before training, from the pretrained backbone: `PLNetModel.fit_parts`, called by the plnet
task on a seeded sample of training images):
  1. per image and channel, the position (row, col) of the channel's spatial argmax (`peak_positions`);
  2. each channel is described by its mean peak position over the sample images (row / (h-1), col / (w-1)), and
     k-means (scikit-learn) groups these C points into K parts: channels that fire at the same place; parts are
     numbered top to bottom by their centre's row (`cluster_channels`).
Per image (every forward pass), part k's region is the box spanning its channels' peaks in that image, from the
`box_quantile` to the 1 - `box_quantile` quantile of their rows and columns (robust to a few stray channels;
`part_boxes`), and the feature map is ROI-pooled over it (`roi_pool`, max by default, as ROI pooling) into a
local feature: Linear -> BN to `part_dim`, with its own identity classifier (the part loss: one cross-entropy per
part, trained by training/tasks/plnet.py). The descriptor concatenates the L2-normalised global BN feature and
the K L2-normalised part features (cosine distance = mean of the K + 1 per-piece cosine distances).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .embedding import EmbeddingModel, build_embedding_model, init_kaiming
from .registry import register_model

POOLS = ("max", "avg")


def peak_positions(feature_map: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, 2) long (row, col) of each channel's spatial maximum (the first in row-major order
    on ties, as torch.argmax)."""
    n, c, h, w = feature_map.shape
    flat = feature_map.reshape(n, c, h * w).argmax(dim=2)
    return torch.stack([flat // w, flat % w], dim=2)


def cluster_channels(peaks: torch.Tensor, height: int, width: int, parts: int, seed: int = 0) -> torch.Tensor:
    """(N, C, 2) peak positions -> (C,) part index of each channel, parts numbered by their centre's row (top first).

    k-means (scikit-learn, 10 initialisations) over the channels' mean peak positions across the N images, scaled
    to [0, 1] by the map's size. A part that k-means leaves empty (fewer distinct channels than parts) stays
    empty: `part_boxes` then gives it the whole map."""
    from sklearn.cluster import KMeans  # scikit-learn: the maintained k-means (k-means++ init, several restarts)

    c = peaks.shape[1]
    if c < parts:
        raise ModelError(f"PL-Net: {parts} parts from {c} channels: need at least as many channels as parts")
    scale = torch.tensor([max(height - 1, 1), max(width - 1, 1)], dtype=torch.float64)
    points = (peaks.double().mean(dim=0) / scale).numpy()  # (C, 2)
    kmeans = KMeans(n_clusters=parts, n_init=10, random_state=seed).fit(points)
    rank = np.empty(parts, np.int64)
    rank[np.argsort(kmeans.cluster_centers_[:, 0], kind="stable")] = np.arange(parts)
    return torch.as_tensor(rank[kmeans.labels_], dtype=torch.long)


def part_boxes(peaks: torch.Tensor, assignment: torch.Tensor, parts: int, height: int, width: int,
               quantile: float = 0.25) -> torch.Tensor:
    """(N, C, 2) peaks, (C,) assignment -> (N, parts, 4) long inclusive cell boxes (row0, row1, col0, col1): per
    image and part, floor of the `quantile` and ceil of the 1 - `quantile` quantile (linear interpolation) of its
    channels' peak rows and columns. A part without channels covers the whole map."""
    n = peaks.shape[0]
    boxes = torch.tensor([0, height - 1, 0, width - 1]).repeat(n, parts, 1)
    q = torch.tensor([quantile, 1.0 - quantile])
    for k in range(parts):  # a loop over the K parts (a handful), vectorised over images and channels
        members = peaks[:, assignment == k].float()  # (N, C_k, 2)
        if members.shape[1] == 0:
            continue
        bounds = torch.quantile(members, q, dim=1)  # (2, N, 2): [low/high, image, row/col]
        boxes[:, k] = torch.stack([bounds[0, :, 0].floor(), bounds[1, :, 0].ceil(),
                                   bounds[0, :, 1].floor(), bounds[1, :, 1].ceil()], dim=1).long()
    return boxes


def roi_pool(feature_map: torch.Tensor, boxes: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """(N, C, h, w) map, (N, K, 4) inclusive cell boxes -> (N, K, C): the max (or mean) of each channel over each
    box. Boxes are cell-aligned, so this is ROI pooling with a 1x1 output bin, done with masks (no torchvision)."""
    n, c, h, w = feature_map.shape
    rows = torch.arange(h, device=feature_map.device)
    cols = torch.arange(w, device=feature_map.device)
    b = boxes.to(feature_map.device)
    in_rows = (rows >= b[..., 0:1]) & (rows <= b[..., 1:2])  # (N, K, h)
    in_cols = (cols >= b[..., 2:3]) & (cols <= b[..., 3:4])  # (N, K, w)
    mask = (in_rows.unsqueeze(3) & in_cols.unsqueeze(2)).reshape(n, -1, h * w)  # (N, K, h*w)
    flat = feature_map.reshape(n, c, h * w)
    if mode == "avg":
        weights = mask.to(flat.dtype) / mask.sum(2, keepdim=True).clamp(min=1).to(flat.dtype)
        return torch.einsum("nkp,ncp->nkc", weights, flat)
    # max: one masked copy per part (K x the map's size), no loop over pixels
    masked = flat.unsqueeze(1).masked_fill(~mask.unsqueeze(2), float("-inf"))
    return masked.amax(dim=3)


class PLNetModel(EmbeddingModel):
    """Training outputs: the embedding model's plus "part_features" (N, K, part_dim) after their BN and
    "part_logits" (N, K, num_classes). Eval: the global + part descriptor (N, D + K * part_dim), L2-normalised."""

    def __init__(self, base: EmbeddingModel, parts: int, part_dim: int = 256, part_pool: str = "max",
                 box_quantile: float = 0.25) -> None:
        super().__init__(base.backbone, base.pool, embedding_dim=base.fc.out_features if base.fc else None,
                         bnneck=base.bottleneck is not None, num_classes=base.num_classes,
                         dropout=getattr(base.dropout, "p", 0.0), input_size=base.input_size)
        channels = int(self.backbone.out_channels)
        self.parts, self.part_dim, self.part_pool, self.box_quantile = parts, part_dim, part_pool, box_quantile
        # Part of each backbone channel, set by fit_parts (-1: not yet); saved with the weights.
        self.register_buffer("part_assignment", torch.full((channels,), -1, dtype=torch.long))
        self.part_reduce = nn.Parameter(torch.empty(parts, channels, part_dim))
        nn.init.kaiming_normal_(self.part_reduce, mode="fan_out")
        self.part_bn = nn.BatchNorm1d(parts * part_dim)
        init_kaiming(self.part_bn)
        self.part_bn.bias.requires_grad_(False)  # BNNeck-style: no shift
        self.part_classifier = (nn.Parameter(torch.randn(parts, part_dim, self.num_classes) * 0.001)
                                if self.num_classes else None)

    @property
    def descriptor_dim(self) -> int:
        return self.embedding_dim + self.parts * self.part_dim

    @torch.no_grad()
    def fit_parts(self, feature_maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Cluster the channels into parts from backbone feature maps (N, C, h, w) of sample images."""
        _, _, h, w = feature_maps.shape
        assignment = cluster_channels(peak_positions(feature_maps), h, w, self.parts, seed)
        self.part_assignment.copy_(assignment.to(self.part_assignment.device))
        return self.part_assignment

    def part_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, K, part_dim) part features after their BN."""
        if int(self.part_assignment.min()) < 0:
            raise ModelError("PL-Net: parts not assigned yet: call fit_parts(feature_maps) on sample images "
                             "(the plnet training task does) or load a trained checkpoint")
        n, _, h, w = feature_map.shape
        boxes = part_boxes(peak_positions(feature_map.detach()), self.part_assignment.cpu(), self.parts, h, w,
                           self.box_quantile)
        pooled = roi_pool(feature_map, boxes, self.part_pool)  # (N, K, C)
        reduced = torch.einsum("nkc,kcd->nkd", pooled, self.part_reduce)
        return self.part_bn(reduced.reshape(n, -1)).reshape(n, self.parts, self.part_dim)

    def forward(self, x: torch.Tensor) -> dict | torch.Tensor:
        feature_map = self.backbone(x)
        features, bn_features = self.embed(feature_map)
        parts = self.part_features(feature_map)
        if not self.training:
            pieces = [F.normalize(bn_features, dim=1), F.normalize(parts, dim=2).flatten(1)]
            return F.normalize(torch.cat(pieces, dim=1), dim=1)
        logits = self.classifier(self.dropout(bn_features)) if self.classifier is not None else None
        part_logits = (torch.einsum("nkd,kdc->nkc", self.dropout(parts), self.part_classifier)
                       if self.part_classifier is not None else None)
        return {"features": features, "bn_features": bn_features, "logits": logits, "feature_map": feature_map,
                "part_features": parts, "part_logits": part_logits}


@register_model("plnet", task="plnet")
def build_plnet(parts: int = 6, part_dim: int = 256, part_pool: str = "max", box_quantile: float = 0.25,
                backbone: str = "efficientnet_lite0", pretrained: bool = False, pooling: str = "gem",
                embedding_dim: int | None = None, bnneck: bool = True, num_classes: int | None = None,
                dropout: float = 0.0, last_stride: int | None = None, input_size: tuple[int, int] = (256, 128),
                backbone_options: dict | None = None, local_dim: int = 0, local_pool: str = "max") -> PLNetModel:
    """PL-Net on the embedding model's options; model.params: parts (K), part_dim, part_pool (max | avg),
    box_quantile (in [0, 0.5))."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ModelError(f"plnet: parts={parts!r}: expected a positive integer (K)")
    if isinstance(part_dim, bool) or not isinstance(part_dim, int) or part_dim < 1:
        raise ModelError(f"plnet: part_dim={part_dim!r}: expected a positive integer")
    if part_pool not in POOLS:
        raise ModelError(f"plnet: part_pool={part_pool!r}: expected {' or '.join(POOLS)}")
    if not 0.0 <= box_quantile < 0.5:
        raise ModelError(f"plnet: box_quantile={box_quantile!r}: expected 0 <= box_quantile < 0.5")
    if local_dim:
        raise ModelError("plnet: model.local_dim must be 0 (no AlignedReID local branch on PL-Net)")
    base = build_embedding_model(backbone=backbone, pretrained=pretrained, pooling=pooling,
                                 embedding_dim=embedding_dim, bnneck=bnneck, num_classes=num_classes,
                                 dropout=dropout, last_stride=last_stride, input_size=input_size,
                                 backbone_options=backbone_options, local_pool=local_pool)
    return PLNetModel(base, parts, part_dim, part_pool, box_quantile)
