"""Nearest neighbours by cosine similarity: exact (blocked matrix product) or approximate (faiss IVF / HNSW).

Features are L2-normalised, so cosine similarity is the inner product and larger scores are better.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ReIDError
from ..utils import atomic_path

METHODS = ("auto", "exact", "ivf", "hnsw")
APPROX_KINDS = ("ivf", "hnsw")
# Above this many gallery vectors `auto` builds and uses an approximate index. From bench/bench_search.py on
# 2 CPU cores: exact search of one query takes ~25 ms at 1e5 and ~0.25 s at 1e6 vectors (memory bound).
APPROX_THRESHOLD = 200_000
# Exact search computes (block of queries) x (gallery) scores at a time; this caps that block at 128 MB.
MAX_BLOCK_SCORES = 32 * 1024 * 1024


def _check_features(queries: np.ndarray, gallery: np.ndarray) -> None:
    if queries.ndim != 2 or gallery.ndim != 2:
        raise ReIDError(f"features must be 2-D (N, D); got queries {queries.shape} and gallery {gallery.shape}")
    if queries.shape[1] != gallery.shape[1]:
        raise ReIDError(f"query features are {queries.shape[1]}-d but the gallery's are {gallery.shape[1]}-d")


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest scores (descending) and their column indices.

    torch.topk, not np.argpartition: on (32, 1e6) score blocks it is ~9x faster (multi-threaded, no negated
    copy), which dominates exact search of large galleries.
    """
    k = min(k, scores.shape[1])
    values, indices = torch.topk(torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)), k, dim=1,
                                 largest=True, sorted=True)
    return values.numpy(), indices.numpy().astype(np.int64)


def exact_search(queries: np.ndarray, gallery: np.ndarray, k: int,
                 max_block_scores: int = MAX_BLOCK_SCORES) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: (scores (Q, k'), indices (Q, k')) with k' = min(k, N)."""
    _check_features(queries, gallery)
    rows = max(1, max_block_scores // max(1, len(gallery)))
    blocks = [topk_rows(queries[s:s + rows] @ gallery.T, k) for s in range(0, len(queries), rows)]
    if not blocks:
        k = min(k, len(gallery))
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


@dataclass
class AnnParams:
    """Parameters of an approximate index (stored in index.json so a reload searches the same way)."""

    kind: str
    nlist: int | None = None  # IVF: number of k-means cells
    nprobe: int | None = None  # IVF: cells visited per query
    hnsw_m: int | None = None  # HNSW: links per node
    ef_construction: int | None = None
    ef_search: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnnParams:
        return cls(**data)


def default_params(kind: str, count: int) -> AnnParams:
    """Settings measured in bench/bench_search.py to reach recall@10 of about 0.95 against exact search on
    synthetic clustered vectors (n/10 tight clusters, a hard case for IVF: no coarse structure)."""
    if kind == "ivf":
        # 2 sqrt(n) cells keeps k-means training affordable on 2 cores at 1e6; faiss wants >= 39 points per cell
        nlist = int(min(max(1, round(2 * math.sqrt(count))), max(1, count // 39)))
        return AnnParams("ivf", nlist=nlist, nprobe=min(nlist, max(8, nlist // 8)))
    if kind == "hnsw":
        # M=16 / efConstruction=40 builds ~3x faster than M=32 / 80; a wider ef_search recovers the recall
        return AnnParams("hnsw", hnsw_m=16, ef_construction=40, ef_search=256)
    raise ConfigError(f"approximate index kind {kind!r}: expected one of {', '.join(APPROX_KINDS)}")


def _faiss():
    from ..inference import import_optional

    return import_optional("faiss", "approximate search (--approx ivf / hnsw)", package="faiss-cpu")


def build_ann(features: np.ndarray, params: AnnParams, train_sample: int = 64, seed: int = 0) -> Any:
    """A faiss index over `features` (inner product). IVF trains k-means on `train_sample` points per cell."""
    faiss = _faiss()
    features = np.ascontiguousarray(features, dtype=np.float32)
    dim = features.shape[1]
    if params.kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, params.nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = min(len(features), train_sample * params.nlist)
        index.train(features[np.sort(rng.choice(len(features), sample, replace=False))])
    elif params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
    else:
        raise ConfigError(f"approximate index kind {params.kind!r}: expected one of {', '.join(APPROX_KINDS)}")
    index.add(features)
    return index


def ann_search(index: Any, params: AnnParams, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices) like `exact_search`; faiss pads short result lists with index -1."""
    if params.kind == "ivf":
        index.nprobe = params.nprobe
    else:
        index.hnsw.efSearch = max(params.ef_search, k)
    k = min(k, index.ntotal)
    scores, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, indices.astype(np.int64)


def clone_ann(index: Any) -> Any:
    """An independent copy (to extend without changing an index that may still be searched)."""
    return _faiss().clone_index(index)


def save_ann(index: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        _faiss().write_index(index, str(tmp))


def load_ann(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return _faiss().read_index(str(path))
    except RuntimeError as exc:
        raise ReIDError(f"approximate index {path}: cannot be read ({exc})") from None


def choose_method(method: str, count: int, available: str | None) -> str:
    """Resolve "auto": the stored approximate index for big galleries, exact search otherwise."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    return available if available and count >= APPROX_THRESHOLD else "exact"
