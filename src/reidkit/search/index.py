"""A persistent gallery index: features + metadata on disk, keyed by item id, safe for one writer and many readers.

On-disk layout of an index folder (format "reidkit-index-2"):

    index.json            manifest: dim, count, version, extractor identity, file names, unreadable images
    features.v<N>.npy     float32 (count, dim), L2-normalised, row i <-> entry i of every metadata column
    meta.v<N>.json        columns id, path, pid, camid, track, frame, time, source (null = unknown)
    ann.v<N>.faiss        optional approximate index (IVF-Flat or HNSW, inner product)
    index.lock            the writers' lock file (fcntl.flock); readers never take it

Items are keyed by `id`: the absolute path for images indexed from files, the caller's id or a generated
"item-<n>" for crops given in memory. Writes are atomic and serialised: every mutation takes the writer lock,
re-reads the committed version (another process may have committed since this object was loaded), checks its
input against it, writes version N+1's data files (each via a temporary name and os.replace), then replaces
index.json -- the single commit point -- and only then deletes older versions' files. Readers never block: a
reader reads index.json and then the files it names; if a writer deleted them in between, it reads index.json
again (`load`). So a reader always sees one committed version, whole. Folders in the format "reidkit-index-1"
(path-keyed, columns path/pid/camid/frame) load as they are and are written in the current format by the next
mutation.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import ImageLike, decode_images
from ..data.records import Record
from ..errors import ModelError, ReIDError
from ..inference import FeatureExtractor, describe_extractor
from ..inference.features import require_finite_features
from ..utils import atomic_path, atomic_save_npy, atomic_write_json, progress
from . import knn

INDEX_FORMAT = "reidkit-index-2"
LEGACY_FORMATS = ("reidkit-index-1",)  # read and converted in memory; written as INDEX_FORMAT
MANIFEST = "index.json"
LOCK_FILE = "index.lock"
LOCK_TIMEOUT = 300.0  # seconds a writer waits for another writer's commit (embedding happens outside the lock)
READ_ATTEMPTS = 20  # a reader re-reads index.json when a writer deleted the files it named meanwhile
_VERSIONED_FILE = re.compile(r"^(features|meta|ann)\.v(\d+)\.(npy|json|faiss)$")
_ORPHAN_TEMPORARY = re.compile(r"^\.((features|meta|ann)\.v\d+\.(npy|json|faiss)|index\.json)\..+\.tmp$")
UNKNOWN = -1  # pid / camid / track / frame not known (pid -1 is never a real identity: junk never reaches an index)
INT_COLUMNS = ("pid", "camid", "track", "frame")
TEXT_COLUMNS = ("id", "path", "source")
METADATA_KEYS = ("id", "path", "pid", "camid", "track", "frame", "time", "source")


# ------------------------------------------------------------------------------------------------ metadata

def _int_value(value: Any, where: str) -> int:
    if value is None:
        return UNKNOWN
    if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)):
        raise ReIDError(f"{where}: expected an integer or None, got {value!r}")
    return int(value)


def _time_value(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ReIDError(f"{where}: expected seconds as a number or None, got {value!r}")
    return float(value)


def _text_value(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ReIDError(f"{where}: expected a string or None, got {value!r}")


@dataclass
class Metadata:
    """Per-row metadata as columns. Unknown values: None (id before commit, path, source), -1 (pid, camid,
    track, frame), NaN (time). camid is 0-based (the `c1` of a Market name is camid 0); time is in seconds."""

    ids: np.ndarray  # object: str (None only before an id is generated at commit)
    paths: np.ndarray  # object: absolute path or None (crops given in memory)
    pids: np.ndarray
    camids: np.ndarray
    tracks: np.ndarray
    frames: np.ndarray
    times: np.ndarray  # float64
    sources: np.ndarray  # object: str or None (e.g. the video or stream a crop came from)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_columns(cls, **columns: Sequence[Any]) -> Metadata:
        """Columns by metadata key (id, path, pid, ...); keys left out are unknown. Lengths must agree."""
        unknown = set(columns) - set(METADATA_KEYS)
        if unknown:
            raise ReIDError(f"metadata: unknown column(s) {sorted(unknown)} (expected {', '.join(METADATA_KEYS)})")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ReIDError(f"metadata: columns of different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0

        def text(key: str) -> np.ndarray:
            out = np.empty(n, dtype=object)
            out[:] = [_text_value(v, f"metadata {key}") for v in columns.get(key, [None] * n)]
            return out

        def ints(key: str) -> np.ndarray:
            if key not in columns:
                return np.full(n, UNKNOWN, np.int64)
            return np.array([_int_value(v, f"metadata {key}") for v in columns[key]], dtype=np.int64).reshape(n)

        times = np.array([_time_value(v, "metadata time") for v in columns.get("time", [None] * n)], np.float64)
        return cls(text("id"), text("path"), *(ints(k) for k in INT_COLUMNS), times.reshape(n), text("source"))

    @classmethod
    def empty(cls) -> Metadata:
        return cls.from_columns()

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> Metadata:
        """One dict per item with any of METADATA_KEYS; ReIDError naming the row for an unknown key."""
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ReIDError(f"metadata[{i}]: expected a dict, got {type(row).__name__}")
            unknown = set(row) - set(METADATA_KEYS)
            if unknown:
                raise ReIDError(f"metadata[{i}]: unknown key(s) {sorted(unknown)} "
                                f"(expected {', '.join(METADATA_KEYS)})")
        return cls.from_columns(**{key: [row.get(key) for row in rows] for key in METADATA_KEYS})

    @classmethod
    def from_items(cls, items: Sequence[Record | str | os.PathLike]) -> Metadata:
        """Records (metadata known) or bare paths (metadata unknown); the id is the absolute path."""
        recs = [it if isinstance(it, Record) else Record(os.fspath(it), UNKNOWN, UNKNOWN, None) for it in items]
        paths = [os.path.abspath(r.path) for r in recs]
        return cls.from_columns(id=paths, path=paths, pid=[r.pid for r in recs], camid=[r.camid for r in recs],
                                frame=[r.frame for r in recs])

    def columns(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def select(self, mask_or_index: np.ndarray | slice) -> Metadata:
        return Metadata(*(c[mask_or_index] for c in self.columns()))

    def concat(self, other: Metadata) -> Metadata:
        return Metadata(*(np.concatenate([a, b]) for a, b in zip(self.columns(), other.columns())))

    def row(self, i: int) -> dict[str, Any]:
        def known(x: np.ndarray) -> int | None:
            return None if x[i] == UNKNOWN else int(x[i])

        return {"id": self.ids[i], "path": self.paths[i], "pid": known(self.pids), "camid": known(self.camids),
                "track": known(self.tracks), "frame": known(self.frames),
                "time": None if math.isnan(self.times[i]) else float(self.times[i]), "source": self.sources[i]}

    def to_json(self) -> str:
        """Columnar JSON ({"id": [...], "pid": [...], ...}, null = unknown): one C-speed dump for 1e6 rows."""
        def ints(x: np.ndarray) -> list[int | None]:
            return [None if v == UNKNOWN else v for v in x.tolist()]

        return json.dumps({"id": self.ids.tolist(), "path": self.paths.tolist(),
                           **{k: ints(getattr(self, f"{k}s")) for k in INT_COLUMNS},
                           "time": [None if math.isnan(v) else v for v in self.times.tolist()],
                           "source": self.sources.tolist()})

    @classmethod
    def from_json(cls, text: str, where: str) -> Metadata:
        """Current columns, or the legacy ones (path, pid, camid, frame: the id is the path)."""
        try:
            data = json.loads(text)
            if "id" not in data:  # reidkit-index-1
                data = {"id": data["path"], **{k: data[k] for k in ("path", "pid", "camid", "frame")}}
            n = len(data["id"])

            def objects(key: str) -> np.ndarray:
                out = np.empty(n, dtype=object)
                out[:] = data.get(key, [None] * n)
                return out

            def ints(key: str) -> np.ndarray:  # C-speed: null -> NaN -> UNKNOWN (1e6 rows in ~0.1 s, not 2 s)
                x = np.array(data.get(key, [None] * n), dtype=np.float64).reshape(n)
                return np.where(np.isnan(x), UNKNOWN, x).astype(np.int64)

            times = np.array(data.get("time", [None] * n), dtype=np.float64).reshape(n)
            return cls(objects("id"), objects("path"), *(ints(k) for k in INT_COLUMNS), times, objects("source"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ReIDError(f"{where}: damaged metadata ({exc.__class__.__name__}: {exc})") from None


# ------------------------------------------------------------------------------------------------- results

@dataclass
class SearchResults:
    """Top-k per query: `indices` (Q, k) into the index rows (-1 = no result), `scores` cosine similarity.

    With re-ranking, rows are in re-ranked order and `rerank_distances` holds the re-ranked distances.
    `version` is the committed index version the search read (every row and its metadata come from it).
    """

    scores: np.ndarray
    indices: np.ndarray
    metadata: Metadata
    method: str
    rerank: str | None = None
    rerank_distances: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    version: int | None = None

    def hits(self, query: int) -> list[dict[str, Any]]:
        """Ranked list of one query as JSON-ready dicts (rank, score, row, then the metadata columns)."""
        out = []
        for rank, (row, score) in enumerate(zip(self.indices[query], self.scores[query]), 1):
            if row < 0:
                break
            hit = {"rank": rank, "score": round(float(score), 6), "row": int(row), **self.metadata.row(int(row))}
            if self.rerank_distances is not None:
                hit["rerank_distance"] = round(float(self.rerank_distances[query, rank - 1]), 6)
            out.append(hit)
        return out


# ---------------------------------------------------------------------------------------------- snapshots

@dataclass(frozen=True)
class Snapshot:
    """One committed version: features, metadata and manifest that belong together (never mutated)."""

    features: np.ndarray
    metadata: Metadata
    manifest: dict[str, Any]
    ann: Any = None


@contextmanager
def writer_lock(root: Path, timeout: float | None = None) -> Iterator[None]:
    """Exclusive fcntl.flock on root/index.lock; ReIDError naming the folder after `timeout` (LOCK_TIMEOUT) s."""
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ReIDError(f"index {root}: another process has been writing it for more than {timeout:.0f} s "
                                    f"(lock {root / LOCK_FILE}); try again later") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock, also when the process dies


def _manifest_token(root: Path) -> tuple[int, int, int] | None:
    """Changes whenever index.json is replaced (os.replace gives it a new inode): a cheap 'anything new?'."""
    try:
        st = os.stat(root / MANIFEST)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _read_snapshot(root: Path, with_features: bool = True) -> tuple[Snapshot, tuple[int, int, int] | None]:
    """The committed version, whole; retried when a writer replaced it between the manifest and its files."""
    for _ in range(READ_ATTEMPTS):
        token = _manifest_token(root)
        manifest = _read_manifest(root)
        try:
            return _snapshot_from_files(root, manifest, with_features), token
        except FileNotFoundError:
            if _read_manifest(root).get("version") == manifest.get("version"):
                raise ReIDError(f"index {root}: damaged, data files of version {manifest.get('version')} are "
                                "missing") from None
    raise ReIDError(f"index {root}: changed {READ_ATTEMPTS} times while being read; try again")


def _snapshot_from_files(root: Path, manifest: dict[str, Any], with_features: bool) -> Snapshot:
    """FileNotFoundError passes through (the caller retries); other damage is a ReIDError naming the folder."""
    files = manifest.get("files") or {}
    try:
        meta_path = root / files["meta"]
        metadata = Metadata.from_json(meta_path.read_text(), str(meta_path))
        features = np.load(root / files["features"], mmap_mode=None if with_features else "r")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReIDError(f"index {root}: damaged, cannot read its data files ({exc})") from None
    if features.shape != (len(metadata), manifest["dim"]):
        raise ReIDError(f"index {root}: damaged, features {features.shape} do not match {len(metadata)} "
                        f"metadata rows of dim {manifest['dim']}")
    ann = None
    if files.get("ann") and with_features:
        if not (root / files["ann"]).is_file():  # deleted by a newer commit: the caller re-reads
            raise FileNotFoundError(root / files["ann"])
        ann = knn.load_ann(root / files["ann"])
    return Snapshot(features, metadata, manifest, ann)


# --------------------------------------------------------------------------------------------------- index

@dataclass
class BuildReport:
    added: int
    skipped_existing: int
    unreadable: list[tuple[str, str]]
    ids: list[str] = field(default_factory=list)  # ids of the added rows, in input order

    def summary(self) -> str:
        lines = [f"indexed {self.added} image(s)"]
        if self.skipped_existing:
            lines.append(f"skipped {self.skipped_existing} image(s) already in the index")
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} unreadable image(s), not indexed:")
            lines += [f"  {path}: {reason}" for path, reason in self.unreadable]
        return "\n".join(lines)


class GalleryIndex:
    """Features and metadata of a gallery, persisted in a folder. `build` / `load`, then `add` (files),
    `add_images` (crops in memory, with metadata), `add_features`, `remove`, `search`; `refresh` follows
    other processes' commits. The object holds one committed `Snapshot`; searches read it whole."""

    def __init__(self, root: str | os.PathLike, features: np.ndarray, metadata: Metadata, manifest: dict[str, Any],
                 ann: Any = None):
        self.root = Path(root)
        self._snap = Snapshot(features, metadata, manifest, ann)
        self._token: tuple[int, int, int] | None = None
        self._scratch_ann: dict[tuple[int, str], tuple[knn.AnnParams, Any]] = {}

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def features(self) -> np.ndarray:
        return self._snap.features

    @property
    def metadata(self) -> Metadata:
        return self._snap.metadata

    @property
    def manifest(self) -> dict[str, Any]:
        return self._snap.manifest

    @property
    def _ann(self) -> Any:
        return self._snap.ann

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return len(self.metadata)

    @property
    def version(self) -> int:
        return int(self.manifest.get("version", 0))

    @property
    def extractor_info(self) -> dict[str, Any]:
        return self.manifest.get("extractor", {})

    @property
    def ann_params(self) -> knn.AnnParams | None:
        return _ann_params(self.manifest)

    def info(self) -> dict[str, Any]:
        """Manifest plus counts of known identities, cameras, tracks and path-less rows (`reidkit index info`)."""
        meta = self.metadata
        known = meta.pids[meta.pids != UNKNOWN]

        def distinct(x: np.ndarray) -> int:
            return int(len(np.unique(x[x != UNKNOWN])))

        return {"root": str(self.root), **self.manifest, "identities": distinct(meta.pids),
                "cameras": distinct(meta.camids), "tracks": distinct(meta.tracks), "rows_with_pid": int(len(known)),
                "rows_without_path": int(sum(p is None for p in meta.paths))}

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, root: str | os.PathLike, extractor: FeatureExtractor, items: Sequence[Record | str],
              approx: str = "auto", overwrite: bool = False, chunk_size: int = 256, show_progress: bool = False,
              sources: Sequence[str] = ()) -> tuple[GalleryIndex, BuildReport]:
        """Embed `items` (records or paths; [] for an empty index to fill with `add_images`) into a new index.

        approx: "auto" (faiss IVF above `knn.APPROX_THRESHOLD` images), "none", "ivf" or "hnsw".
        An existing index is replaced only with overwrite=True, and only once the new one is complete; if
        another process creates an index at `root` while this one embeds, this build fails at commit.
        """
        root = Path(root)
        if (root / MANIFEST).is_file() and not overwrite:
            raise ReIDError(f"index {root} already exists; use `index add` to extend it or overwrite=True "
                            "(--overwrite) to rebuild it")
        if root.exists() and not root.is_dir():
            raise ReIDError(f"index {root}: exists and is not a folder")
        if approx not in ("auto", "none", *knn.APPROX_KINDS):
            raise ReIDError(f"approx={approx!r}: expected auto, none, {', '.join(knn.APPROX_KINDS)}")
        rows = _unique(Metadata.from_items(items))
        features, kept, unreadable = embed_rows(extractor, list(rows.paths), rows, chunk_size, show_progress)
        now = _now()
        manifest = {"format": INDEX_FORMAT, "version": 0, "dim": int(extractor.dim), "count": 0,
                    "extractor": describe_extractor(extractor), "files": {}, "ann": None, "approx": approx,
                    "unreadable": _unreadable_rows(unreadable), "sources": list(sources), "next_item": 0,
                    "created": now, "updated": now}
        index = cls(root, np.zeros((0, int(extractor.dim)), np.float32), Metadata.empty(), manifest)
        with writer_lock(root):
            if (root / MANIFEST).is_file() and not overwrite:
                raise ReIDError(f"index {root}: another process created an index there while this build ran "
                                f"(version {_read_manifest(root).get('version')}); nothing was written -- use "
                                "`reidkit index add` to extend it, or --overwrite to replace it")
            index._commit(index._appended(index._snap, features, kept))
        return index, BuildReport(len(kept), len(items) - len(rows), unreadable, list(index.metadata.ids))

    @classmethod
    def load(cls, root: str | os.PathLike, with_features: bool = True) -> GalleryIndex:
        """Read the committed version of an index; ReIDError naming the folder if it is missing or damaged."""
        root = Path(root)
        snap, token = _read_snapshot(root, with_features)
        index = cls(root, snap.features, snap.metadata, snap.manifest, snap.ann)
        index._token = token
        return index

    def refresh(self) -> bool:
        """Switch to the latest committed version if another process committed one; True if the version changed.

        Costs one stat of index.json when nothing changed: a server calls it before each search."""
        token = _manifest_token(self.root)
        if token is not None and token == self._token:
            return False
        before = self.version
        self._snap, self._token = _read_snapshot(self.root, with_features=True)
        return self.version != before

    # -- updates ----------------------------------------------------------------------------------------------
    def check_extractor(self, extractor: FeatureExtractor, allow_other_model: bool = False) -> list[str]:
        """ReIDError on a dimension mismatch; a different model is an error unless allowed (then a note)."""
        return _check_extractor(self.root, self.manifest, extractor, allow_other_model)

    def add(self, extractor: FeatureExtractor, items: Sequence[Record | str], allow_other_model: bool = False,
            chunk_size: int = 256, show_progress: bool = False) -> BuildReport:
        """Embed and append image files (records or paths) whose path is not yet indexed, then commit."""
        self.check_extractor(extractor, allow_other_model)
        rows = _unique(Metadata.from_items(items))
        fresh = ~_member(rows.ids, self.metadata.ids)  # skip known paths before embedding; rechecked at commit
        todo = rows.select(fresh)
        features, kept, unreadable = embed_rows(extractor, list(todo.paths), todo, chunk_size, show_progress)
        report = self._append(features, kept, unreadable, set(rows.paths), extractor, allow_other_model)
        report.skipped_existing += int((~fresh).sum()) + len(items) - len(rows)
        return report

    def add_images(self, extractor: FeatureExtractor, images: Sequence[ImageLike],
                   metadata: Sequence[Mapping[str, Any]] | None = None, allow_other_model: bool = False,
                   chunk_size: int = 256, show_progress: bool = False) -> BuildReport:
        """Embed crops given in memory (HxWx3 RGB arrays, PIL images) or as paths, with one metadata dict each
        (keys: METADATA_KEYS; all optional), and commit. Items without an id get one: their path if they have
        one, else a generated "item-<n>". Items whose id is already indexed are skipped (report.skipped_existing).
        """
        rows = Metadata.from_rows(metadata if metadata is not None else [{}] * len(images))
        if len(rows) != len(images):
            raise ReIDError(f"add_images: {len(images)} images but {len(rows)} metadata entries")
        for i, image in enumerate(images):  # a file's path is its default path and id
            if isinstance(image, (str, os.PathLike)) and rows.paths[i] is None:
                rows.paths[i] = os.path.abspath(image)
        rows.ids[:] = [i if i is not None else p for i, p in zip(rows.ids, rows.paths)]
        self.check_extractor(extractor, allow_other_model)
        features, kept, unreadable = embed_rows(extractor, list(images), rows, chunk_size, show_progress)
        retried = {p for p in rows.paths if p is not None}
        return self._append(features, kept, unreadable, retried, extractor, allow_other_model)

    def add_features(self, features: np.ndarray, metadata: Sequence[Mapping[str, Any]] | None = None
                     ) -> BuildReport:
        """Append precomputed embeddings (from the index's model: the caller's promise) with metadata dicts.
        Rows are L2-normalised here, so cosine similarity stays a dot product."""
        features = require_finite_features(np.asarray(features, dtype=np.float32), "add_features")
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ModelError(f"dimension mismatch: index {self.root} holds {self.dim}-d features, got an array of "
                             f"shape {features.shape}")
        rows = Metadata.from_rows(metadata if metadata is not None else [{}] * len(features))
        if len(rows) != len(features):
            raise ReIDError(f"add_features: {len(features)} rows but {len(rows)} metadata entries")
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return self._append(features / np.maximum(norms, 1e-12), rows, [], set())

    def remove(self, keys: Sequence[str | os.PathLike]) -> int:
        """Drop rows by id or by image path (as given or absolute); returns how many were removed."""
        given = [os.fspath(k) for k in keys]
        targets = np.array(given + [os.path.abspath(k) for k in given], dtype=object)
        with writer_lock(self.root):
            snap = self._latest()
            drop = _member(snap.metadata.ids, targets) | _member(snap.metadata.paths, targets)
            if drop.any():
                manifest = dict(snap.manifest)
                kept = Snapshot(snap.features[~drop], snap.metadata.select(~drop), manifest)
                self._commit(dataclasses.replace(kept, ann=_fresh_ann(kept, rebuild=True, previous=snap)))
            else:
                self._snap = snap
        return int(drop.sum())

    def _latest(self) -> Snapshot:
        """Under the writer lock: the committed version on disk if it is not the one this object holds."""
        if (self.root / MANIFEST).is_file() and _read_manifest(self.root).get("version") != self.version:
            return _read_snapshot(self.root)[0]
        return self._snap

    def _append(self, features: np.ndarray, rows: Metadata, unreadable: list[tuple[str, str]], retried: set[str],
                extractor: FeatureExtractor | None = None, allow_other_model: bool = False) -> BuildReport:
        """Commit-time half of every add: lock, re-read, re-check, drop ids indexed meanwhile, write."""
        with writer_lock(self.root):
            snap = self._latest()
            if extractor is not None:  # the index may have been rebuilt with another model meanwhile
                _check_extractor(self.root, snap.manifest, extractor, allow_other_model)
            keep = _first_new(rows.ids, snap.metadata.ids)
            manifest = dict(snap.manifest)
            previous = [row for row in manifest.get("unreadable", []) if row["path"] not in retried]
            manifest["unreadable"] = previous + _unreadable_rows(unreadable)
            new = self._appended(dataclasses.replace(snap, manifest=manifest), features[keep], rows.select(keep))
            self._commit(new)
        added = new.metadata.ids[len(snap.metadata):]
        return BuildReport(len(added), int((~keep).sum()), unreadable, list(added))

    def _appended(self, snap: Snapshot, features: np.ndarray, rows: Metadata) -> Snapshot:
        """`snap` plus rows (ids generated for rows without one) and the approximate index kept in step."""
        manifest = dict(snap.manifest)
        rows = _assign_ids(rows, manifest, snap.metadata.ids)
        grown = Snapshot(np.concatenate([snap.features, features.astype(np.float32, copy=False)]),
                         snap.metadata.concat(rows), manifest)
        return dataclasses.replace(grown, ann=_fresh_ann(grown, rebuild=False, previous=snap, added=features))

    def _commit(self, snap: Snapshot) -> None:
        """Under the writer lock: write version N+1 beside N, replace index.json (the commit), delete older files."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = max(_current_version(self.root), _highest_file_version(self.root)) + 1
        files = {"features": f"features.v{version}.npy", "meta": f"meta.v{version}.json",
                 "ann": f"ann.v{version}.faiss" if snap.ann is not None else None}
        atomic_save_npy(np.ascontiguousarray(snap.features, dtype=np.float32), self.root / files["features"])
        with atomic_path(self.root / files["meta"]) as tmp:
            tmp.write_text(snap.metadata.to_json())
        if snap.ann is not None:
            knn.save_ann(snap.ann, self.root / files["ann"])
        manifest = {**snap.manifest, "format": INDEX_FORMAT, "version": version, "count": len(snap.metadata),
                    "files": files, "updated": _now()}
        atomic_write_json(manifest, self.root / MANIFEST)  # the commit point
        self._snap, self._token = dataclasses.replace(snap, manifest=manifest), _manifest_token(self.root)
        _delete_unreferenced(self.root, files)

    # -- search ---------------------------------------------------------------------------------------------
    def search(self, query_features: np.ndarray, k: int = 10, method: str = "auto", rerank: Any = None,
               rerank_k: int = 100, **rerank_params: Any) -> SearchResults:
        """Top-k rows per query by cosine similarity, all from one committed version (`results.version`).

        method: "auto" (the stored faiss index when the gallery has >= knn.APPROX_THRESHOLD rows, else exact),
        "exact", "ivf" or "hnsw" (an approximate index of that kind is built in memory if not stored, and kept
        for this version only). rerank: a re-ranker name (see reidkit.rerank) re-ordering the union of the
        queries' top-`rerank_k` candidates.
        """
        snap = self._snap  # one snapshot for the whole search, even if refresh() swaps it meanwhile
        dim = int(snap.manifest["dim"])
        queries = np.ascontiguousarray(query_features, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ModelError(f"dimension mismatch: index {self.root} holds {dim}-d features but the query "
                             f"features have shape {queries.shape}")
        require_finite_features(queries, f"query features for index {self.root}")
        if k < 1:
            raise ReIDError(f"k={k}: must be >= 1")
        if len(snap.metadata) == 0:
            raise ReIDError(f"index {self.root} is empty")
        first_k = max(k, rerank_k) if rerank else k
        params = _ann_params(snap.manifest)
        chosen = knn.choose_method(method, len(snap.metadata), params.kind if params else None)
        scores, indices = self._first_stage(snap, queries, first_k, chosen)
        version = snap.manifest.get("version")
        results = SearchResults(scores, indices, snap.metadata, chosen, version=version)
        if rerank:
            from ..rerank.candidates import rerank_candidates

            return rerank_candidates(results, queries, snap.features, k, rerank, **rerank_params)
        return dataclasses.replace(results, scores=scores[:, :k], indices=indices[:, :k])

    def _first_stage(self, snap: Snapshot, queries: np.ndarray, k: int, method: str) -> tuple[np.ndarray, np.ndarray]:
        if method == "exact":
            return knn.exact_search(queries, snap.features, k)
        stored = _ann_params(snap.manifest)
        if snap.ann is not None and stored is not None and stored.kind == method:
            return knn.ann_search(snap.ann, stored, queries, k)
        # a kind the index does not store: build it in memory, valid for this version only
        key = (int(snap.manifest.get("version", 0)), method)
        if key not in self._scratch_ann:
            params = knn.default_params(method, len(snap.metadata))
            self._scratch_ann = {key: (params, knn.build_ann(snap.features, params))}
        params, ann = self._scratch_ann[key]
        return knn.ann_search(ann, params, queries, k)


# ------------------------------------------------------------------------------------------------- helpers

def embed_rows(extractor: FeatureExtractor, images: Sequence[ImageLike], rows: Metadata, chunk_size: int = 256,
               show_progress: bool = False) -> tuple[np.ndarray, Metadata, list[tuple[str, str]]]:
    """Embed `images` (row i of `rows` describes images[i]) in chunks of bounded memory through the one
    decoder at the extractor's input size; unreadable files are skipped and returned as (path, reason)."""
    chunks, kept, unreadable = [], [Metadata.empty()], []
    starts = range(0, len(images), chunk_size)
    for start in progress(starts, desc="indexing", enabled=show_progress, total=len(starts)):
        pixels, ok, bad = decode_images(images[start:start + chunk_size], tuple(extractor.input_size),
                                        extractor.resize)
        unreadable += bad
        if len(pixels):
            chunks.append(require_finite_features(np.asarray(extractor.embed_uint8(pixels), dtype=np.float32),
                                                  f"model {extractor.name}"))
            kept.append(rows.select(slice(start, start + chunk_size)).select(ok))
    merged = kept[0]
    for part in kept[1:]:
        merged = merged.concat(part)
    features = np.concatenate(chunks) if chunks else np.zeros((0, int(extractor.dim)), np.float32)
    return features, merged, unreadable


