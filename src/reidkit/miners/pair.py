"""Pair miners: all pairs (contrastive loss) and the single hardest pairs of a batch (MSML, Xiao et al. 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BaseMiner, Pairs, empty_index, label_masks
from .registry import register_miner


def _upper(mask: Tensor) -> Tensor:
    """Keep i < j: distances are symmetric, so each unordered pair is used once."""
    return torch.triu(mask, diagonal=1)


@register_miner("all_pairs")
class AllPairsMiner(BaseMiner):
    """Every unordered positive pair and every unordered negative pair (i < j)."""

    def _mine(self, dist: Tensor, labels: Tensor) -> Pairs:
        positive, negative = label_masks(labels)
        a1, p = _upper(positive).nonzero(as_tuple=True)
        a2, n = _upper(negative).nonzero(as_tuple=True)
        return Pairs(a1, p, a2, n)


def _extreme_pair(dist: Tensor, mask: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """(i, j) of the largest/smallest masked entry as 1-element tensors, or empty tensors if none."""
    if not mask.any():
        return empty_index(dist.device), empty_index(dist.device)
    fill = float("-inf") if largest else float("inf")
    flat = dist.masked_fill(~mask, fill).flatten()
    index = flat.argmax() if largest else flat.argmin()
    size = dist.shape[1]
    return (index // size).reshape(1), (index % size).reshape(1)


@register_miner("hardest_pair")
class HardestPairMiner(BaseMiner):
    """MSML's selection: the farthest positive pair and the closest negative pair anywhere in the batch.

    Returns Pairs with one positive and one negative pair (or empty lists when the batch has none).
    """

    def _mine(self, dist: Tensor, labels: Tensor) -> Pairs:
        positive, negative = label_masks(labels)
        a1, p = _extreme_pair(dist, _upper(positive), largest=True)
        a2, n = _extreme_pair(dist, _upper(negative), largest=False)
        return Pairs(a1, p, a2, n)
