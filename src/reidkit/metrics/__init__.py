"""Evaluation as plain functions: CMC/mAP/mINP (torchreid-compatible), summaries, pair verification, pictures.

A pure library: it imports no training, inference, re-ranking, search, export or CLI code (tests/test_layering.py).
`compute_distance_matrix` is re-exported from `reidkit.distance`, the one distance vocabulary."""

from ..distance import compute_distance_matrix
from .alignment import aligned_distance_matrix, local_distance, local_distance_pairs, shortest_path, squash_distance
from .plots import RankedCell, cmc_figure, draw_ranked_lists, plot_cmc, ranked_list_grid
from .rank import RankResult, evaluate_rank, evaluate_rank_full, summarize

__all__ = [
    "RankResult",
    "RankedCell",
    "aligned_distance_matrix",
    "cmc_figure",
    "compute_distance_matrix",
    "draw_ranked_lists",
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
