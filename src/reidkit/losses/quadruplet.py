"""Quadruplet loss (Chen et al., CVPR 2017, "Beyond triplet loss")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..miners.base import BaseMiner, IndicesTuple, as_quadruplets, label_masks
from ..miners.quadruplet import QuadrupletMiner
from .base import MetricLoss, check_non_negative, check_reduction, reduce_losses
from .registry import register_loss


def adaptive_margins(dist: Tensor, labels: Tensor, weights: tuple[float, float]) -> tuple[float, float]:
    """Margin-based OHNM margins: w * (mean negative-pair distance - mean positive-pair distance), >= 0.

    Computed from every positive pair (i != j) and negative pair of the batch, without gradient: the margins
    are per-batch constants, not something to optimise.
    """
    positive, negative = label_masks(labels)
    if not positive.any() or not negative.any():
        return 0.0, 0.0
    detached = dist.detach()
    gap = float(detached[negative].mean() - detached[positive].mean())
    return max(weights[0] * gap, 0.0), max(weights[1] * gap, 0.0)


@register_loss("quadruplet")
class QuadrupletLoss(MetricLoss):
    """Per quadruplet (a, p, n, n2):  [d(a,p) - d(a,n) + alpha]_+ + [d(a,p) - d(n,n2) + beta]_+.

    The paper writes g(.,.)^2, hence the default metric "sqeuclidean" (g is a learned metric there; here a
    distance between embeddings). Default miner: QuadrupletMiner("batch_hard").
    ohnm=True is the paper's margin-based online hard negative mining: alpha, beta are set per batch to
    adaptive_weights * (mean negative-pair distance - mean positive-pair distance), the loss is averaged
    over the quadruplets that violate them (reduction "nonzero_mean"), and the default miner enumerates
    all quadruplets. `alpha` and `beta` are then ignored.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.5,
        metric: str = "sqeuclidean",
        miner: BaseMiner | None = None,
        reduction: str = "mean",
        ohnm: bool = False,
        adaptive_weights: tuple[float, float] = (1.0, 0.5),
    ) -> None:
        if miner is None:
            miner = QuadrupletMiner("all" if ohnm else "batch_hard", metric=metric)
        super().__init__(metric, miner)
        self.alpha = check_non_negative(alpha, "QuadrupletLoss.alpha")
        self.beta = check_non_negative(beta, "QuadrupletLoss.beta")
        self.ohnm = bool(ohnm)
        self.reduction = "nonzero_mean" if self.ohnm else check_reduction(reduction, "QuadrupletLoss.reduction")
        if len(adaptive_weights) != 2:
            raise ConfigError(f"QuadrupletLoss.adaptive_weights: expected two weights, got {adaptive_weights}")
        first, second = (check_non_negative(w, "QuadrupletLoss.adaptive_weights") for w in adaptive_weights)
        self.adaptive_weights = (first, second)

    def margins(self, dist: Tensor, labels: Tensor) -> tuple[float, float]:
        return adaptive_margins(dist, labels, self.adaptive_weights) if self.ohnm else (self.alpha, self.beta)

    def compute(self, dist: Tensor, labels: Tensor, indices_tuple: IndicesTuple | None) -> Tensor:
        a, p, n, n2 = as_quadruplets(indices_tuple, len(dist), "QuadrupletLoss")
        alpha, beta = self.margins(dist, labels)
        d_ap = dist[a, p]
        per_quadruplet = F.relu(d_ap - dist[a, n] + alpha) + F.relu(d_ap - dist[n, n2] + beta)
        return reduce_losses(per_quadruplet, self.reduction)
