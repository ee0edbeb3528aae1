"""Attribute losses of ACRN (Schumann & Stiefelhagen, CVPRW 2017): the weighted attribute cross-entropy and the
attribute-complementary triplet loss (docs/models.md, "ACRN (attributes)").

    wce = build_loss("attribute_wce", positive_rates=rates)      # loss(attribute_logits (B, A), targets (B, A))
    acrn = build_loss("attribute_triplet", gamma=1.0, margin=0.3)      # loss(embeddings, labels, attributes)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distance import pairwise_distance
from ..errors import ConfigError, TrainingError
from ..miners.base import BaseMiner, IndicesTuple, check_labels
from ..miners.triplet import BatchHardMiner
from .base import check_non_negative, check_reduction
from .registry import register_loss
from .triplet import TripletLoss

WEIGHTINGS = ("positive_rate", "none")


def positive_rate_weights(positive_rates: Sequence[float] | Tensor, sigma: float = 1.0) -> Tensor:
    """DeepMAR's per-attribute weights (Li et al. 2015, used for PETA): w_i = exp(-p_i / sigma^2), p_i the share
    of training images with attribute i, so rare attributes weigh more (w in (exp(-1/sigma^2), 1])."""
    rates = torch.as_tensor(positive_rates, dtype=torch.float32)
    if rates.dim() != 1 or not bool(((rates >= 0) & (rates <= 1)).all()):
        raise ConfigError(f"attribute positive rates: expected a 1-D list of values in [0, 1], got {rates.tolist()}")
    if not sigma > 0:
        raise ConfigError(f"attribute weighting sigma: must be > 0, got {sigma}")
    return torch.exp(-rates / sigma**2)


@register_loss("attribute_wce")
class WeightedAttributeCrossEntropy(torch.nn.Module):
    """L_wce per image = -sum_i w_i [y_i log p_i + (1 - y_i) log(1 - p_i)], p_i = sigmoid(logit_i); the mean over
    the batch (reduction="mean") or the sum ("sum"). Weights: `weights` as given, else DeepMAR's
    exp(-p_i / sigma^2) from `positive_rates`, else all 1 (plain binary cross-entropy summed over attributes).
    Computed from the logits with the log-sum-exp form (binary_cross_entropy_with_logits): no log(0)."""

    inputs: ClassVar[str] = "attribute_logits"

    def __init__(self, positive_rates: Sequence[float] | None = None, weights: Sequence[float] | None = None,
                 sigma: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if positive_rates is not None and weights is not None:
            raise ConfigError("WeightedAttributeCrossEntropy: give positive_rates or weights, not both")
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float32)
            if w.dim() != 1 or not bool((w >= 0).all()):
                raise ConfigError(f"WeightedAttributeCrossEntropy.weights: expected values >= 0, got {w.tolist()}")
        elif positive_rates is not None:
            w = positive_rate_weights(positive_rates, sigma)
        else:
            w = torch.empty(0)  # all ones, of whatever size the logits have
        self.register_buffer("weights", w, persistent=False)  # derived from the data: not a trained state
        self.reduction = check_reduction(reduction, "WeightedAttributeCrossEntropy.reduction")
        if self.reduction == "nonzero_mean":
            raise ConfigError("WeightedAttributeCrossEntropy.reduction: choose 'mean' or 'sum'")

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise TrainingError(f"WeightedAttributeCrossEntropy: logits must be (batch, attributes), got {shape}")
        if not isinstance(targets, Tensor) or targets.shape != logits.shape:
            shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise TrainingError(f"WeightedAttributeCrossEntropy: targets must have the logits' shape "
                                f"{tuple(logits.shape)}, got {shape}")
        if self.weights.numel() not in (0, logits.shape[1]):
            raise TrainingError(f"WeightedAttributeCrossEntropy: {self.weights.numel()} weights for "
                                f"{logits.shape[1]} attributes")
        per_attribute = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
        if self.weights.numel():
            per_attribute = per_attribute * self.weights.to(per_attribute.device)
        per_image = per_attribute.sum(1)
        return per_image.sum() if self.reduction == "sum" else per_image.mean()


@register_loss("attribute_triplet")
class ACRNTripletLoss(TripletLoss):
    """ACRN's triplet loss: per mined (a, p, n),

        [d(f_a, f_p) - d(f_a, f_n) + margin + gamma (d(att_a, att_p) - d(att_a, att_n))]_+

    i.e. the triplet loss on the combined distance D = d(f) + gamma d(att) (both with `metric`), whose triplets
    the miner (default batch-hard) also picks on D. gamma = 0 is the plain (batch-hard) triplet loss on f.
    Call: loss(embeddings (B, D), labels (B,), attributes (B, A)[, indices_tuple]); `attributes` is the
    attribute representation (the model's predicted probabilities).
    """

    inputs: ClassVar[str] = "embeddings+attributes"

    def __init__(self, gamma: float = 1.0, margin: float = 0.3, soft_margin: bool = False,
                 metric: str = "euclidean", miner: BaseMiner | None = None, reduction: str = "mean") -> None:
        super().__init__(margin=margin, soft_margin=soft_margin, metric=metric, miner=miner, reduction=reduction)
        self.gamma = check_non_negative(gamma, "ACRNTripletLoss.gamma")

    def default_miner(self) -> BaseMiner:
        return BatchHardMiner(metric=self.metric)

    def forward(self, embeddings: Tensor, labels: Tensor, attributes: Tensor,
                indices_tuple: IndicesTuple | None = None) -> Tensor:
        check_labels(labels, len(embeddings), "ACRNTripletLoss")
        if not isinstance(attributes, Tensor) or attributes.dim() != 2 or len(attributes) != len(embeddings):
            shape = tuple(attributes.shape) if isinstance(attributes, Tensor) else type(attributes).__name__
            raise TrainingError(f"ACRNTripletLoss: attributes must be (batch={len(embeddings)}, A), got {shape}")
        dist = pairwise_distance(embeddings, metric=self.metric)
        if self.gamma > 0:
            dist = dist + self.gamma * pairwise_distance(attributes, metric=self.metric)
        return self.forward_distance(dist, labels, indices_tuple)
