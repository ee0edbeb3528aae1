"""Pair-based losses: contrastive (Hadsell et al. 2006) and margin sample mining (MSML, Xiao et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..miners.base import BaseMiner, IndicesTuple, as_pairs
from ..miners.pair import AllPairsMiner, HardestPairMiner
from .base import MetricLoss, check_non_negative, check_reduction, reduce_losses
from .registry import register_loss


@register_loss("contrastive")
class ContrastiveLoss(MetricLoss):
    """Hadsell, Chopra & LeCun 2006: positive pair 1/2 d^2, negative pair 1/2 [margin - d]_+^2,
    reduced over all mined pairs (positives and negatives together). Default miner: all pairs i < j.

    d is the `metric` distance (Euclidean as in the paper); the loss squares it itself.
    """

    def __init__(
        self,
        margin: float = 1.0,
        metric: str = "euclidean",
        miner: BaseMiner | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(metric, miner)
        self.margin = check_non_negative(margin, "ContrastiveLoss.margin")
        self.reduction = check_reduction(reduction, "ContrastiveLoss.reduction")

    def default_miner(self) -> BaseMiner:
        return AllPairsMiner(metric=self.metric)

    def compute(self, dist: Tensor, labels: Tensor, indices_tuple: IndicesTuple | None) -> Tensor:
        a1, p, a2, n = as_pairs(indices_tuple, len(dist), "ContrastiveLoss")
        pulled = 0.5 * dist[a1, p].pow(2)
        pushed = 0.5 * F.relu(self.margin - dist[a2, n]).pow(2)
        return reduce_losses(torch.cat([pulled, pushed]), self.reduction)


@register_loss("msml")
class MarginSampleMiningLoss(MetricLoss):
    """MSML (Xiao et al. 2017): one term per batch, [max d(positive pair) - min d(negative pair) + margin]_+.

    The max/min run over the given pairs; the default HardestPairMiner hands over the hardest positive and
    negative pair of the whole batch (the negative pair need not share an item with the positive pair).
    """

    def __init__(self, margin: float = 0.3, metric: str = "euclidean", miner: BaseMiner | None = None) -> None:
        super().__init__(metric, miner)
        self.margin = check_non_negative(margin, "MarginSampleMiningLoss.margin")

    def default_miner(self) -> BaseMiner:
        return HardestPairMiner(metric=self.metric)

    def compute(self, dist: Tensor, labels: Tensor, indices_tuple: IndicesTuple | None) -> Tensor:
        a1, p, a2, n = as_pairs(indices_tuple, len(dist), "MarginSampleMiningLoss")
        positive_distances, negative_distances = dist[a1, p], dist[a2, n]
        if positive_distances.numel() == 0 or negative_distances.numel() == 0:
            return dist.sum() * 0.0  # no pair of one kind: 0, still attached to the graph
        return F.relu(positive_distances.max() - negative_distances.min() + self.margin)
