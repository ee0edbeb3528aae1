"""Pictures of results: CMC curves (matplotlib) and THE ranked-list picture (PIL) that evaluate, the demo and
search all draw with `draw_ranked_lists`.

Ranked list: a title, a legend, then one row per query: the query (blue frame, separated from the results by a
line) and its results in rank order, framed green (same person), red (different person) or grey (identity
unknown), with "#rank value" (a distance or a score) under each cell.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import DataError, MetricInputError
from ..utils import atomic_path
from .rank import _as_numpy, _validated_ids

QUERY_COLOUR = (40, 90, 220)
SAME_COLOUR = (30, 170, 60)
OTHER_COLOUR = (220, 40, 40)
UNKNOWN_COLOUR = (150, 150, 150)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)


# ------------------------------------------------------------------------------------------------- CMC

def cmc_figure(cmc: np.ndarray | Mapping[str, np.ndarray], title: str = "CMC", max_rank: int | None = None):
    """A matplotlib Figure of one CMC curve (fractions, rank 1 first) or several named ones ({name: cmc}).

    Ranks are integers on the x axis, rates are percent on the y axis; each legend entry states its rank-1.
    """
    # The object-oriented API leaves pyplot's global backend and figure list untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    curves = dict(cmc) if isinstance(cmc, Mapping) else {"": cmc}
    if not curves:
        raise MetricInputError("cmc: no curve to plot")
    figure = Figure(figsize=(5.5, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    longest = 0
    for name, curve in curves.items():
        values = 100 * np.asarray(curve, dtype=np.float64).ravel()[:max_rank]
        longest = max(longest, values.size)
        if values.size == 0:
            raise MetricInputError(f"cmc {name!r}: empty curve")
        label = f"{name}: rank-1 {values[0]:.1f}%" if name else f"rank-1 {values[0]:.1f}%"
        axes.plot(np.arange(1, values.size + 1), values, marker="o" if values.size <= 20 else None, markersize=3,
                  label=label)
    axes.set_xticks(_rank_ticks(longest))
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
    axes.set(xlabel="rank k", ylabel="matching rate: true match within the top k", title=title, ylim=(0, 101))
    axes.set_xlim(left=0.5)
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    return figure


def _rank_ticks(num_ranks: int) -> list[int]:
    """Integer ranks: all of them up to 10, else 1 and round steps (1, 5, 10, ... or 1, 10, 20, ...)."""
    if num_ranks <= 10:
        return list(range(1, num_ranks + 1))
    step = 5
    while num_ranks / step > 10:  # 5, 10, 20, 50, 100, 200, ...
        step = step * 5 // 2 if str(step).startswith("2") else step * 2
    return [1, *range(step, num_ranks + 1, step)]


def plot_cmc(cmc: np.ndarray | Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "CMC",
             max_rank: int | None = None) -> Path:
    """Save `cmc_figure(cmc, title, max_rank)` atomically (format from the suffix, PNG by default)."""
    figure = cmc_figure(cmc, title, max_rank)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path


# ------------------------------------------------------------------------------------------ ranked lists

@dataclass(frozen=True)
class RankedCell:
    """One picture cell: `image` (path, PIL image or HxWx3 uint8 array), the text under it, and whether it
    shows the query's identity (True), another one (False) or an unknown one (None)."""

    image: Any
    caption: str
    same: bool | None = None


