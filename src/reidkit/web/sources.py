"""What the web app reads: the gallery index (followed as other processes add to it), a `reidkit track` run folder,
a `reidkit cluster` folder, and uploaded crops. No path taken from a request reaches the filesystem: files are
found by an index item id, a clusters.csv row number, or a path inside the run folder that is resolved and checked
to stay inside it (`RunFolder.file`)."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import IMAGE_EXTENSIONS, read_image
from ..errors import DataError, ReIDError
from ..search import knn
from ..search.index import GalleryIndex
from ..video.outputs import IDENTITIES_FORMAT

# Formats a query crop may come in (what PIL identifies from the bytes, not the file name).
UPLOAD_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP"})
DEFAULT_MAX_PIXELS = 25_000_000  # a person crop never needs more; PIL's own bomb limit is ~89 M


class UploadError(ReIDError):
    """A refused upload; `status` is the HTTP status the API answers with (400, 413, 415)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------------ uploads

def decode_upload(data: bytes, field: str, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes of an uploaded crop -> RGB PIL image, decoded by THE decoder (data.images.read_image, which refuses
    decompression bombs). Refusals name the form field: 413 above `max_bytes`, 415 for what is not an image of
    UPLOAD_FORMATS, 400 for an image declaring more than `max_pixels` or failing to decode."""
    if len(data) > max_bytes:
        raise UploadError(f"{field}: upload of {len(data)} bytes is above the limit of {max_bytes} bytes "
                          "(--max-upload-mb)", 413)
    if not data:
        raise UploadError(f"{field}: empty upload", 400)
    try:  # the header only: format and declared size, before any pixel is decoded
        with Image.open(io.BytesIO(data)) as probe:
            kind, (width, height) = probe.format, probe.size
    except UnidentifiedImageError:
        raise UploadError(f"{field}: not an image (expected {'/'.join(sorted(UPLOAD_FORMATS))})", 415) from None
    except Image.DecompressionBombError as exc:  # PIL refuses > 2x its limit at open time
        raise UploadError(f"{field}: refused as a possible decompression bomb ({exc})", 400) from None
    except (OSError, ValueError) as exc:
        raise UploadError(f"{field}: unreadable image ({exc})", 400) from None
    if kind not in UPLOAD_FORMATS:
        raise UploadError(f"{field}: {kind} images are not accepted (expected "
                          f"{'/'.join(sorted(UPLOAD_FORMATS))})", 415)
    if width * height > max_pixels:
        raise UploadError(f"{field}: declares {width}x{height} = {width * height} pixels, above the limit of "
                          f"{max_pixels}: refused as a possible decompression bomb", 400)
    # read_image takes a path (its messages name the file): a private temporary file, renamed in the message
    with tempfile.NamedTemporaryFile(suffix=".upload") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return read_image(tmp.name)
        except DataError as exc:
            raise UploadError(str(exc).replace(tmp.name, field), 400) from None


# ------------------------------------------------------------------------------------------------ index

class LiveIndex:
    """A GalleryIndex followed across other processes' commits: `refresh` (one stat when nothing changed) before
    each read. Searches read one committed snapshot whole (GalleryIndex.search), so a writer adding meanwhile never
    shows a half-written version; the lock only keeps two requests from re-reading the same new version twice."""

    def __init__(self, root: Path):
        self.index = GalleryIndex.load(root)
        self._lock = threading.Lock()
        self._rows: tuple[int, dict[str, int]] | None = None  # (version, item id -> row) for thumbnails

    def current(self) -> GalleryIndex:
        with self._lock:
            self.index.refresh()
        return self.index

    def snapshot(self) -> tuple[np.ndarray, Any, dict[str, Any]]:
        """(features, metadata, manifest) of one committed version, read together."""
        with self._lock:
            self.index.refresh()
            index = self.index
            return index.features, index.metadata, index.manifest

    def row_of(self, item_id: str) -> tuple[int, np.ndarray, Any] | None:
        """(row, features, metadata) of an item id in the current version; None when it is not indexed."""
        features, metadata, manifest = self.snapshot()
        version = int(manifest.get("version", 0))
        cached = self._rows
        if cached is None or cached[0] != version or len(cached[1]) != len(metadata):
            cached = (version, {key: i for i, key in enumerate(metadata.ids.tolist())})
            self._rows = cached
        row = cached[1].get(item_id)
        if row is None or row >= len(metadata) or metadata.ids[row] != item_id:
            return None
        return row, features, metadata


def image_file(path: str | None) -> Path | None:
    """A stored image path (from the index or clusters.csv, never from a request) if it is an existing image file."""
    if not path:
        return None
    file = Path(path)
    return file if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file() else None


# ------------------------------------------------------------------------------------------------ track run

class RunFolder:
    """A `reidkit track` output folder (layout: video/outputs.py): identities.json (global id -> camera ->
    tracklets with time spans and the best crop, a path relative to the folder), crops/, timeline.png,
    contact_sheet.png. identities.json is read again whenever it changes (an online run rewrites it)."""

    FORMAT = IDENTITIES_FORMAT
    SERVED = IMAGE_EXTENSIONS | {".png"}

    def __init__(self, root: Path):
        self.root = root.resolve()
        if not (self.root / "identities.json").is_file():
            raise ReIDError(f"--tracks {root}: no identities.json (not a `reidkit track` output folder)")
        self._cache: tuple[float, dict[str, Any]] | None = None
        self.document()  # bad folders are refused at start, not at the first request

    def document(self) -> dict[str, Any]:
        path = self.root / "identities.json"
        try:
            stamp = path.stat().st_mtime_ns
            if self._cache is None or self._cache[0] != stamp:
                document = json.loads(path.read_text())
                if document.get("format") != self.FORMAT:
                    raise ReIDError(f"{path}: format {document.get('format')!r}, expected {self.FORMAT}")
                self._cache = (stamp, document)
        except (OSError, json.JSONDecodeError) as exc:
            raise ReIDError(f"{path}: unreadable ({exc})") from None
        return self._cache[1]

    def file(self, relative: str) -> Path | None:
        """The file `relative` names inside the run folder, or None: resolved (symbolic links and `..` followed)
        and required to stay inside the folder, to be an image and to exist."""
        if not relative or "\x00" in relative:
            return None
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root) or target.suffix.lower() not in self.SERVED:
            return None
        return target if target.is_file() else None

    def extras(self) -> dict[str, bool]:
        return {name: self.file(f"{name}.png") is not None for name in ("timeline", "contact_sheet")}


def best_tracklet(cameras: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, Any]] | None:
    """(camera, tracklet) with the best crop: highest best_score, then most boxes."""
    candidates = [(cam, t) for cam, tracks in cameras.items() for t in tracks if t.get("crop")]
    if not candidates:
        return None
    return max(candidates, key=lambda ct: (ct[1].get("best_score") or 0.0, ct[1].get("boxes") or 0))


# ------------------------------------------------------------------------------------------------ clusters

@dataclass
class Clusters:
    """DIR/clusters.csv of `reidkit cluster` (columns path, cluster; -1 = unassigned). Paths are as `cluster` was
    given them: a relative one is looked up from the current folder, then from DIR."""

    root: Path
    paths: list[str]
    labels: np.ndarray

    @classmethod
    def load(cls, folder: Path) -> Clusters:
        path = folder / "clusters.csv"
        if not path.is_file():
            raise ReIDError(f"--clusters {folder}: no clusters.csv (not a `reidkit cluster` output folder)")
        try:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            paths = [r["path"] for r in rows]
            labels = np.array([int(r["cluster"]) for r in rows], dtype=np.int64)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ReIDError(f"{path}: unreadable (expected columns path,cluster; {exc.__class__.__name__}: "
                            f"{exc})") from None
        return cls(folder, paths, labels)

    def summary(self) -> list[dict[str, Any]]:
        """Clusters by size (largest first), unassigned (-1) last, with up to 6 sample rows each."""
        by_label = np.argsort(self.labels, kind="stable")  # rows grouped by cluster, in file order within each
        ids, starts, counts = np.unique(self.labels[by_label], return_index=True, return_counts=True)
        order = sorted(range(len(ids)), key=lambda i: (ids[i] < 0, -counts[i], ids[i]))
        return [{"cluster": int(ids[i]), "size": int(counts[i]),
                 "samples": by_label[starts[i]:starts[i] + min(6, counts[i])].tolist()} for i in order]

    def file(self, row: int) -> Path | None:
        """The image of clusters.csv row `row` (a path from the file, never from a request), if it exists."""
        if not 0 <= row < len(self.paths):
            return None
        path = self.paths[row]
        return image_file(path) or (None if os.path.isabs(path) else image_file(os.fspath(self.root / path)))

    def members(self, cluster: int) -> list[int]:
        return np.flatnonzero(self.labels == cluster).tolist()


# ------------------------------------------------------------------------------------------------ failures

@dataclass
class Failures:
    """Leave-one-out ranking of an index's labelled items: each item with a known identity queries the rest,
    Market-style (the item itself and its identity's items from the same camera are not counted; distractors,
    pid 0, stay in the gallery but never query). `rank1` is the
    fraction of queries whose first counted hit is the same identity; `rows` are the failing queries (query row,
    counted hit rows in order), worst first: the first correct match furthest down, or absent from the top."""

    queries: int
    rank1: float | None  # None without labelled items
    rows: list[tuple[int, list[int], int | None]]  # (query row, hit rows, rank of the first correct hit or None)


def ranking_failures(features: np.ndarray, meta: Any, max_queries: int = 2000, top: int = 10) -> Failures:
    """One batched exact search for up to `max_queries` labelled items (the first ones in index order), over the
    features and metadata of one committed index version."""
    from ..search.index import UNKNOWN

    queries = np.flatnonzero((meta.pids != UNKNOWN) & (meta.pids != 0))[:max_queries]  # pid 0: distractors
    if len(queries) == 0:
        return Failures(0, None, [])
    # enough candidates that `top` remain after dropping the query's own camera's matches and itself
    _, group = np.unique(np.stack([meta.pids, meta.camids]), axis=1, return_counts=True)
    k = min(len(meta), top + int(group.max()) + 1)
    hits = knn.exact_search(features[queries], features, k)[1]
    q_pid, q_cam = meta.pids[queries][:, None], meta.camids[queries][:, None]
    same_pid = meta.pids[hits] == q_pid
    dropped = (hits == queries[:, None]) | (same_pid & (meta.camids[hits] == q_cam) & (q_cam != UNKNOWN)) | (hits < 0)
    counted = ~dropped & (np.cumsum(~dropped, axis=1) <= top)
    first = np.argmax(counted, axis=1)
    has_hit = counted.any(axis=1)
    correct_first = has_hit & same_pid[np.arange(len(queries)), first]
    rows = []
    for r in np.flatnonzero(has_hit & ~correct_first):
        kept = hits[r][counted[r]]
        good = np.flatnonzero(meta.pids[kept] == meta.pids[queries[r]])
        rows.append((int(queries[r]), kept.tolist(), int(good[0]) + 1 if len(good) else None))
    rows.sort(key=lambda row: (row[2] is not None, -(row[2] or 0)))
    return Failures(len(queries), float(correct_first.mean()), rows)
