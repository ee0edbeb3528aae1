"""Evaluation as plain functions: distance matrices, CMC/mAP/mINP (torchreid-compatible), summaries, plots.

A pure library: it imports no training, inference, re-ranking or CLI code."""

from ..distance import compute_distance_matrix
from .alignment import aligned_distance_matrix, local_distance, local_distance_pairs, shortest_path, squash_distance
from .plots import plot_cmc, ranked_list_grid
from .rank import RankResult, evaluate_rank, evaluate_rank_full, summarize

__all__ = [
    "RankResult",
    "aligned_distance_matrix",
    "compute_distance_matrix",
    "evaluate_rank",
    "evaluate_rank_full",
    "local_distance",
    "local_distance_pairs",
    "plot_cmc",
    "ranked_list_grid",
    "shortest_path",
    "squash_distance",
    "summarize",
]
