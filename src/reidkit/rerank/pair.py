"""Pair fusion: re-order each query's top-k by a pair (verification) network, fused by rank with the embedding.

A pair network (IDLA, IDLA-NCC, MLS) scores image pairs, not images, so it is too slow to rank a whole gallery
but cheap on each query's k nearest items. Within the top-k, items are ordered by

    (1 - weight) x embedding rank + weight x pair-score rank          (ranks 0..k-1, ties: embedding order)

weight = 1 orders by the pair score alone, 0 keeps the embedding order. Ranks, not raw values, so the two
scales need no calibration against each other. On CUHK03-NP validation, re-ranking the recipe embedding's top-20
with the best IDLA raised rank-1 54.0 -> 60.0 (docs/benchmarks/pairnets.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ModelError
from .base import Images, Reranker, RerankInputs, register

PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def rerank_top_k(distmat, scorer: PairScorer, k: int = 20, pair_weight: float = 1.0) -> np.ndarray:
    """Re-order each query's `k` nearest gallery items (by `distmat`) with a pair scorer; the rest keep their order.

    `scorer(query_index, gallery_index)` returns one score per pair (higher = same person); the top-k are
    ordered by the rank fusion above. The result is a distance matrix usable by any evaluator: the top-k entries
    get new values below every original distance, in the fused order; entries beyond k are unchanged.
    """
    dist = np.asarray(distmat, dtype=np.float64)
    if dist.ndim != 2 or dist.size == 0:
        raise ConfigError(f"distmat: expected a non-empty 2-D matrix, got shape {dist.shape}")
    if k < 1:
        raise ConfigError(f"k={k}: must be at least 1")
    if not 0.0 <= pair_weight <= 1.0:
        raise ConfigError(f"pair_weight={pair_weight}: must be in [0, 1]")
    k = min(k, dist.shape[1])
    top = np.argsort(dist, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(dist.shape[0]), k)
    scores = np.asarray(scorer(rows, top.ravel()), dtype=np.float64).reshape(top.shape)
    if scores.shape != top.shape or np.isnan(scores).any():
        raise ModelError("pair scorer: must return one non-NaN score per (query, gallery) pair")
    pair_rank = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1, kind="stable")
    fused = (1.0 - pair_weight) * np.arange(k) + pair_weight * pair_rank
    order = np.argsort(fused, axis=1, kind="stable")  # stable: ties keep the embedding order
    reordered = np.take_along_axis(top, order, axis=1)
    out = dist.copy()
    floor = dist.min() - 1.0
    np.put_along_axis(out, reordered, floor - 1.0 + np.arange(k) / k, axis=1)  # all below `floor`, increasing
    return out


def _image_tensor(images: Images, rows: np.ndarray, size: tuple[int, int], show_progress: bool,
                  desc: str) -> torch.Tensor:
    """uint8 (len(rows), 3, H, W): the given rows of a tensor, or those paths decoded (only the ones needed)."""
    if isinstance(images, torch.Tensor) or (isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.number)):
        return torch.as_tensor(images)[torch.from_numpy(rows)]
    from ..data.images import load_image_tensor

    return load_image_tensor([str(images[i]) for i in rows], size, show_progress=show_progress, desc=desc)


def pair_network_scorer(model, query_images: Images, gallery_images: Images, batch_size: int = 512,
                        symmetric: bool = False, flip: bool = False, show_progress: bool = False) -> PairScorer:
    """A `rerank_top_k` scorer backed by a pair network: each call decodes (paths) and embeds only the images its
    pairs use, once per image and test-time view (`symmetric`/`flip` as in `PairNetwork.image_pair_scores`)."""
    size = tuple(model.input_size)

    def scorer(q_index: np.ndarray, g_index: np.ndarray) -> np.ndarray:
        q_ids, qi = np.unique(np.asarray(q_index), return_inverse=True)
        g_ids, gi = np.unique(np.asarray(g_index), return_inverse=True)
        q = _image_tensor(query_images, q_ids, size, show_progress, "decoding query images")
        g = _image_tensor(gallery_images, g_ids, size, show_progress, "decoding gallery images")
        return model.image_pair_scores(q, g, torch.from_numpy(qi.reshape(-1)), torch.from_numpy(gi.reshape(-1)),
                                       batch_size, symmetric, flip).numpy()

    return scorer


def load_pair_network(model: Any, device: str = "cpu") -> torch.nn.Module:
    """A pair network object, or one rebuilt from a checkpoint path; ModelError if it is not a pair network."""
    if isinstance(model, (str, Path)):
        from ..checkpoint import model_from_checkpoint

        net, payload = model_from_checkpoint(model)
        where = f"{model} (a {payload.get('model_name')!r} model)"
    else:
        net, where = model, type(model).__name__
    if not callable(getattr(net, "image_pair_scores", None)) or not hasattr(net, "input_size"):
        raise ModelError(f"{where} is not a pair network (idla, idla_ncc, mls): pair fusion needs a model with "
                         "image_pair_scores and input_size")
    from ..utils import resolve_device

    return net.to(resolve_device(device)).eval()


@register("pair")
@dataclass
class PairFusion(Reranker):
    """Re-order each query's `top` nearest (first-stage distances) by a pair network, rank-fused with `weight`;
    `tta` averages both input orders and the mirrored pair. `model`: a checkpoint path or a pair network."""

    model: Any = None
    top: int = 20
    weight: float = 1.0
    tta: bool = False
    batch_size: int = 512
    device: str = "cpu"
    show_progress: bool = False

    needs_features = False
    needs_images = True

    def __post_init__(self) -> None:
        if self.model is None:
            raise ConfigError("pair fusion needs a pair network: model=<checkpoint path or PairNetwork> "
                              "(--pair-model on the command line)")
        if isinstance(self.top, bool) or not isinstance(self.top, (int, np.integer)) or self.top < 1:
            raise ConfigError(f"pair fusion top (--rerank-top) must be an integer >= 1, got {self.top!r}")
        if not 0.0 <= float(self.weight) <= 1.0:
            raise ConfigError(f"pair fusion weight (--pair-weight) must be in [0, 1], got {self.weight!r}")
        self.network = load_pair_network(self.model, self.device)

    def rerank(self, inputs: RerankInputs) -> np.ndarray:
        scorer = pair_network_scorer(self.network, inputs.query_images, inputs.gallery_images, self.batch_size,
                                     symmetric=self.tta, flip=self.tta, show_progress=self.show_progress)
        return rerank_top_k(inputs.first_stage(), scorer, k=int(self.top), pair_weight=float(self.weight))

    def params(self) -> dict[str, Any]:
        return {"model": str(self.model) if isinstance(self.model, (str, Path)) else type(self.model).__name__,
                "top": int(self.top), "weight": float(self.weight), "tta": bool(self.tta)}
