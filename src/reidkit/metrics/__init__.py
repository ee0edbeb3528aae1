"""Evaluation: distance matrices, CMC/mAP/mINP (torchreid-compatible), summaries and plots."""

from .alignment import aligned_distance_matrix, local_distance, local_distance_pairs, shortest_path, squash_distance
from .distance import compute_distance_matrix
from .plots import plot_cmc, ranked_list_grid
from .rank import RankResult, evaluate_rank, evaluate_rank_full
from .report import summarize
from .reranking import (
    RERANK_METHODS,
    knn_transition,
    query_expansion,
    re_ranking,
    re_ranking_features,
    rerank,
    ssm_diffusion,
    ssm_rerank,
)

__all__ = [
    "RERANK_METHODS",
    "aligned_distance_matrix",
    "knn_transition",
    "local_distance",
    "local_distance_pairs",
    "query_expansion",
    "re_ranking",
    "re_ranking_features",
    "rerank",
    "shortest_path",
    "squash_distance",
    "ssm_diffusion",
    "ssm_rerank",
    "RankResult",
    "compute_distance_matrix",
    "evaluate_rank",
    "evaluate_rank_full",
    "plot_cmc",
    "ranked_list_grid",
    "summarize",
]
