"""The dataset model: a list of records (path, person id, camera id) per split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class Record:
    """One image. pid 0 is a distractor (kept in galleries); junk (-1) never reaches a Record."""

    path: str
    pid: int
    camid: int
    frame: int | None = None  # frame/timestamp if known (video, search metadata)
    # Binary attribute labels (name, 0/1), e.g. (("bag_backpack", 1), ("upper_black", 0)): from a manifest's
    # attr_<name> columns (data/manifest.py). Pairs rather than a dict keep the record hashable and self-describing.
    attributes: tuple[tuple[str, int], ...] = ()


@dataclass
class ReIDDataset:
    train: list[Record] = field(default_factory=list)
    query: list[Record] = field(default_factory=list)
    gallery: list[Record] = field(default_factory=list)
    name: str = "dataset"
    # What loading found worth telling (junk dropped, files ignored, unmatched queries): the library
    # never prints, so loaders record it here and the CLI shows it with summary().
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rows = []
        for split in ("train", "query", "gallery"):
            recs = getattr(self, split)
            rows.append(
                f"{split:8s} {len(recs):7d} images {len({r.pid for r in recs}):6d} ids "
                f"{len({r.camid for r in recs}):3d} cameras"
            )
        rows += [f"note: {note}" for note in self.notes]
        return f"{self.name}\n" + "\n".join(rows)


SPLITS = ("train", "query", "gallery")


def split_arrays(records: list[Record]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, pids, camids) as arrays, the form evaluation functions take."""
    paths = [r.path for r in records]
    pids = np.asarray([r.pid for r in records], dtype=np.int64)
    camids = np.asarray([r.camid for r in records], dtype=np.int64)
    return paths, pids, camids


def relabel(records: list[Record]) -> tuple[list[Record], dict[int, int]]:
    """Map training pids to contiguous class indices 0..C-1 (sorted by pid, so deterministic)."""
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [replace(r, pid=mapping[r.pid]) for r in records], mapping


def attribute_names(records: Sequence[Record]) -> tuple[str, ...]:
    """The attribute names the records carry (those of the first record; loaders make every row agree)."""
    return tuple(name for name, _ in records[0].attributes) if records else ()


def attribute_matrix(records: Sequence[Record], names: Sequence[str], where: str) -> np.ndarray:
    """(N, len(names)) float32 0/1 labels of `names` in that order; a record without one of them is a DataError
    naming `where` (the dataset), the image and the attribute."""
    out = np.empty((len(records), len(names)), np.float32)
    for i, record in enumerate(records):
        labels = dict(record.attributes)
        missing = [n for n in names if n not in labels]
        if missing:
            raise DataError(f"{where}: image {record.path} has no attribute label for column(s) "
                            f"{', '.join('attr_' + n for n in missing)}")
        out[i] = [labels[n] for n in names]
    return out


def images_per_identity(records: list[Record]) -> Counter:
    return Counter(r.pid for r in records)


@dataclass(frozen=True)
class QueryGalleryReport:
    """Queries the Market protocol cannot score: no gallery image of the same pid from another camera."""

    num_queries: int
    num_unmatched: int
    unmatched_pids: tuple[int, ...]

    @property
    def message(self) -> str:
        shown = ", ".join(str(p) for p in self.unmatched_pids[:10])
        more = " ..." if len(self.unmatched_pids) > 10 else ""
        return (f"{self.num_unmatched} of {self.num_queries} queries have no gallery image of the same identity "
                f"from another camera (pids {shown}{more}); the market protocol cannot score them")


def check_query_gallery(dataset: ReIDDataset) -> QueryGalleryReport:
    """Count queries without a cross-camera gallery match (vectorised over queries)."""
    _, q_pids, q_cams = split_arrays(dataset.query)
    _, g_pids, g_cams = split_arrays(dataset.gallery)
    if len(q_pids) == 0:
        return QueryGalleryReport(0, 0, ())
    if len(g_pids) == 0:
        return QueryGalleryReport(len(q_pids), len(q_pids), tuple(int(p) for p in np.unique(q_pids)))
    # Encode (pid, camid) as one integer so set membership is a single np.isin.
    num_cams = int(max(q_cams.max(), g_cams.max())) + 1
    offset = int(min(q_pids.min(), g_pids.min()))
    pairs = np.unique((g_pids - offset) * num_cams + g_cams)
    gallery_pids, cams_per_pid = np.unique(pairs // num_cams + offset, return_counts=True)
    pos = np.clip(np.searchsorted(gallery_pids, q_pids), 0, len(gallery_pids) - 1)
    cams_with_pid = np.where(gallery_pids[pos] == q_pids, cams_per_pid[pos], 0)
    own_camera_in_gallery = np.isin((q_pids - offset) * num_cams + q_cams, pairs)
    unmatched = cams_with_pid - own_camera_in_gallery <= 0
    pids = tuple(int(p) for p in np.unique(q_pids[unmatched]))
    return QueryGalleryReport(len(q_pids), int(unmatched.sum()), pids)
