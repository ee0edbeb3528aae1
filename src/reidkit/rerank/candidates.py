"""Re-ranking of a first-stage candidate list: k-reciprocal encoding or a pair (verification) network.

Both work on a small candidate pool -- the union of every query's top-`rerank_k` rows -- so the cost does not
grow with the gallery: k-reciprocal neighbourhoods are computed among queries + candidates only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, ReIDError
from ..search.index import SearchResults
from ..search.knn import topk_rows

RERANKERS = ("k_reciprocal", "pair")


def candidate_pool(indices: np.ndarray) -> np.ndarray:
    """Sorted unique gallery rows appearing in any query's first-stage list (faiss pads with -1)."""
    return np.unique(indices[indices >= 0])


def _reranked(results: SearchResults, distances: np.ndarray, pool: np.ndarray, queries: np.ndarray,
              gallery: np.ndarray, k: int, method: str) -> SearchResults:
    """Order the pool by re-ranked distance (ascending) and report cosine scores alongside."""
    neg_dist, local = topk_rows(-distances, k)
    rows = pool[local]
    cosine = np.einsum("qd,qkd->qk", queries, gallery[rows])
    return SearchResults(cosine.astype(np.float32), rows, results.metadata, results.method, rerank=method,
                         rerank_distances=-neg_dist, notes=results.notes)


def k_reciprocal(results: SearchResults, queries: np.ndarray, gallery: np.ndarray, k: int, k1: int = 20,
                 k2: int = 6, lambda_value: float = 0.3) -> SearchResults:
    """k-reciprocal re-ranking (Zhong et al. 2017) of the candidate pool; see metrics.reranking."""
    from .methods import re_ranking_features

    pool = candidate_pool(results.indices)
    if len(pool) <= k1:
        raise ReIDError(f"k-reciprocal re-ranking needs more than k1={k1} candidates, got {len(pool)}; "
                        "raise rerank_k (--rerank-k) or lower k1")
    distances = re_ranking_features(queries, gallery[pool], k1=k1, k2=k2, lambda_value=lambda_value)
    return _reranked(results, distances, pool, queries, gallery, k, "k_reciprocal")


def pair_network(results: SearchResults, queries: np.ndarray, gallery: np.ndarray, k: int, *, model: Any,
                 query_images: Sequence[Any], batch_size: int = 512) -> SearchResults:
    """Re-score the candidate pool with a pair network (e.g. models.idla): `model.score(q_uint8, g_uint8)` gives
    (Q, pool) same-person log-odds; the trunk runs once per image, the pair layers once per pair."""
    from ..inference.backends import images_to_uint8

    if not callable(getattr(model, "score", None)) or not hasattr(model, "input_size"):
        raise ReIDError(f"pair re-ranking needs a pair network with .score() and .input_size, got "
                        f"{type(model).__name__}")
    pool = candidate_pool(results.indices)
    size = tuple(model.input_size)
    q_pixels = images_to_uint8(list(query_images), size)
    g_pixels = images_to_uint8([str(p) for p in results.metadata.paths[pool]], size)
    similarity = np.asarray(model.score(q_pixels, g_pixels, batch_size=batch_size), dtype=np.float32)
    if similarity.shape != (len(queries), len(pool)):
        raise ReIDError(f"pair network returned scores of shape {similarity.shape}, expected "
                        f"{(len(queries), len(pool))}")
    return _reranked(results, -similarity, pool, queries, gallery, k, "pair")


def rerank_candidates(results: SearchResults, queries: np.ndarray, gallery: np.ndarray, k: int, method: str,
                      **params: Any) -> SearchResults:
    if method == "k_reciprocal":
        return k_reciprocal(results, queries, gallery, k, **params)
    if method == "pair":
        return pair_network(results, queries, gallery, k, **params)
    raise ConfigError(f"rerank={method!r}: expected one of {', '.join(RERANKERS)}")
