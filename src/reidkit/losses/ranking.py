"""The improved ranking loss of the multi-level similarity network (Guo & Cheung, CVPR 2018) for pair networks.

A pair network outputs same/different logits per image pair. The loss adds to the usual verification
cross-entropy a ranking term on triplets of images (anchor a, positive p, negative n), given as two pairs that
share the anchor: the positive pair (a, p) and the negative pair (a, n). The anchor's same-person score with
its positive must exceed its score with the negative by a margin:

    loss = verification_weight * mean_pairs CE(logits, label)
         + ranking_weight * mean_triplets max(0, margin - (s(a, p) - s(a, n)))

with s = softmax(logits)[same] (score="prob", margin in probability units, as the paper's similarity score) or
s = logit_same - logit_different (score="logit", the log-odds that ranking uses).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, TrainingError
from .base import check_non_negative
from .registry import register_loss

SCORES = ("prob", "logit")


def same_score(logits: Tensor, score: str = "prob") -> Tensor:
    """Same-person score of (N, 2) pair logits: P(same) or the log-odds logit_same - logit_different."""
    if score == "prob":
        return torch.softmax(logits, 1)[:, 1]
    return logits[:, 1] - logits[:, 0]


def _check_inputs(logits: Tensor, labels: Tensor, triplets: Tensor) -> None:
    where = "ImprovedRankingLoss"
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise TrainingError(f"{where}: logits must be (pairs, 2) same/different logits, got {shape}")
    if labels.shape != (len(logits),) or labels.is_floating_point():
        raise TrainingError(f"{where}: labels must be {len(logits)} integer pair labels (1 = same), got "
                            f"{tuple(labels.shape)} {labels.dtype}")
    if triplets.dim() != 2 or triplets.shape[1] != 2 or triplets.is_floating_point():
        raise TrainingError(f"{where}: triplets must be a (T, 2) integer tensor of (positive pair, negative pair) "
                            f"rows, got {tuple(triplets.shape)} {triplets.dtype}")
    if triplets.numel() and (int(triplets.min()) < 0 or int(triplets.max()) >= len(logits)):
        raise TrainingError(f"{where}: triplets index a pair outside [0, {len(logits)})")
    if triplets.numel() and not (bool((labels[triplets[:, 0]] == 1).all()) and
                                 bool((labels[triplets[:, 1]] == 0).all())):
        raise TrainingError(f"{where}: triplets: column 0 must index positive pairs (label 1) and column 1 "
                            "negative pairs (label 0)")


@register_loss("improved_ranking")
class ImprovedRankingLoss(nn.Module):
    """Verification cross-entropy + margin ranking of positive over negative pairs sharing an anchor.

    Call: `loss(logits, labels, triplets)` with logits (N, 2), labels (N,) in {0, 1} and triplets (T, 2) rows
    (index of a positive pair, index of a negative pair with the same anchor image). No triplets: ranking term 0.
    """

    inputs: ClassVar[str] = "pair_logits"

    def __init__(self, margin: float = 0.5, verification_weight: float = 1.0, ranking_weight: float = 1.0,
                 score: str = "prob") -> None:
        super().__init__()
        self.margin = check_non_negative(margin, "ImprovedRankingLoss.margin")
        self.verification_weight = check_non_negative(verification_weight, "ImprovedRankingLoss.verification_weight")
        self.ranking_weight = check_non_negative(ranking_weight, "ImprovedRankingLoss.ranking_weight")
        if score not in SCORES:
            raise ConfigError(f"ImprovedRankingLoss.score: expected one of {', '.join(SCORES)}, got {score!r}")
        self.score = score

    def terms(self, logits: Tensor, labels: Tensor, triplets: Tensor) -> tuple[Tensor, Tensor]:
        """(verification cross-entropy, mean ranking hinge), both unweighted."""
        labels, triplets = labels.to(logits.device), torch.as_tensor(triplets).to(logits.device)
        _check_inputs(logits, labels, triplets)
        verification = F.cross_entropy(logits, labels.long())
        s = same_score(logits, self.score)
        hinge = F.relu(self.margin - (s[triplets[:, 0]] - s[triplets[:, 1]]))
        ranking = hinge.mean() if hinge.numel() else s.sum() * 0.0  # still attached to the graph
        return verification, ranking

    def combine(self, verification: Tensor, ranking: Tensor) -> Tensor:
        return self.verification_weight * verification + self.ranking_weight * ranking

    def forward(self, logits: Tensor, labels: Tensor, triplets: Tensor) -> Tensor:
        return self.combine(*self.terms(logits, labels, triplets))
