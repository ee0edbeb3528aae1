"""Pictures of evaluation results: CMC curves (matplotlib) and ranked-list grids (PIL)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from ..utils import atomic_path
from .rank import MetricInputError, _as_numpy, _validated_ids

CORRECT_COLOUR = (0, 200, 0)
WRONG_COLOUR = (220, 0, 0)
QUERY_COLOUR = (128, 128, 128)
BACKGROUND = (255, 255, 255)


def plot_cmc(cmc: np.ndarray | Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "CMC",
             max_rank: int | None = None) -> Path:
    """Plot one CMC curve (array of fractions, rank 1 first) or several ({name: cmc}) and save atomically."""
    # The object-oriented API leaves pyplot's global backend and figure list untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = dict(cmc) if isinstance(cmc, Mapping) else {"": cmc}
    if not curves:
        raise MetricInputError("cmc: no curve to plot")
    figure = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, curve in curves.items():
        values = 100 * np.asarray(curve, dtype=np.float64).ravel()[:max_rank]
        axes.plot(np.arange(1, values.size + 1), values, marker="." if values.size <= 20 else None,
                  label=name or None)
    axes.set(xlabel="rank", ylabel="matching rate (%)", title=title, ylim=(0, 100.5))
    axes.grid(alpha=0.3)
    if any(curves):
        axes.legend(loc="lower right")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path


def ranked_list_grid(query_paths: Sequence[str], gallery_paths: Sequence[str], distmat, q_pids, g_pids, q_camids,
                     g_camids, path: str | os.PathLike, topk: int = 10, num_queries: int = 8,
                     query_indices: Sequence[int] | None = None, cell_size: tuple[int, int] = (128, 64),
                     border: int = 4, gap: int = 2) -> Path:
    """One row per query: the query image, then its top-k gallery images after junk removal (same pid and same
    camera, as in the market protocol); green frame = same identity, red = different. Saved as PNG.

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
    rows = _chosen_queries(dist.shape[0], num_queries, query_indices)
    height, width = cell_size
    cell_h, cell_w = height + 2 * (border + gap), width + 2 * (border + gap)
    grid = Image.new("RGB", ((topk + 1) * cell_w, len(rows) * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for row, q in enumerate(rows):
        ranked = np.argsort(dist[q], kind="stable")
        junk = (g_pids[ranked] == q_pids[q]) & (g_camids[ranked] == q_camids[q])
        shown = ranked[~junk][:topk]
        cells = [(query_paths[q], QUERY_COLOUR)] + [
            (gallery_paths[g], CORRECT_COLOUR if g_pids[g] == q_pids[q] else WRONG_COLOUR) for g in shown]
        for col, (image_path, colour) in enumerate(cells):
            left, top = col * cell_w + gap, row * cell_h + gap
            draw.rectangle([left, top, left + width + 2 * border - 1, top + height + 2 * border - 1], fill=colour)
            grid.paste(_load_cell(image_path, width, height), (left + border, top + border))
    path = Path(path)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


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


def _load_cell(image_path: str, width: int, height: int) -> Image.Image:
    try:
        with Image.open(image_path) as image:
            return image.convert("RGB").resize((width, height), Image.BILINEAR)
    except (OSError, ValueError) as exc:
        raise DataError(f"{image_path}: cannot read image for the ranked-list grid ({exc})") from exc
