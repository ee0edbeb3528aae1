"""Miners choose index tuples (triplets, pairs, quadruplets) or weights from a batch; losses consume them.

>>> miner = BatchHardMiner()
>>> triplets = miner(embeddings, labels)  # or miner.mine(distance_matrix, labels)
>>> loss = TripletLoss(margin=0.3)(embeddings, labels, triplets)
"""

from .base import (
    BaseMiner,
    IndicesTuple,
    Pairs,
    Quadruplets,
    Triplets,
    as_pairs,
    as_quadruplets,
    as_triplets,
    label_masks,
)
from .pair import AllPairsMiner, HardestPairMiner
from .quadruplet import QuadrupletMiner
from .registry import build_miner, list_miners, register_miner
from .triplet import AllTripletsMiner, BatchHardMiner, SemiHardMiner
from .weights import softmax_weights

__all__ = [
    "AllPairsMiner",
    "AllTripletsMiner",
    "BaseMiner",
    "BatchHardMiner",
    "HardestPairMiner",
    "IndicesTuple",
    "Pairs",
    "QuadrupletMiner",
    "Quadruplets",
    "SemiHardMiner",
    "Triplets",
    "as_pairs",
    "as_quadruplets",
    "as_triplets",
    "build_miner",
    "label_masks",
    "list_miners",
    "register_miner",
    "softmax_weights",
]