def _check_extractor(root: Path, manifest: dict[str, Any], extractor: FeatureExtractor,
                     allow_other_model: bool) -> list[str]:
    dim, recorded = int(manifest["dim"]), manifest.get("extractor", {})
    if int(extractor.dim) != dim:
        raise ModelError(f"dimension mismatch: index {root} holds {dim}-d features but model "
                         f"{extractor.name} gives {extractor.dim}-d features; use the index's model "
                         f"({recorded.get('path', '?')})")
    described = describe_extractor(extractor)
    want, have = recorded.get("sha256"), described.get("sha256")
    notes = []
    if want and have and want != have:
        message = (f"model {extractor.name} differs from the one that built index {root} "
                   f"({recorded.get('path', '?')}); its features may not be comparable")
        if not allow_other_model:
            raise ModelError(message + " (pass --force / allow_other_model=True if it is an export of it)")
        notes.append(message)
    if "flip" in recorded and recorded["flip"] != described["flip"]:
        notes.append(f"index {root} was built with flip={recorded['flip']}, this model runs with "
                     f"flip={described['flip']}; scores shift slightly")
    return notes


def _ann_params(manifest: dict[str, Any]) -> knn.AnnParams | None:
    params = manifest.get("ann")
    return knn.AnnParams.from_dict(params) if params else None