@dataclass(frozen=True)
class RankedLayout:
    """Where the cells of a ranked-list picture are; the drawing and the tests read the same geometry."""

    cell_size: tuple[int, int] = (128, 64)  # (height, width) of every image
    border: int = 4
    gap: int = 2
    margin: int = 8
    separator: int = 10  # extra space between the query column and rank 1, holding a vertical line
    header_height: int = 44  # title + legend
    caption_height: int = 14

    @property
    def cell_width(self) -> int:
        return self.cell_size[1] + 2 * (self.border + self.gap)

    @property
    def cell_height(self) -> int:
        return self.cell_size[0] + 2 * (self.border + self.gap) + self.caption_height

    def frame_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), inclusive, of the coloured frame of cell (row, col); col 0 = query."""
        left = self.margin + col * self.cell_width + self.gap + (self.separator if col else 0)
        top = self.margin + self.header_height + row * self.cell_height + self.gap
        return left, top, left + self.cell_size[1] + 2 * self.border - 1, top + self.cell_size[0] + 2 * self.border - 1

    def grid_size(self, rows: int, columns: int) -> tuple[int, int]:
        return (2 * self.margin + columns * self.cell_width + self.separator,
                2 * self.margin + self.header_height + rows * self.cell_height)


def draw_ranked_lists(rows: Sequence[tuple[RankedCell, Sequence[RankedCell]]], path: str | os.PathLike,
                      title: str, value_name: str = "distance", layout: RankedLayout = RankedLayout(),
                      strict: bool = True) -> Path:
    """Save the ranked-list picture (PNG): one row per (query cell, result cells in rank order).

    `value_name` names the number in the captions for the legend ("distance", "score"). An unreadable image
    raises DataError if `strict`, else becomes a grey tile (the list is still worth seeing).
    """
    columns = 1 + max((len(results) for _, results in rows), default=0)
    title_font, text_font = _font(15), _font(11)
    unknown_shown = any(cell.same is None for _, results in rows for cell in results)
    legend = [(QUERY_COLOUR, "query"), (SAME_COLOUR, "same person"), (OTHER_COLOUR, "different person")]
    legend += [(UNKNOWN_COLOUR, "identity unknown")] if unknown_shown else []
    legend_note = f"under each result: #rank: {value_name}"
    width, height = layout.grid_size(max(1, len(rows)), columns)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_width = sum(_text_width(probe, label, text_font) + 30 for _, label in legend)
    legend_width += _text_width(probe, legend_note, text_font)
    width = max(width, 2 * layout.margin + max(legend_width, _text_width(probe, title, title_font)))
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    _draw_header(draw, layout, title, title_font, legend, legend_note, text_font)
    for row, (query, results) in enumerate(rows):
        for col, cell in enumerate([query, *results]):
            colour = QUERY_COLOUR if col == 0 else _frame_colour(cell.same)
            _draw_cell(picture, draw, layout, row, col, cell, colour, text_font, strict)
        if results:  # the line that sets the query apart from its results
            x = layout.margin + layout.cell_width + layout.separator // 2
            _, top, _, bottom = layout.frame_box(row, 0)
            draw.line([(x, top), (x, bottom + layout.caption_height)], fill=UNKNOWN_COLOUR, width=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path


def _draw_header(draw: ImageDraw.ImageDraw, layout: RankedLayout, title: str, title_font, legend, note: str,
                 font) -> None:
    draw.text((layout.margin, layout.margin), title, fill=TEXT_COLOUR, font=title_font)
    x, y = layout.margin, layout.margin + 24
    for colour, label in legend:
        draw.rectangle([x, y + 1, x + 16, y + 11], outline=colour, width=3)
        draw.text((x + 21, y), label, fill=TEXT_COLOUR, font=font)
        x += 30 + _text_width(draw, label, font)
    draw.text((x, y), note, fill=TEXT_COLOUR, font=font)


def _draw_cell(picture: Image.Image, draw: ImageDraw.ImageDraw, layout: RankedLayout, row: int, col: int,
               cell: RankedCell, colour: tuple[int, int, int], font, strict: bool) -> None:
    left, top, right, bottom = layout.frame_box(row, col)
    draw.rectangle([left, top, right, bottom], fill=colour)
    picture.paste(_cell_image(cell.image, layout.cell_size, strict), (left + layout.border, top + layout.border))
    caption = _fit(draw, cell.caption, font, right - left + 1 + 2 * layout.gap)
    draw.text((left, bottom + 2), caption, fill=TEXT_COLOUR, font=font)


def _frame_colour(same: bool | None) -> tuple[int, int, int]:
    return UNKNOWN_COLOUR if same is None else SAME_COLOUR if same else OTHER_COLOUR


def _cell_image(image: Any, size: tuple[int, int], strict: bool) -> Image.Image:
    height, width = size
    try:
        if isinstance(image, Image.Image):
            return image.convert("RGB").resize((width, height), Image.BILINEAR)
        if isinstance(image, np.ndarray):
            return Image.fromarray(np.ascontiguousarray(image)).convert("RGB").resize((width, height),
                                                                                      Image.BILINEAR)
        with Image.open(image) as opened:
            return opened.convert("RGB").resize((width, height), Image.BILINEAR)
    except (OSError, ValueError, TypeError) as exc:
        if strict:
            raise DataError(f"{image}: cannot read image for the ranked-list picture ({exc})") from exc
        return Image.new("RGB", (width, height), UNKNOWN_COLOUR)


@lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis if wider than `width` pixels (a caption must not run into the next cell)."""
    while text and _text_width(draw, text, font) > width:
        text = text[:-2] + "…" if len(text) > 1 else ""
    return text


