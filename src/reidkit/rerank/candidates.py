"""Re-ranking a search's candidate pool with any registered re-ranker (rerank.base).

The pool is the union of every query's first-stage list (each query's top-`rerank_k` rows), so the cost does not
grow with the gallery: the re-ranker sees the problem queries x pool, with the first-stage (cosine) distances.
Pair fusion re-orders each query's own top-`top` within the pool, which equals its global top-`top` whenever the
first stage is exact and returned at least `top` rows per query, so a search then gives the same ranking as
`reidkit evaluate` on the whole gallery. k-reciprocal, AQE and SSM see only queries + pool (an approximation of
the full-gallery method that becomes exact when the pool is the whole gallery).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import Images, Reranker, build_reranker


def candidate_pool(indices: np.ndarray) -> np.ndarray:
    """Sorted unique gallery rows appearing in any query's first-stage list (faiss pads with -1)."""
    return np.unique(indices[indices >= 0])


def rerank_pool(reranker: Reranker, queries: np.ndarray, gallery: np.ndarray, indices: np.ndarray, k: int, *,
                query_images: Images | None = None, gallery_images: Images | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(rows (Q, k'), re-ranked distances (Q, k')) of each query's best `k` pool rows, k' = min(k, pool size).

    `queries` / `gallery` are L2-normalised features (first-stage distance 1 - cosine); `gallery_images` is
    indexed like `gallery` (only the pool's rows are read)."""
    pool = candidate_pool(indices)
    if len(pool) < reranker.min_gallery:
        raise ConfigError(f"re-ranker {reranker.label!r} needs at least {reranker.min_gallery} candidates, the "
                          f"search found {len(pool)}; raise the candidate count (--rerank-top) or lower k1 / top_k")
    pool_images = None if gallery_images is None else _rows(gallery_images, pool)
    if isinstance(pool_images, list) or getattr(pool_images, "dtype", None) == np.dtype(object):
        missing = [int(row) for row, image in zip(pool, pool_images) if image is None]
        if missing:
            raise ConfigError(f"re-ranker {reranker.label!r} needs the gallery images, but candidate rows "
                              f"{missing[:5]} have no path (crops added in memory)")
    distances = reranker(queries, gallery[pool], distances=1.0 - queries @ gallery[pool].T,
                         query_images=query_images, gallery_images=pool_images)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return pool[order], np.take_along_axis(distances, order, axis=1)


def _rows(images: Images, rows: np.ndarray) -> Images:
    if isinstance(images, np.ndarray):
        return images[rows]
    if hasattr(images, "index_select"):  # torch tensor
        import torch

        return images[torch.from_numpy(rows)]
    return [images[i] for i in rows]


def rerank_candidates(results: Any, queries: np.ndarray, gallery: np.ndarray, k: int, method: str | Reranker,
                      query_images: Images | None = None, **params: Any) -> Any:
    """`results` (search.index.SearchResults) re-ranked by `method` (a registered name with `params`, or a
    Reranker): rows in re-ranked order, `rerank_distances` the re-ranked distances, `scores` still cosine."""
    reranker = build_reranker(method, **params) if isinstance(method, str) else method
    if params and not isinstance(method, str):
        raise ConfigError(f"re-ranker parameters {', '.join(params)} given with a built re-ranker")
    rows, distances = rerank_pool(reranker, queries, gallery, results.indices, k, query_images=query_images,
                                  gallery_images=results.metadata.paths if reranker.needs_images else None)
    cosine = np.einsum("qd,qkd->qk", queries, gallery[rows])
    return dataclasses.replace(results, scores=cosine.astype(np.float32), indices=rows, rerank=reranker.label,
                               rerank_distances=distances)
