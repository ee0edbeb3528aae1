"""Quadruplet miner for Chen et al. 2017 ("Beyond triplet loss"): (a, p, n, n2) with three distinct labels."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, TrainingError
from .base import BaseMiner, Quadruplets, label_masks
from .registry import register_miner

STRATEGIES = ("batch_hard", "all")


def _segment_positions(counts: Tensor) -> Tensor:
    """For segments of the given lengths laid end to end, each element's position inside its segment."""
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(int(counts.sum()), device=counts.device) - torch.repeat_interleave(starts, counts)


@register_miner("quadruplet")
class QuadrupletMiner(BaseMiner):
    """strategy="batch_hard": per anchor the farthest positive p, the closest negative n, and the n2 closest to n
    among the items whose label differs from both a's and n's (one quadruplet per anchor).
    strategy="all": every valid quadruplet; there are about B * K * B^2 of them, so at most `max_quadruplets`.
    """

    def __init__(self, strategy: str = "batch_hard", metric: str = "euclidean", max_quadruplets: int = 1_000_000):
        super().__init__(metric)
        if strategy not in STRATEGIES:
            raise ConfigError(f"QuadrupletMiner.strategy: unknown {strategy!r}; choose one of {STRATEGIES}")
        self.strategy = strategy
        self.max_quadruplets = int(max_quadruplets)

    def _mine(self, dist: Tensor, labels: Tensor) -> Quadruplets:
        positive, negative = label_masks(labels)
        if self.strategy == "batch_hard":
            return self._batch_hard(dist, positive, negative)
        return self._all(positive, negative)

    @staticmethod
    def _batch_hard(dist: Tensor, positive: Tensor, negative: Tensor) -> Quadruplets:
        hardest_positive = dist.masked_fill(~positive, float("-inf")).argmax(1)
        hardest_negative = dist.masked_fill(~negative, float("inf")).argmin(1)
        # n2 must differ in label from the anchor and from the chosen negative.
        third = negative & negative[hardest_negative]
        closest_third = dist[hardest_negative].masked_fill(~third, float("inf")).argmin(1)
        anchors = (positive.any(1) & negative.any(1) & third.any(1)).nonzero(as_tuple=True)[0]
        return Quadruplets(anchors, hardest_positive[anchors], hardest_negative[anchors], closest_third[anchors])

    def _all(self, positive: Tensor, negative: Tensor) -> Quadruplets:
        # Per anchor, the ordered negative pairs (n, n2) with three distinct labels, sorted by anchor...
        neg_a, neg_n, neg_n2 = (negative.unsqueeze(2) & negative.unsqueeze(1) & negative).nonzero(as_tuple=True)
        per_anchor = torch.bincount(neg_a, minlength=len(positive))
        anchor_start = torch.cumsum(per_anchor, 0) - per_anchor
        # ...then each positive pair (a, p) is combined with all of its anchor's negative pairs.
        pos_a, pos_p = positive.nonzero(as_tuple=True)
        per_pair = per_anchor[pos_a]
        total = int(per_pair.sum())
        if total > self.max_quadruplets:
            raise TrainingError(
                f"QuadrupletMiner(strategy='all'): this batch of {len(positive)} has {total} quadruplets, more "
                f"than max_quadruplets={self.max_quadruplets}; use strategy='batch_hard' or a smaller batch"
            )
        pair_of = torch.repeat_interleave(torch.arange(len(pos_a), device=positive.device), per_pair)
        negative_pair = torch.repeat_interleave(anchor_start[pos_a], per_pair) + _segment_positions(per_pair)
        return Quadruplets(pos_a[pair_of], pos_p[pair_of], neg_n[negative_pair], neg_n2[negative_pair])

    def __repr__(self) -> str:
        return f"QuadrupletMiner(strategy={self.strategy!r}, metric={self.metric!r})"
