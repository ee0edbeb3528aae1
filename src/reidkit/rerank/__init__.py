"""Re-ranking: one registry of re-rankers (k_reciprocal, aqe, ssm, pair fusion) with the same names and parameters
in `reidkit evaluate`, `reidkit search` and Python (`build_reranker`), applied to a full query x gallery problem
or to a search's candidate pool (`rerank.candidates`)."""

from .base import RERANKERS, Chain, Reranker, RerankInputs, build_reranker, reranker_names
from .methods import (
    KReciprocal,
    QueryExpansion,
    SmoothedManifold,
    knn_transition,
    query_expansion,
    re_ranking,
    re_ranking_features,
    rerank,
    ssm_diffusion,
    ssm_rerank,
)
from .pair import PairFusion, pair_network_scorer, rerank_top_k

__all__ = [
    "RERANKERS",
    "Chain",
    "KReciprocal",
    "PairFusion",
    "QueryExpansion",
    "Reranker",
    "RerankInputs",
    "SmoothedManifold",
    "build_reranker",
    "knn_transition",
    "pair_network_scorer",
    "query_expansion",
    "re_ranking",
    "re_ranking_features",
    "rerank",
    "rerank_top_k",
    "reranker_names",
    "ssm_diffusion",
    "ssm_rerank",
]
