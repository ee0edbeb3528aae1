"""AlignedReID local branch (Zhang et al. 2017): one local feature per horizontal stripe of a feature map.

The global branch (pooled backbone features) is the usual embedding model; this branch is added beside it.
Local features feed `reidkit.metrics.alignment.local_distance` (shortest-path alignment of stripes) for the
local triplet loss and, optionally, for inference with `aligned_distance_matrix`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from ..errors import ModelError


class LocalBranch(nn.Module):
    """Feature map (N, C, H, W) -> stripe features (N, H, local_dim).

    Each row of the map is pooled over its width (`pool="max"`: horizontal max pooling as in the paper;
    `"avg"` as in the popular re-implementation), then a 1x1 convolution reduces C to local_dim, followed by
    BatchNorm and ReLU (the conv has no bias: BatchNorm's shift replaces it).
    """

    def __init__(self, in_channels: int, local_dim: int = 128, pool: Literal["max", "avg"] = "max") -> None:
        super().__init__()
        if in_channels < 1 or local_dim < 1:
            raise ModelError(f"LocalBranch: in_channels and local_dim must be >= 1, got {in_channels}, {local_dim}")
        if pool not in ("max", "avg"):
            raise ModelError(f"LocalBranch: pool must be 'max' or 'avg', got {pool!r}")
        self.in_channels = in_channels
        self.pool = pool
        self.reduce = nn.Conv2d(in_channels, local_dim, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(local_dim)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        if feature_map.dim() != 4 or feature_map.shape[1] != self.in_channels:
            raise ModelError(f"LocalBranch: expected a feature map (N, {self.in_channels}, H, W), "
                             f"got {tuple(feature_map.shape)}")
        pool = torch.amax if self.pool == "max" else torch.mean
        stripes = pool(feature_map, dim=3, keepdim=True)
        local = self.relu(self.bn(self.reduce(stripes)))  # (N, local_dim, H, 1)
        return local.squeeze(3).transpose(1, 2).contiguous()
