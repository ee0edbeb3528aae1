"""Re-ranking of query-gallery distances: k-reciprocal encoding, query expansion (AQE), SSM diffusion."""

from .methods import (
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
    "knn_transition",
    "query_expansion",
    "re_ranking",
    "re_ranking_features",
    "rerank",
    "ssm_diffusion",
    "ssm_rerank",
]
