"""Knowledge distillation losses between a student's and a frozen teacher's embeddings of the same batch.

`darkrank` and `similarity_distillation` compare how each network relates the batch's samples to one another,
never the features themselves, so the student's embedding size and scale are free (a 1280-d student learns from a
512-d teacher without a projection). `feature_distillation` matches the features themselves: the student's
retrieval embedding should point where the teacher's does, which needs the same size (OSNet-AIN x0.5 and x1.0 from
Intel's models are both 256-d) and leaves the scale free.

- `darkrank` (Chen, Wang & Zhang, "DarkRank: accelerating deep metric learning via cross sample similarities
  transfer", AAAI 2018), hard transfer: for each anchor q, the other samples ranked by the TEACHER's similarity
  score S(q, i) = -alpha * ||f_q - f_i||^beta define a permutation pi; the loss is the negative log-likelihood of pi
  under the Plackett-Luce model of the STUDENT's scores:
      -log P(pi | S_s) = sum_j [ log sum_{k >= j} exp(S_s(q, pi_k)) - S_s(q, pi_j) ]
  averaged over anchors and over the first `list_size` positions (0: the whole list). Features are L2-normalised
  first, so the distances lie in [0, 2] for any network.
- `similarity_distillation`: the mean squared difference of the two cosine-similarity matrices (off-diagonal).
- `feature_distillation`: the mean cosine distance 1 - cos(s_i, t_i) between each image's student and teacher
  embeddings (the retrieval embeddings: the student's after its BNNeck).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, TrainingError
from .registry import register_loss


def _check_pair(student: Tensor, teacher: Tensor, name: str) -> None:
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise TrainingError(f"{name}: expected student (N, D) and teacher (N, D') embeddings of the same N samples, "
                            f"got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.shape[0] < 3:
        raise TrainingError(f"{name}: a batch of {student.shape[0]} samples has no ranking to transfer (need >= 3)")


def _unit_rows(x: Tensor) -> Tensor:
    """L2-normalised rows, in float32 at least (autocast may hand in half precision)."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=1)


def rank_scores(features: Tensor, alpha: float, beta: float) -> Tensor:
    """S(i, j) = -alpha * ||f_i - f_j||^beta of the L2-normalised rows (N, N)."""
    f = _unit_rows(features)
    squared = (2.0 - 2.0 * f @ f.t()).clamp_min(1e-12)  # ||a - b||^2 of unit vectors
    return -alpha * squared.pow(beta / 2.0)


@register_loss("darkrank")
class DarkRankLoss(nn.Module):
    """DarkRank hard transfer: loss(student_embeddings, teacher_embeddings) (module docstring)."""

    inputs: ClassVar[str] = "distillation"

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, list_size: int = 0):
        super().__init__()
        if not alpha > 0 or not beta > 0:
            raise ConfigError(f"darkrank: alpha={alpha} and beta={beta} must be > 0 (the paper: 3 and 3)")
        if list_size < 0:
            raise ConfigError(f"darkrank: list_size={list_size} must be >= 0 (0 = every other sample of the batch)")
        self.alpha, self.beta, self.list_size = alpha, beta, list_size

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        _check_pair(student, teacher, "darkrank")
        n = student.shape[0]
        with torch.no_grad():
            target = rank_scores(teacher, self.alpha, self.beta)
            target.fill_diagonal_(float("-inf"))  # the anchor itself sorts last and is dropped
            order = target.argsort(dim=1, descending=True)[:, : n - 1]
        scores = rank_scores(student, self.alpha, self.beta).gather(1, order)  # (N, N-1) in the teacher's order
        # log sum_{k >= j} exp(s_k): a reversed running log-sum-exp along each list
        tails = torch.logcumsumexp(scores.flip(1), dim=1).flip(1)
        positions = n - 1 if self.list_size == 0 else min(self.list_size, n - 1)
        return (tails - scores)[:, :positions].mean()


@register_loss("similarity_distillation")
class SimilarityDistillationLoss(nn.Module):
    """Mean squared difference of the student's and the teacher's cosine-similarity matrices (off-diagonal)."""

    inputs: ClassVar[str] = "distillation"

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        _check_pair(student, teacher, "similarity_distillation")
        s, t = _unit_rows(student), _unit_rows(teacher)
        off_diagonal = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
        return ((s @ s.t() - (t @ t.t()).detach())[off_diagonal] ** 2).mean()


@register_loss("feature_distillation")
class FeatureDistillationLoss(nn.Module):
    """Mean cosine distance between each sample's student and teacher embedding (equal sizes; module docstring)."""

    inputs: ClassVar[str] = "distillation"
    student_output: ClassVar[str] = "bn_features"  # the embedding retrieval uses, as the teacher's cache holds

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        _check_pair(student, teacher, "feature_distillation")
        if student.shape[1] != teacher.shape[1]:
            raise TrainingError(f"feature_distillation: the student's embeddings have {student.shape[1]} dimensions "
                                f"and the teacher's {teacher.shape[1]}; matching features needs the same size (use "
                                "distill.darkrank_weight / distill.similarity_weight, which compare relations)")
        return (1.0 - (_unit_rows(student) * _unit_rows(teacher).detach()).sum(dim=1)).mean()