def _wanted_ann_kind(manifest: dict[str, Any], count: int) -> str | None:
    approx = manifest.get("approx", "auto")
    if approx == "none" or count == 0:
        return None
    if approx != "auto":
        return approx
    return "ivf" if count >= knn.APPROX_THRESHOLD else None


def _fresh_ann(snap: Snapshot, rebuild: bool, previous: Snapshot, added: np.ndarray | None = None) -> Any:
    """The faiss index for `snap` (its manifest's "ann" entry is updated): appended to a copy of the previous
    one on add (the previous snapshot may still be searched), rebuilt on build/remove, on a change of kind, or
    once an IVF index has outgrown its cell count (a gallery grown 4x wants 2x the cells)."""
    count, current = len(snap.metadata), _ann_params(previous.manifest)
    kind = _wanted_ann_kind(snap.manifest, count)
    if kind is None:
        snap.manifest["ann"] = None
        return None
    fresh = knn.default_params(kind, count)
    outgrown = kind == "ivf" and current is not None and fresh.nlist >= 2 * (current.nlist or 1)
    if rebuild or outgrown or previous.ann is None or current is None or current.kind != kind:
        snap.manifest["ann"] = fresh.to_dict()
        return knn.build_ann(snap.features, fresh)
    ann = knn.clone_ann(previous.ann)
    if added is not None and len(added):
        ann.add(np.ascontiguousarray(added, dtype=np.float32))
    return ann


