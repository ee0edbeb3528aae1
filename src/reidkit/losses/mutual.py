"""Deep mutual learning (Zhang et al. CVPR 2018) with the metric mutual loss of AlignedReID (Zhang et al. 2017)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..distance import check_metric, pairwise_distance
from ..errors import ConfigError, TrainingError
from .base import check_non_negative
from .registry import register_loss


def _check_students(tensors: Sequence[Tensor], count: int, what: str) -> None:
    if not isinstance(tensors, (list, tuple)) or len(tensors) != count:
        raise TrainingError(f"MutualLearningLoss: {what} must be a list with one tensor per student ({count})")
    shapes = {tuple(t.shape) if isinstance(t, Tensor) else None for t in tensors}  # None: not a tensor
    if len(shapes) != 1 or None in shapes or len(next(iter(shapes))) != 2:
        raise TrainingError(f"MutualLearningLoss: {what} must be 2-D tensors of one shape, got shapes {shapes}")


def _total(terms: list[Tensor]) -> Tensor:
    return sum(terms[1:], terms[0])


def _mean_over_peers(values: Sequence[Tensor], term: Callable[[Tensor, Tensor], Tensor]) -> list[Tensor]:
    """For each student i: mean over the other students j of term(values[i], ZG(values[j]))."""
    peers = len(values) - 1
    return [
        sum(term(own, values[j].detach()) for j in range(len(values)) if j != i) / peers for i, own in enumerate(values)
    ]


@register_loss("mutual")
class MutualLearningLoss(nn.Module):
    """Mutual losses between K >= 2 students; returns the sum of every student's mutual loss.

    Student i's loss, with ZG = stop-gradient (.detach()) and the mean over the other K-1 students j:
        kl_weight     * T^2 * mean_j KL(ZG(p_j) || p_i),  p = softmax(logits / T), KL summed over classes
                                                           and averaged over the batch (DML; T=1 in the paper)
      + metric_weight * mean_j mean_{a,b} (M_i[a,b] - ZG(M_j[a,b]))^2,  M = batch distance matrix.
    With embeddings and `normalize=True`, M is computed on L2-normalised embeddings (AlignedReID's mutual
    learning setting): the squared error then has a bounded scale instead of growing with the feature norm.
    For K = 2 the metric part is mean (ZG(M1) - M2)^2 + (M1 - ZG(M2))^2. Because of ZG, each student's
    parameters receive gradient only from its own terms, so one backward() of the total (plus each
    student's own identity loss) gives every student its DML gradient; step each student's optimiser.
    """

    inputs: ClassVar[str] = "students"

    def __init__(
        self,
        num_students: int = 2,
        kl_weight: float = 1.0,
        metric_weight: float = 1.0,
        temperature: float = 1.0,
        metric: str = "euclidean",
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(num_students, int) or num_students < 2:
            raise ConfigError(f"MutualLearningLoss.num_students: need at least 2, got {num_students!r}")
        if not temperature > 0:
            raise ConfigError(f"MutualLearningLoss.temperature: must be > 0, got {temperature}")
        self.num_students = num_students
        self.kl_weight = check_non_negative(kl_weight, "MutualLearningLoss.kl_weight")
        self.metric_weight = check_non_negative(metric_weight, "MutualLearningLoss.metric_weight")
        self.temperature = float(temperature)
        self.metric = check_metric(metric, "MutualLearningLoss.metric")
        self.normalize = bool(normalize)

    def forward(
        self,
        logits: Sequence[Tensor] | None = None,
        distances: Sequence[Tensor] | None = None,
        *,
        embeddings: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """One (batch, classes) logits / (batch, batch) distance matrix / (batch, dim) embedding tensor per
        student, all in the same batch order; pass distances or embeddings (distances then use `metric`)."""
        return _total(list(self.parts(logits, distances, embeddings=embeddings).values()))

    def parts(
        self,
        logits: Sequence[Tensor] | None = None,
        distances: Sequence[Tensor] | None = None,
        *,
        embeddings: Sequence[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """{"mutual_kl": ..., "mutual_metric": ...}: the weighted terms summed over students, for logging."""
        per_kind = self._per_student(logits, distances, embeddings)
        return {f"mutual_{kind}": _total(terms) for kind, terms in per_kind.items()}

    def student_losses(
        self,
        logits: Sequence[Tensor] | None = None,
        distances: Sequence[Tensor] | None = None,
        *,
        embeddings: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        """Each student's weighted mutual loss; its peers enter only through ZG."""
        per_kind = list(self._per_student(logits, distances, embeddings).values())
        return [_total(list(terms)) for terms in zip(*per_kind)]

    def _per_student(
        self,
        logits: Sequence[Tensor] | None,
        distances: Sequence[Tensor] | None,
        embeddings: Sequence[Tensor] | None,
    ) -> dict[str, list[Tensor]]:
        if distances is not None and embeddings is not None:
            raise TrainingError("MutualLearningLoss: pass distances or embeddings, not both")
        if embeddings is not None:
            _check_students(embeddings, self.num_students, "embeddings")
            if self.normalize:
                embeddings = [F.normalize(e, dim=1) for e in embeddings]
            distances = [pairwise_distance(e, metric=self.metric) for e in embeddings]
        if logits is None and distances is None:
            raise TrainingError("MutualLearningLoss: pass logits and/or distances (or embeddings), one per student")
        per_kind: dict[str, list[Tensor]] = {}
        if logits is not None:
            per_kind["kl"] = [self.kl_weight * term for term in self.kl_terms(logits)]
        if distances is not None:
            per_kind["metric"] = [self.metric_weight * term for term in self.metric_terms(distances)]
        return per_kind

    def kl_terms(self, logits: Sequence[Tensor]) -> list[Tensor]:
        """Per student i: T^2 * mean_j KL(ZG(p_j) || p_i)."""
        _check_students(logits, self.num_students, "logits")
        log_probs = [F.log_softmax(z / self.temperature, dim=1) for z in logits]
        # kl_div(input=log p_i, target=log p_j) = sum p_j (log p_j - log p_i) = KL(p_j || p_i)
        terms = _mean_over_peers(
            log_probs, lambda own, peer: F.kl_div(own, peer, reduction="batchmean", log_target=True)
        )
        return [term * self.temperature**2 for term in terms]

    def metric_terms(self, distances: Sequence[Tensor]) -> list[Tensor]:
        """Per student i: mean_j mean_{a,b} (M_i - ZG(M_j))^2 on (B, B) distance matrices."""
        _check_students(distances, self.num_students, "distances")
        return _mean_over_peers(distances, lambda own, peer: (own - peer).pow(2).mean())
