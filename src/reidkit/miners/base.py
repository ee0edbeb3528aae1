"""Index tuples returned by miners, label masks, input checks, and the miner base class.

Miners only choose indices (no gradient); losses index their own differentiable distance matrix with them.
This is pytorch-metric-learning's split, so any triplet-style loss works with any triplet miner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor

from ..distance import check_metric, pairwise_distance
from ..errors import TrainingError


class Triplets(NamedTuple):
    """Triplets (anchor[i], positive[i], negative[i]) as equal-length LongTensors."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor


class Pairs(NamedTuple):
    """Positive pairs (anchor_pos[i], positive[i]) and negative pairs (anchor_neg[j], negative[j]).

    The positive and negative lists may differ in length.
    """

    anchor_pos: Tensor
    positive: Tensor
    anchor_neg: Tensor
    negative: Tensor


class Quadruplets(NamedTuple):
    """Chen et al. 2017 quadruplets: label(a) == label(p); n, n2 and a have three different labels."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor
    negative2: Tensor


IndicesTuple = Triplets | Pairs | Quadruplets | tuple


def check_labels(labels: Tensor, batch_size: int, where: str) -> None:
    """Labels must be a 1-D integer tensor with one entry per embedding."""
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.numel() != batch_size:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise TrainingError(f"{where}: labels must be a 1-D tensor of length {batch_size}, got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TrainingError(f"{where}: labels must be integer identity ids, got dtype {labels.dtype}")


def check_distance_matrix(dist: Tensor, where: str) -> None:
    if not isinstance(dist, Tensor) or dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        shape = tuple(dist.shape) if isinstance(dist, Tensor) else type(dist).__name__
        raise TrainingError(f"{where}: distance matrix must be square (batch, batch), got {shape}")
    if not dist.is_floating_point():
        raise TrainingError(f"{where}: distance matrix must be floating point, got {dist.dtype}")


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, negative) boolean (B, B) masks; an item is not its own positive."""
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _check_index_groups(groups: tuple[Tensor, ...], batch_size: int, where: str) -> None:
    """Each group of indices: 1-D integer tensors of equal length with values in [0, batch_size)."""
    lengths = {t.numel() if isinstance(t, Tensor) else -1 for t in groups}
    for t in groups:
        if not isinstance(t, Tensor) or t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise TrainingError(f"{where}: indices_tuple entries must be 1-D integer tensors")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= batch_size):
            raise TrainingError(f"{where}: indices_tuple has an index outside [0, {batch_size})")
    if len(lengths) > 1:
        raise TrainingError(f"{where}: indices_tuple entries that pair up must have equal lengths, got {lengths}")


def as_triplets(indices: IndicesTuple, batch_size: int, where: str) -> Triplets:
    """Accept Triplets (or a plain 3-tuple) or Quadruplets (their first three entries)."""
    if isinstance(indices, Pairs):
        raise TrainingError(f"{where}: got Pairs from a pair miner; this loss needs triplets (a, p, n)")
    if isinstance(indices, Quadruplets):
        indices = indices[:3]
    if not isinstance(indices, tuple) or len(indices) != 3:
        raise TrainingError(f"{where}: indices_tuple must be triplets (anchor, positive, negative)")
    triplets = Triplets(*(t.long() if isinstance(t, Tensor) else t for t in indices))
    _check_index_groups(tuple(triplets), batch_size, where)
    return triplets


def as_pairs(indices: IndicesTuple, batch_size: int, where: str) -> Pairs:
    """Accept Pairs (or a plain 4-tuple); triplets/quadruplets give pairs (a, p) and (a, n)."""
    if isinstance(indices, (Triplets, Quadruplets)) or (isinstance(indices, tuple) and len(indices) == 3):
        a, p, n = as_triplets(indices, batch_size, where)
        return Pairs(a, p, a, n)
    if not isinstance(indices, tuple) or len(indices) != 4:
        raise TrainingError(f"{where}: indices_tuple must be pairs (anchor_pos, positive, anchor_neg, negative)")
    pairs = Pairs(*(t.long() if isinstance(t, Tensor) else t for t in indices))
    _check_index_groups(pairs[:2], batch_size, where)
    _check_index_groups(pairs[2:], batch_size, where)
    return pairs


def as_quadruplets(indices: IndicesTuple, batch_size: int, where: str) -> Quadruplets:
    if isinstance(indices, (Pairs, Triplets)) or not isinstance(indices, tuple) or len(indices) != 4:
        raise TrainingError(f"{where}: indices_tuple must be quadruplets (anchor, positive, negative, negative2)")
    quads = Quadruplets(*(t.long() if isinstance(t, Tensor) else t for t in indices))
    _check_index_groups(tuple(quads), batch_size, where)
    return quads


def empty_index(device: torch.device) -> Tensor:
    return torch.empty(0, dtype=torch.long, device=device)


class BaseMiner(ABC):
    """Chooses index tuples from a batch. `miner(embeddings, labels)` or `miner.mine(dist, labels)`."""

    def __init__(self, metric: str = "euclidean") -> None:
        self.metric = check_metric(metric, f"{type(self).__name__}.metric")

    def __call__(self, embeddings: Tensor, labels: Tensor) -> IndicesTuple:
        with torch.no_grad():
            dist = pairwise_distance(embeddings.detach(), metric=self.metric)
        return self.mine(dist, labels)

    def mine(self, dist: Tensor, labels: Tensor) -> IndicesTuple:
        """Mine from a precomputed (B, B) distance matrix (its metric is then the caller's choice)."""
        where = type(self).__name__
        check_distance_matrix(dist, where)
        check_labels(labels, dist.shape[0], where)
        with torch.no_grad():
            return self._mine(dist.detach(), labels.to(dist.device))

    @abstractmethod
    def _mine(self, dist: Tensor, labels: Tensor) -> IndicesTuple: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(metric={self.metric!r})"