def _member(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """values[i] in keys, for object arrays of str/None (a set lookup: np.isin compares objects pairwise)."""
    wanted = set(keys.tolist())
    return np.fromiter((v in wanted for v in values.tolist()), dtype=bool, count=len(values))


def _first_new(ids: np.ndarray, existing: np.ndarray) -> np.ndarray:
    """Mask of rows to add: ids not yet indexed and not repeated earlier in `ids` (None = not yet assigned)."""
    keep = np.ones(len(ids), dtype=bool)
    seen = set(existing.tolist())
    for i, key in enumerate(ids.tolist()):
        if key is None:
            continue
        keep[i] = key not in seen
        seen.add(key)
    return keep


def _assign_ids(rows: Metadata, manifest: dict[str, Any], existing: np.ndarray) -> Metadata:
    """Generated "item-<n>" ids for rows without one, from the manifest's counter (under the writer lock)."""
    missing = [i for i, key in enumerate(rows.ids.tolist()) if key is None]
    if not missing:
        return rows
    taken = set(existing.tolist()) | set(rows.ids.tolist())
    counter = int(manifest.get("next_item", 0))
    rows = rows.select(slice(None))
    rows.ids = rows.ids.copy()
    for i in missing:
        while f"item-{counter}" in taken:
            counter += 1
        rows.ids[i] = f"item-{counter}"
        counter += 1
    manifest["next_item"] = counter
    return rows


def _unique(metadata: Metadata) -> Metadata:
    """First occurrence of each id, in input order."""
    _, first = np.unique(metadata.ids.astype(str), return_index=True)
    return metadata.select(np.sort(first))


def _unreadable_rows(unreadable: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"path": path, "reason": reason} for path, reason in unreadable]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise ReIDError(f"index {root}: no {MANIFEST} (not an index folder; build one with `reidkit index build`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReIDError(f"index {root}: unreadable {MANIFEST} ({exc})") from None
    found = manifest.get("format")
    if found != INDEX_FORMAT and found not in LEGACY_FORMATS:
        raise ReIDError(f"index {root}: {MANIFEST} has format {found!r}; this reidkit reads "
                        f"{', '.join((INDEX_FORMAT, *LEGACY_FORMATS))} -- rebuild it with `reidkit index build "
                        f"--index {root} --data <images> --model <model> --overwrite`")
    return manifest


def _current_version(root: Path) -> int:
    try:
        return int(_read_manifest(root)["version"])
    except ReIDError:
        return 0


def _highest_file_version(root: Path) -> int:
    """Versions left by interrupted writes must not be reused (their files may be half-written)."""
    if not root.is_dir():
        return 0
    found = [int(m.group(2)) for m in map(_VERSIONED_FILE.match, os.listdir(root)) if m]
    return max(found, default=0)


def _delete_unreferenced(root: Path, files: dict[str, str | None]) -> None:
    """Older versions, and temporary files of writers killed mid-write: called under the writer lock after this
    writer's own temporaries were renamed, so any `.<index file>.*.tmp` left belongs to a dead writer."""
    keep = {name for name in files.values() if name}
    for name in os.listdir(root):
        if (_VERSIONED_FILE.match(name) and name not in keep) or _ORPHAN_TEMPORARY.match(name):
            (root / name).unlink(missing_ok=True)
