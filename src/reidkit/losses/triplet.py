"""Triplet-family losses: plain triplet, batch-hard (TriHard), improved triplet, soft-hard (weighted)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..miners.base import BaseMiner, IndicesTuple, as_triplets, label_masks
from ..miners.triplet import AllTripletsMiner, BatchHardMiner
from ..miners.weights import softmax_weights
from .base import MetricLoss, check_non_negative, check_reduction, reduce_losses
from .registry import register_loss


def ranking_hinge(difference: Tensor, margin: float, soft_margin: bool) -> Tensor:
    """[d_ap - d_an + margin]_+, or softplus(d_ap - d_an) = ln(1 + exp(d_ap - d_an)) (Hermans et al.)."""
    return F.softplus(difference) if soft_margin else F.relu(difference + margin)


@register_loss("triplet")
class TripletLoss(MetricLoss):
    """Triplet loss on mined triplets: reduce over (a, p, n) of [d(a,p) - d(a,n) + margin]_+.

    soft_margin=True replaces the hinge by softplus(d(a,p) - d(a,n)) and ignores `margin`.
    Default miner: all triplets (Hermans' "batch all"; reduction="nonzero_mean" gives their BA!=0).
    """

    def __init__(
        self,
        margin: float = 0.3,
        soft_margin: bool = False,
        metric: str = "euclidean",
        miner: BaseMiner | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(metric, miner)
        self.margin = check_non_negative(margin, f"{type(self).__name__}.margin")
        self.soft_margin = bool(soft_margin)
        self.reduction = check_reduction(reduction, f"{type(self).__name__}.reduction")

    def default_miner(self) -> BaseMiner:
        return AllTripletsMiner(metric=self.metric)

    def per_triplet(self, dist: Tensor, triplets: IndicesTuple) -> Tensor:
        a, p, n = triplets
        return ranking_hinge(dist[a, p] - dist[a, n], self.margin, self.soft_margin)

    def compute(self, dist: Tensor, labels: Tensor, indices_tuple: IndicesTuple | None) -> Tensor:
        triplets = as_triplets(indices_tuple, len(dist), type(self).__name__)
        return reduce_losses(self.per_triplet(dist, triplets), self.reduction)


@register_loss("triplet_batch_hard")
class BatchHardTripletLoss(TripletLoss):
    """TriHard (Hermans et al. 2017): per anchor, the farthest positive against the closest negative,
    mean over anchors. Same formula as TripletLoss; only the default miner differs (BatchHardMiner).
    """

    def default_miner(self) -> BaseMiner:
        return BatchHardMiner(metric=self.metric)


@register_loss("improved_triplet")
class ImprovedTripletLoss(TripletLoss):
    """Cheng et al. CVPR 2016, per triplet: [d(a,p) - d(a,n) + margin]_+ + intra_weight * [d(a,p) - beta]_+.

    Paper notation: max(d(a,p) - d(a,n), tau1) + beta_paper * max(d(a,p), tau2). Since max(x, t) = t + [x - t]_+,
    this equals ours with margin = -tau1, beta = tau2, intra_weight = beta_paper, up to a constant (same
    gradients). Paper values: tau1 = -1, tau2 = 0.01, beta_paper = 0.002. Default miner: all triplets.
    """

    def __init__(
        self,
        margin: float = 1.0,
        beta: float = 0.01,
        intra_weight: float = 1.0,
        metric: str = "euclidean",
        miner: BaseMiner | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(margin=margin, metric=metric, miner=miner, reduction=reduction)
        self.beta = check_non_negative(beta, "ImprovedTripletLoss.beta")
        self.intra_weight = check_non_negative(intra_weight, "ImprovedTripletLoss.intra_weight")

    def per_triplet(self, dist: Tensor, triplets: IndicesTuple) -> Tensor:
        a, p, _ = triplets
        return super().per_triplet(dist, triplets) + self.intra_weight * F.relu(dist[a, p] - self.beta)


@register_loss("soft_hard")
class SoftHardTripletLoss(MetricLoss):
    """Weighted (soft-hard) triplet, as AGW's / fast-reid's weighted regularised triplet. Per anchor a:

        d_p = sum_p w_p d(a,p),  w_p = softmax over positives p != a of  d(a,p)
        d_n = sum_n w_n d(a,n),  w_n = softmax over negatives of       -d(a,n)
        loss_a = softplus(d_p - d_n)            (margin=None or soft_margin=True, AGW)   or  [d_p - d_n + margin]_+

    mean over anchors that have a positive and a negative. Uses weights, not a miner; gradients flow through
    the weights unless detach_weights=True.
    """

    def __init__(
        self,
        margin: float | None = None,
        metric: str = "euclidean",
        detach_weights: bool = False,
        reduction: str = "mean",
        soft_margin: bool = False,
    ) -> None:
        super().__init__(metric, miner=None)
        margin = None if soft_margin else margin  # same switch as the other triplet losses
        self.margin = None if margin is None else check_non_negative(margin, "SoftHardTripletLoss.margin")
        self.detach_weights = bool(detach_weights)
        self.reduction = check_reduction(reduction, "SoftHardTripletLoss.reduction")

    def compute(self, dist: Tensor, labels: Tensor, indices_tuple: IndicesTuple | None) -> Tensor:
        if indices_tuple is not None:
            raise ConfigError("SoftHardTripletLoss: weights every positive/negative, so it takes no indices_tuple")
        positive_weights, negative_weights = softmax_weights(dist.detach() if self.detach_weights else dist, labels)
        weighted_positive = (dist * positive_weights).sum(1)
        weighted_negative = (dist * negative_weights).sum(1)
        positive, negative = label_masks(labels)
        valid = positive.any(1) & negative.any(1)
        difference = (weighted_positive - weighted_negative)[valid]
        margin = 0.0 if self.margin is None else self.margin
        return reduce_losses(ranking_hinge(difference, margin, soft_margin=self.margin is None), self.reduction)
