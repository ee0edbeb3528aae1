"""Softmax weighting of positives and negatives (the "soft-hard" / weighted-regularised triplet).

Not a miner in the index sense: every positive and negative keeps a weight, larger for harder ones.
Differentiable, so the loss can back-propagate through the weights (as AGW/fast-reid do).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import check_distance_matrix, check_labels, label_masks


def _masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Row softmax over the True entries of `mask`; all-False rows give all-zero weights (not NaN)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    # A row with no entries would be softmax(-inf, ..., -inf) = NaN, and NaN * 0 stays NaN in backward.
    scores = torch.where(mask.any(1, keepdim=True), scores, torch.zeros_like(scores))
    return torch.softmax(scores, dim=1) * mask


def softmax_weights(dist: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positive_weights, negative_weights), each (B, B) with rows summing to 1 over that anchor's set.

    positive_weights[a, p] = exp(d(a, p)) / sum_{p'} exp(d(a, p'))  over positives p != a;
    negative_weights[a, n] = exp(-d(a, n)) / sum_{n'} exp(-d(a, n')) over negatives.
    """
    check_distance_matrix(dist, "softmax_weights")
    check_labels(labels, dist.shape[0], "softmax_weights")
    positive, negative = label_masks(labels.to(dist.device))
    return _masked_softmax(dist, positive), _masked_softmax(-dist, negative)
