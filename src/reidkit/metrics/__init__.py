"""Evaluation: distance matrices, CMC/mAP/mINP (torchreid-compatible), summaries and plots."""

from .distance import compute_distance_matrix
from .plots import plot_cmc, ranked_list_grid
from .rank import RankResult, evaluate_rank, evaluate_rank_full
from .report import summarize

__all__ = [
    "RankResult",
    "compute_distance_matrix",
    "evaluate_rank",
    "evaluate_rank_full",
    "plot_cmc",
    "ranked_list_grid",
    "summarize",
]
