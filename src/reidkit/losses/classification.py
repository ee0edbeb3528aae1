"""Identity-classification losses: label-smoothed cross-entropy and the centre loss."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, TrainingError
from ..miners.base import check_labels
from .base import check_reduction
from .registry import register_loss


def _check_class_ids(labels: Tensor, num_classes: int, where: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise TrainingError(
            f"{where}: labels must lie in [0, {num_classes}) (relabel identities to 0..K-1), "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )


def _check_num_classes(num_classes: int, where: str) -> int:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"{where}: must be a positive integer, got {num_classes!r}")
    return num_classes


@register_loss("ce")
class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against smoothed targets (Szegedy et al. 2016): q = (1 - epsilon) * onehot + epsilon / K.

    loss = mean over the batch of -sum_k q_k log softmax(logits)_k; epsilon=0 is plain cross-entropy.
    """

    inputs: ClassVar[str] = "logits"

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes, "CrossEntropyLabelSmooth.num_classes")
        if not 0.0 <= epsilon < 1.0:
            raise ConfigError(f"CrossEntropyLabelSmooth.epsilon: must be in [0, 1), got {epsilon}")
        self.epsilon = float(epsilon)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise TrainingError(f"CrossEntropyLabelSmooth: logits must be (batch, {self.num_classes}), got {shape}")
        check_labels(labels, logits.shape[0], "CrossEntropyLabelSmooth")
        _check_class_ids(labels, self.num_classes, "CrossEntropyLabelSmooth")
        log_probs = F.log_softmax(logits, dim=1)
        onehot = F.one_hot(labels.to(logits.device).long(), self.num_classes).to(log_probs.dtype)
        targets = (1.0 - self.epsilon) * onehot + self.epsilon / self.num_classes
        return -(targets * log_probs).sum(1).mean()


@register_loss("center")
class CenterLoss(nn.Module):
    """Centre loss (Wen et al. 2016): 1/2 ||x_i - c_{y_i}||^2 with one learnable centre per identity.

    reduction="sum" is the paper's L_C = 1/2 sum_i ||x_i - c_{y_i}||^2; "mean" (default) divides by the batch
    size so the weight does not depend on it. The centres are a Parameter trained by the optimiser (BoT uses
    a separate SGD, lr 0.5) instead of the paper's hand-written update rule.
    """

    inputs: ClassVar[str] = "embeddings"

    def __init__(self, num_classes: int, feat_dim: int, reduction: str = "mean") -> None:
        super().__init__()
        _check_num_classes(num_classes, "CenterLoss.num_classes")
        _check_num_classes(feat_dim, "CenterLoss.feat_dim")
        self.reduction = check_reduction(reduction, "CenterLoss.reduction")
        if self.reduction == "nonzero_mean":
            raise ConfigError("CenterLoss.reduction: choose 'mean' or 'sum'")
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        num_classes, feat_dim = self.centers.shape
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or embeddings.shape[1] != feat_dim:
            shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise TrainingError(f"CenterLoss: embeddings must be (batch, {feat_dim}), got {shape}")
        check_labels(labels, embeddings.shape[0], "CenterLoss")
        _check_class_ids(labels, num_classes, "CenterLoss")
        squared = (embeddings - self.centers[labels.to(embeddings.device).long()]).pow(2).sum(1)
        return 0.5 * (squared.sum() if self.reduction == "sum" else squared.mean())
