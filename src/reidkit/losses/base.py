"""Shared pieces of the metric losses: the call convention, reductions and argument checks.

Call convention (every metric loss):
    loss(embeddings, labels, indices_tuple=None)        # distances computed with `metric`
    loss.forward_distance(dist, labels, indices_tuple=None)  # a precomputed (B, B) distance matrix
Without `indices_tuple` the loss's own miner (see `default_miner`) chooses the tuples.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn as nn
from torch import Tensor

from ..distance import check_metric, pairwise_distance
from ..errors import ConfigError
from ..miners.base import BaseMiner, IndicesTuple, check_distance_matrix, check_labels

REDUCTIONS = ("mean", "sum", "nonzero_mean")


def check_reduction(reduction: str, where: str) -> str:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"{where}: unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    return reduction


def check_non_negative(value: float, where: str) -> float:
    if not value >= 0:  # also rejects NaN
        raise ConfigError(f"{where}: must be >= 0, got {value}")
    return float(value)


def reduce_losses(values: Tensor, reduction: str) -> Tensor:
    """Reduce per-tuple losses; "nonzero_mean" averages over the active (> 0) terms (Hermans' BA!=0).

    No tuples (e.g. a batch without positives) gives 0 that still belongs to the graph, so backward() works.
    """
    if values.numel() == 0 or reduction == "sum":
        return values.sum()
    if reduction == "nonzero_mean":
        return values.sum() / (values > 0).sum().clamp(min=1)
    return values.mean()


class MetricLoss(nn.Module):
    """Base class: a loss on the batch distance matrix, with a replaceable miner."""

    inputs: ClassVar[str] = "embeddings"  # what the trainer passes: see docs/losses.md

    def __init__(self, metric: str = "euclidean", miner: BaseMiner | None = None) -> None:
        super().__init__()
        self.metric = check_metric(metric, f"{type(self).__name__}.metric")
        if miner is not None and not isinstance(miner, BaseMiner):
            raise ConfigError(f"{type(self).__name__}.miner: expected a miner, got {type(miner).__name__}")
        self.miner = miner if miner is not None else self.default_miner()

    def default_miner(self) -> BaseMiner | None:
        return None

    def forward(self, embeddings: Tensor, labels: Tensor, indices_tuple: IndicesTuple | None = None) -> Tensor:
        dist = pairwise_distance(embeddings, metric=self.metric)
        if indices_tuple is None and self.miner is not None and self.miner.metric != self.metric:
            indices_tuple = self.miner(embeddings, labels)  # the miner ranks by its own metric
        return self.forward_distance(dist, labels, indices_tuple)

    def forward_distance(self, dist: Tensor, labels: Tensor, indices_tuple: IndicesTuple | None = None) -> Tensor:
        where = type(self).__name__
        check_distance_matrix(dist, where)
        check_labels(labels, dist.shape[0], where)
        labels = labels.to(dist.device)
        if indices_tuple is None and self.miner is not None:
            indices_tuple = self.miner.mine(dist, labels)
        return self.compute(dist, labels, indices_tuple)

    def compute(self, dist: Tensor, labels: Tensor, indices_tuple: IndicesTuple | None) -> Tensor:
        raise NotImplementedError
