"""AlignedReID local triplet loss (Zhang et al. 2017): mine on global distances, penalise local distances."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import ClassVar

import torch.nn as nn
from torch import Tensor

from ..distance import check_metric
from ..errors import ConfigError, TrainingError
from ..miners.base import BaseMiner, IndicesTuple, as_triplets, check_labels
from ..miners.triplet import BatchHardMiner
from .base import check_non_negative, check_reduction, reduce_losses
from .registry import register_loss
from .triplet import ranking_hinge

LocalDistance = Callable[[Tensor, Tensor], Tensor]


def resolve_callable(spec: str | LocalDistance, where: str) -> LocalDistance:
    """A callable, or "package.module:function" / "package.module.function" naming one (for YAML configs)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or "." not in spec.replace(":", "."):
        raise ConfigError(f"{where}: expected a callable or 'module:function', got {spec!r}")
    module_name, _, attribute = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot import {spec!r} ({exc})") from None
    if not callable(function):
        raise ConfigError(f"{where}: {spec!r} is not callable")
    return function


@register_loss("aligned_triplet")
class AlignedTripletLoss(nn.Module):
    """Local triplet loss: [ld(a,p) - ld(a,n) + margin]_+ reduced over triplets mined on GLOBAL distances.

    loss(embeddings, labels, local_features, indices_tuple=None): embeddings (B, D) are the global features the
    miner ranks (default BatchHardMiner, as in AlignedReID); local_features (B, parts, C) go to
    local_distance_fn(x, y) -> (N,), called once on the batched rows of all mined pairs (e.g. the shortest-path
    alignment distance of reidkit.metrics.alignment). Add the global triplet loss separately.
    """

    inputs: ClassVar[str] = "embeddings+local"

    def __init__(
        self,
        local_distance_fn: str | LocalDistance,
        margin: float = 0.3,
        soft_margin: bool = False,
        metric: str = "euclidean",
        miner: BaseMiner | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.local_distance_fn = resolve_callable(local_distance_fn, "AlignedTripletLoss.local_distance_fn")
        self.margin = check_non_negative(margin, "AlignedTripletLoss.margin")
        self.soft_margin = bool(soft_margin)
        self.metric = check_metric(metric, "AlignedTripletLoss.metric")
        self.miner = miner if miner is not None else BatchHardMiner(metric=self.metric)
        self.reduction = check_reduction(reduction, "AlignedTripletLoss.reduction")

    def forward(
        self, embeddings: Tensor, labels: Tensor, local_features: Tensor, indices_tuple: IndicesTuple | None = None
    ) -> Tensor:
        check_labels(labels, len(embeddings), "AlignedTripletLoss")
        if not isinstance(local_features, Tensor) or local_features.dim() < 2 or len(local_features) != len(labels):
            shape = tuple(local_features.shape) if isinstance(local_features, Tensor) else type(local_features).__name__
            raise TrainingError(f"AlignedTripletLoss: local_features must be (batch={len(labels)}, ...), got {shape}")
        if indices_tuple is None:
            indices_tuple = self.miner(embeddings, labels)  # ranked by the global distances, without gradient
        a, p, n = as_triplets(indices_tuple, len(embeddings), "AlignedTripletLoss")
        if a.numel() == 0:  # nothing mined: 0 attached to the graph, without calling local_distance_fn on empties
            return local_features.sum() * 0.0
        local_ap = self._local_distance(local_features[a], local_features[p])
        local_an = self._local_distance(local_features[a], local_features[n])
        return reduce_losses(ranking_hinge(local_ap - local_an, self.margin, self.soft_margin), self.reduction)

    def _local_distance(self, x: Tensor, y: Tensor) -> Tensor:
        distances = self.local_distance_fn(x, y)
        if not isinstance(distances, Tensor) or distances.shape != (len(x),):
            shape = tuple(distances.shape) if isinstance(distances, Tensor) else type(distances).__name__
            raise TrainingError(f"AlignedTripletLoss: local_distance_fn must return shape ({len(x)},), got {shape}")
        return distances