def format_value(value: float) -> str:
    """A distance or score for a caption: three significant digits."""
    return f"{value:.3g}"


# ------------------------------------------------------------------------------- evaluation ranked lists

def ranked_list_grid(query_paths: Sequence[str], gallery_paths: Sequence[str], distmat, q_pids, g_pids, q_camids,
                     g_camids, path: str | os.PathLike, topk: int = 10, num_queries: int = 8,
                     query_indices: Sequence[int] | None = None, cell_size: tuple[int, int] = (128, 64),
                     border: int = 4, gap: int = 2, title: str | None = None) -> Path:
    """The ranked-list picture of an evaluation: one row per query, its top-k gallery images after junk removal
    (same pid and same camera, as in the market protocol) with rank and distance, framed by identity.

    Queries are `query_indices` if given, else `num_queries` evenly spaced ones. `cell_size` is the
    (height, width) every image is resized to; each cell adds `border` (frame) and `gap` pixels per side.
    """
    dist = _as_numpy(distmat, "distmat")
    num_query, num_gallery = len(query_paths), len(gallery_paths)
    if dist.shape != (num_query, num_gallery):
        raise MetricInputError(f"distmat: shape {dist.shape} does not match {num_query} query and {num_gallery} "
                               "gallery paths")
    q_pids, q_camids = (_validated_ids(a, n, num_query, "rows") for a, n in ((q_pids, "q_pids"),
                                                                               (q_camids, "q_camids")))
    g_pids, g_camids = (_validated_ids(a, n, num_gallery, "columns") for a, n in ((g_pids, "g_pids"),
                                                                                    (g_camids, "g_camids")))
    rows = []
    for q in _chosen_queries(num_query, num_queries, query_indices):
        ranked = np.argsort(dist[q], kind="stable")
        junk = (g_pids[ranked] == q_pids[q]) & (g_camids[ranked] == q_camids[q])
        results = [RankedCell(gallery_paths[g], f"#{rank}: {format_value(dist[q, g])}", bool(g_pids[g] == q_pids[q]))
                   for rank, g in enumerate(ranked[~junk][:topk], 1)]
        rows.append((RankedCell(query_paths[q], f"query, id {q_pids[q]}"), results))
    title = title or f"Top-{topk} gallery matches per query (same identity + same camera left out)"
    return draw_ranked_lists(rows, path, title, "distance", RankedLayout(cell_size, border, gap))


def _chosen_queries(num_query: int, num_queries: int, query_indices: Sequence[int] | None) -> list[int]:
    if query_indices is not None:
        chosen = [int(i) for i in query_indices]
        bad = [i for i in chosen if not 0 <= i < num_query]
        if bad:
            raise MetricInputError(f"query_indices: {bad} out of range for {num_query} queries")
        return chosen
    if num_queries < 1:
        raise MetricInputError(f"num_queries: must be at least 1, got {num_queries}")
    return sorted(set(np.linspace(0, num_query - 1, min(num_queries, num_query)).round().astype(int).tolist()))
