"""Ranked-list picture of search results: one row per query, the query then its top-k with rank and score.

Frames: blue = query, green / red = same / different identity when both pids are known, grey otherwise.
Unlike `metrics.ranked_list_grid` (evaluation over a full distance matrix with junk removed) this shows
exactly what the search returned, including unknown identities and scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..utils import atomic_path

QUERY_COLOUR = (40, 90, 220)
SAME_COLOUR = (30, 170, 60)
OTHER_COLOUR = (220, 40, 40)
UNKNOWN_COLOUR = (150, 150, 150)
BACKGROUND = (255, 255, 255)
CAPTION_HEIGHT = 14


def _cell(image: Any, size: tuple[int, int]) -> Image.Image:
    """A path or PIL image resized to the cell; an unreadable file becomes a grey tile (the list still shows)."""
    height, width = size
    try:
        img = image if isinstance(image, Image.Image) else Image.open(image)
        return img.convert("RGB").resize((width, height), Image.BILINEAR)
    except (OSError, ValueError):
        return Image.new("RGB", (width, height), UNKNOWN_COLOUR)


def _frame_colour(query_pid: int | None, hit_pid: int | None) -> tuple[int, int, int]:
    if query_pid is None or hit_pid is None:
        return UNKNOWN_COLOUR
    return SAME_COLOUR if hit_pid == query_pid else OTHER_COLOUR


def ranked_list_picture(queries: Sequence[Any], hits: Sequence[list[dict[str, Any]]], path: str | os.PathLike,
                        query_pids: Sequence[int | None] | None = None, cell_size: tuple[int, int] = (128, 64),
                        border: int = 3, gap: int = 3) -> Path:
    """Save a PNG with one row per query: `queries[i]` (path or PIL image) then `hits[i]` (from
    `SearchResults.hits`). `query_pids` (None entries = unknown) enables green/red frames."""
    height, width = cell_size
    cell_w, cell_h = width + 2 * (border + gap), height + 2 * (border + gap) + CAPTION_HEIGHT
    columns = 1 + max((len(h) for h in hits), default=0)
    grid = Image.new("RGB", (columns * cell_w, max(1, len(queries)) * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    pids = list(query_pids) if query_pids is not None else [None] * len(queries)

    def put(row: int, col: int, image: Any, colour: tuple[int, int, int], caption: str) -> None:
        left, top = col * cell_w + gap, row * cell_h + gap
        draw.rectangle([left, top, left + width + 2 * border - 1, top + height + 2 * border - 1], fill=colour)
        grid.paste(_cell(image, cell_size), (left + border, top + border))
        draw.text((left, top + height + 2 * border + 1), caption, fill=(0, 0, 0))

    for row, (query, row_hits) in enumerate(zip(queries, hits)):
        put(row, 0, query, QUERY_COLOUR, "query" if pids[row] is None else f"query {pids[row]}")
        for col, hit in enumerate(row_hits, 1):
            put(row, col, hit["path"], _frame_colour(pids[row], hit.get("pid")), f"#{hit['rank']} {hit['score']:.2f}")
    path = Path(path)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path
