"""Ranking with a pair network: single-shot CMC and the CUHK03 classic protocol (re-ranking an embedding's top-k
with a pair network is the `pair` re-ranker, reidkit.rerank.pair).

A pair network scores pairs, not images, so ranking a gallery costs one pair evaluation per (query, gallery)
pair. The tied trunk still runs once per image (`PairNetwork.embed_batched`); only the pair layers run per pair.

CUHK03 classic protocol (Li et al. 2014, as used by Ahmed et al. 2015): 100 test identities, single-shot - one
image per identity from camera A as the query and one from camera B as the gallery - so each query has exactly one
true match among 100 gallery images; the CMC is averaged over 10 random draws of the images.
"""

from __future__ import annotations

import numpy as np
import torch

from .rank import MetricInputError


def single_shot_cmc(scores, q_pids, g_pids, max_rank: int | None = None) -> np.ndarray:
    """CMC (fractions, rank 1 first) when every query has exactly one true match in the gallery.

    `scores` (Q, G): higher = more similar. The match's rank counts every other gallery item scoring at least as
    high (ties count against the match, so a constant scorer cannot look good).
    """
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    q, g = np.asarray(q_pids), np.asarray(g_pids)
    if s.ndim != 2 or s.shape != (q.size, g.size):
        raise MetricInputError(f"scores: expected shape (len(q_pids), len(g_pids)) = ({q.size}, {g.size}), "
                               f"got {s.shape}")
    if np.isnan(s).any():
        raise MetricInputError("scores: contains NaN values")
    matches = q[:, None] == g[None, :]
    per_query = matches.sum(1)
    if not np.all(per_query == 1):
        bad = np.flatnonzero(per_query != 1)[:5]
        raise MetricInputError(f"q_pids/g_pids: single-shot needs exactly one gallery match per query; queries "
                               f"{bad.tolist()} have {per_query[bad].tolist()}")
    match_score = s[matches]  # one per query, in query order
    rank = (s >= match_score[:, None]).sum(1) - 1  # 0 = first
    max_rank = g.size if max_rank is None else min(max_rank, g.size)
    return (rank[:, None] < np.arange(1, max_rank + 1)[None, :]).mean(0)


def single_shot_draws(pids, camids, num_ids: int = 100, num_draws: int = 10, seed: int = 0, query_cam: int = 0,
                      gallery_cam: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per draw, (query indices, gallery indices): `num_ids` random identities seen by both cameras, one random
    image of each in `query_cam` (queries) and in `gallery_cam` (gallery), listed in the same identity order."""
    pids, camids = np.asarray(pids), np.asarray(camids)
    in_query_cam = np.unique(pids[camids == query_cam])
    eligible = np.intersect1d(in_query_cam, pids[camids == gallery_cam])
    if eligible.size < num_ids:
        raise MetricInputError(f"num_ids={num_ids}: only {eligible.size} identities have images in both camera "
                               f"{query_cam} and camera {gallery_cam}")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(num_draws):
        chosen = np.sort(rng.choice(eligible, num_ids, replace=False))
        draws.append(tuple(_one_image_per_id(pids, camids, chosen, cam, rng) for cam in (query_cam, gallery_cam)))
    return draws


def _one_image_per_id(pids: np.ndarray, camids: np.ndarray, chosen: np.ndarray, cam: int,
                      rng: np.random.Generator) -> np.ndarray:
    """A uniformly random image of each chosen identity in camera `cam`, ordered like `chosen` (sorted)."""
    candidates = rng.permutation(np.flatnonzero(np.isin(pids, chosen) & (camids == cam)))
    _, first = np.unique(pids[candidates], return_index=True)  # first after shuffling = random; sorted by pid
    return candidates[first]


def cuhk03_single_shot_cmc(model, images: torch.Tensor, pids, camids, num_ids: int = 100, num_draws: int = 10,
                           seed: int = 0, max_rank: int = 20, batch_size: int = 512, query_cam: int = 0,
                           gallery_cam: int = 1, symmetric: bool = False, flip: bool = False) -> dict:
    """CUHK03 classic single-shot CMC (percent) of a pair network, averaged over `num_draws` random draws.

    `images` (uint8 or normalised float, N x 3 x H x W) are indexed like `pids`/`camids`. Only images used by some
    draw go through the trunk, once (per test-time view; `symmetric`/`flip`: see `PairNetwork.image_pair_scores`).
    """
    draws = single_shot_draws(pids, camids, num_ids, num_draws, seed, query_cam, gallery_cam)
    used = np.unique(np.concatenate([np.concatenate(d) for d in draws]))
    position = np.full(len(images), -1)
    position[used] = np.arange(used.size)
    qi = torch.cat([torch.from_numpy(position[q_idx]).repeat_interleave(num_ids) for q_idx, _ in draws])
    gi = torch.cat([torch.from_numpy(position[g_idx]).repeat(num_ids) for _, g_idx in draws])
    subset = images[torch.from_numpy(used)]
    scores = model.image_pair_scores(subset, subset, qi, gi, batch_size, symmetric, flip)
    scores = scores.view(len(draws), num_ids, num_ids)
    curves = [single_shot_cmc(s, np.asarray(pids)[q_idx], np.asarray(pids)[g_idx], max_rank)
              for s, (q_idx, g_idx) in zip(scores, draws)]
    cmc = 100.0 * np.mean(curves, axis=0)
    per_draw_rank1 = [100.0 * float(c[0]) for c in curves]
    return {"cmc": cmc.tolist(), "rank1": float(cmc[0]), "rank5": float(cmc[min(4, cmc.size - 1)]),
            "rank10": float(cmc[min(9, cmc.size - 1)]), "rank20": float(cmc[min(19, cmc.size - 1)]),
            "rank1_per_draw": per_draw_rank1, "rank1_std": float(np.std(per_draw_rank1)),
            "num_ids": num_ids, "num_draws": num_draws}
