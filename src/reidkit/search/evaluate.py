"""Accuracy of search results under the market protocol, to check an index against `reidkit evaluate`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ReIDError
from .index import Metadata, SearchResults


def queries_with_match(metadata: Metadata, q_pids: np.ndarray, q_camids: np.ndarray) -> np.ndarray:
    """Per query: does the index hold its identity seen from another camera? (else the protocol skips it)"""
    pids, cams = metadata.pids, metadata.camids
    num_cams = int(max(cams.max(initial=0), q_camids.max(initial=0))) + 2
    offset = int(min(pids.min(initial=0), q_pids.min(initial=0)))
    pairs = np.unique((pids - offset) * num_cams + (cams + 1))
    pair_pids, cams_per_pid = np.unique(pairs // num_cams + offset, return_counts=True)
    pos = np.clip(np.searchsorted(pair_pids, q_pids), 0, max(len(pair_pids) - 1, 0))
    cams_of_pid = np.where(pair_pids[pos] == q_pids, cams_per_pid[pos], 0) if len(pair_pids) else 0
    own_camera = np.isin((q_pids - offset) * num_cams + (q_camids + 1), pairs)
    return cams_of_pid - own_camera > 0


def search_rank_k(results: SearchResults, q_pids: np.ndarray, q_camids: np.ndarray,
                  ranks: Sequence[int] = (1, 5, 10)) -> dict[str, float | int]:
    """CMC at each r in `ranks` from search results, market protocol, over queries that have a valid match.

    Results of the query's own identity from the query's own camera are skipped (junk), as `evaluate_rank`
    does. Ask for enough results: k >= max(ranks) + the most images one identity has in one camera.
    """
    q_pids, q_camids = np.asarray(q_pids, dtype=np.int64), np.asarray(q_camids, dtype=np.int64)
    rows = results.indices
    if len(q_pids) != len(rows) or len(q_camids) != len(rows):
        raise ReIDError(f"q_pids/q_camids: {len(q_pids)}/{len(q_camids)} entries for {len(rows)} queries")
    present = rows >= 0
    safe = np.maximum(rows, 0)
    same_pid = present & (results.metadata.pids[safe] == q_pids[:, None])
    junk = same_pid & (results.metadata.camids[safe] == q_camids[:, None])
    kept = present & ~junk
    position = np.cumsum(kept, axis=1) - 1  # 0-based rank of each kept result once junk is removed
    first_hit = np.where(same_pid & kept, position, np.iinfo(np.int64).max).min(axis=1, initial=np.iinfo(np.int64).max)
    valid = queries_with_match(results.metadata, q_pids, q_camids)
    if not valid.any():
        raise ReIDError("no query has a match from another camera in the index")
    out: dict[str, float | int] = {f"rank{r}": float((first_hit[valid] < r).mean()) for r in ranks}
    out["num_valid_queries"] = int(valid.sum())
    return out
