"""Ranked-list picture of search results, drawn by the one ranked-list picture (`metrics.plots`).

Unlike `metrics.ranked_list_grid` (evaluation over a full distance matrix with junk removed) this shows
exactly what the search returned, including unknown identities (grey frames) and the scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics.plots import RankedCell, RankedLayout, draw_ranked_lists, format_value

__all__ = ["ranked_list_picture"]


def _same(query_pid: int | None, hit_pid: int | None) -> bool | None:
    return None if query_pid is None or hit_pid is None else hit_pid == query_pid


def _value(hit: dict[str, Any]) -> float:
    """The number the ranking used: the re-ranked distance after re-ranking, else the search score."""
    return hit["rerank_distance"] if hit.get("rerank_distance") is not None else hit["score"]


def ranked_list_picture(queries: Sequence[Any], hits: Sequence[list[dict[str, Any]]], path: str | os.PathLike,
                        query_pids: Sequence[int | None] | None = None, cell_size: tuple[int, int] = (128, 64),
                        border: int = 3, gap: int = 3, title: str | None = None) -> Path:
    """Save a PNG with one row per query: `queries[i]` (path or PIL image) then `hits[i]` (from
    `SearchResults.hits`). `query_pids` (None entries = unknown) enables green/red frames."""
    pids = list(query_pids) if query_pids is not None else [None] * len(queries)
    reranked = any(hit.get("rerank_distance") is not None for row in hits for hit in row)
    rows = [(RankedCell(query, "query" if pid is None else f"query, id {pid}"),
             [RankedCell(hit.get("image", hit.get("path")), f"#{hit['rank']}: {format_value(_value(hit))}",
                         _same(pid, hit.get("pid"))) for hit in row_hits])
            for query, pid, row_hits in zip(queries, pids, hits)]
    title = title or f"Search: top-{max((len(h) for h in hits), default=0)} gallery matches per query"
    return draw_ranked_lists(rows, path, title, "re-ranked distance" if reranked else "score",
                             RankedLayout(cell_size, border, gap), strict=False)
