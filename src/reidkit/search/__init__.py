"""Gallery search: a persistent feature index keyed by item id, with metadata columns (path, pid, camid, track,
frame, time, source), crops addable from memory, one writer and many readers at a time, exact or faiss search
and optional re-ranking; past memory, an IVF-PQ index with on-disk lists and shard merging (`ivf`).

>>> from reidkit.search import GalleryIndex, collect_items
>>> index, report = GalleryIndex.build("idx", extractor, collect_items("gallery/"))
>>> index.add_images(extractor, crops, metadata=[{"camid": 0, "track": 3, "frame": 120}, ...])
Exports are lazy so that `reidkit.cli.search` (imported when the CLI parser is built) does not load torch/faiss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .evaluate import queries_with_match, search_rank_k
    from .index import METADATA_KEYS, BuildReport, GalleryIndex, Metadata, SearchResults
    from .ivf import IvfPqIndex, IvfPqParams, ShardedSearch, build_ivfpq, merge_ivfpq
    from .knn import APPROX_THRESHOLD, AnnParams, exact_search
    from .sources import collect_items

_LAZY = {
    "queries_with_match": "evaluate", "search_rank_k": "evaluate",
    "BuildReport": "index", "GalleryIndex": "index", "METADATA_KEYS": "index", "Metadata": "index",
    "SearchResults": "index",
    **dict.fromkeys(("IvfPqIndex", "IvfPqParams", "ShardedSearch", "build_ivfpq", "merge_ivfpq"), "ivf"),
    "APPROX_THRESHOLD": "knn", "AnnParams": "knn", "exact_search": "knn",
    "collect_items": "sources",
}
__all__ = [
    "APPROX_THRESHOLD", "METADATA_KEYS", "AnnParams", "BuildReport", "GalleryIndex", "IvfPqIndex", "IvfPqParams",
    "Metadata", "SearchResults", "ShardedSearch", "build_ivfpq", "collect_items", "merge_ivfpq",
    "exact_search", "queries_with_match", "search_rank_k",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
