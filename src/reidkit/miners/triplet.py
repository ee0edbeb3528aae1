"""Triplet miners: all triplets, batch-hard (Hermans et al. 2017), semi-hard (Schroff et al. 2015)."""

from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from .base import BaseMiner, Triplets, label_masks
from .registry import register_miner


def _triplets_from_mask(mask: Tensor) -> Triplets:
    """Triplets (a, p, n) for every True entry of a (B, B, B) mask indexed [a, p, n]."""
    a, p, n = mask.nonzero(as_tuple=True)
    return Triplets(a, p, n)


@register_miner("all_triplets")
class AllTripletsMiner(BaseMiner):
    """Every (a, p, n) with label(p) == label(a), p != a, label(n) != label(a)."""

    def _mine(self, dist: Tensor, labels: Tensor) -> Triplets:
        positive, negative = label_masks(labels)
        return _triplets_from_mask(positive.unsqueeze(2) & negative.unsqueeze(1))


@register_miner("batch_hard")
class BatchHardMiner(BaseMiner):
    """Per anchor: the farthest positive and the closest negative (TriHard). Anchors lacking either are dropped.

    Ties go to the lowest index (torch.argmax/argmin return the first extreme value).
    """

    def _mine(self, dist: Tensor, labels: Tensor) -> Triplets:
        positive, negative = label_masks(labels)
        hardest_positive = dist.masked_fill(~positive, float("-inf")).argmax(1)
        hardest_negative = dist.masked_fill(~negative, float("inf")).argmin(1)
        anchors = (positive.any(1) & negative.any(1)).nonzero(as_tuple=True)[0]
        return Triplets(anchors, hardest_positive[anchors], hardest_negative[anchors])


@register_miner("semi_hard")
class SemiHardMiner(BaseMiner):
    """FaceNet semi-hard triplets: every (a, p, n) with d(a, p) < d(a, n) < d(a, p) + margin.

    FaceNet states the condition on squared Euclidean distances: use metric="sqeuclidean" for that.
    """

    def __init__(self, margin: float = 0.3, metric: str = "euclidean") -> None:
        super().__init__(metric)
        if margin <= 0:
            raise ConfigError(f"SemiHardMiner.margin: must be > 0, got {margin}")
        self.margin = float(margin)

    def _mine(self, dist: Tensor, labels: Tensor) -> Triplets:
        positive, negative = label_masks(labels)
        d_ap = dist.unsqueeze(2)  # [a, p, 1]
        d_an = dist.unsqueeze(1)  # [a, 1, n]
        semi_hard = (d_an > d_ap) & (d_an < d_ap + self.margin)
        return _triplets_from_mask(positive.unsqueeze(2) & negative.unsqueeze(1) & semi_hard)

    def __repr__(self) -> str:
        return f"SemiHardMiner(margin={self.margin}, metric={self.metric!r})"
