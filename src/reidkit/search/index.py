"""A persistent gallery index: features + metadata on disk, incremental add/remove, exact or faiss search.

On-disk layout of an index folder (format "reidkit-index-1"):

    index.json            manifest: dim, count, version, extractor identity, file names, unreadable images
    features.v<N>.npy     float32 (count, dim), L2-normalised, row i <-> line i of the metadata
    meta.v<N>.json        columns {"path": [...], "pid": [...], "camid": [...], "frame": [...]} (null = unknown)
    ann.v<N>.faiss        optional approximate index (IVF-Flat or HNSW, inner product)

Writes are atomic: the versioned data files of version N+1 are written first (each via a temporary name and
os.replace), then index.json is replaced -- the single commit point -- and only then are the files of older
versions deleted. An interrupted build or add therefore leaves the previous index readable and unchanged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..data.records import Record
from ..errors import ModelError, ReIDError
from ..inference.backends import FeatureExtractor, decode_images, describe_extractor
from ..utils import atomic_path, atomic_save_npy, atomic_write_json, progress
from . import knn

INDEX_FORMAT = "reidkit-index-1"
MANIFEST = "index.json"
_VERSIONED_FILE = re.compile(r"^(features|meta|ann)\.v(\d+)\.(npy|json|faiss)$")
UNKNOWN = -1  # pid / camid / frame not known (pid -1 is never a real identity: junk never reaches an index)


# ------------------------------------------------------------------------------------------------ metadata

@dataclass
class Metadata:
    """Per-row metadata as columns; -1 marks an unknown pid, camid or frame."""

    paths: np.ndarray  # object array of str (absolute paths)
    pids: np.ndarray
    camids: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def empty(cls) -> Metadata:
        return cls(np.array([], dtype=object), *(np.zeros(0, np.int64) for _ in range(3)))

    @classmethod
    def from_items(cls, items: Sequence[Record | str | os.PathLike]) -> Metadata:
        """Records (metadata known) or bare paths (metadata unknown)."""
        def known(value: int | None) -> int:
            return UNKNOWN if value is None else int(value)

        recs = [it if isinstance(it, Record) else Record(os.fspath(it), UNKNOWN, UNKNOWN, None) for it in items]
        return cls(np.array([os.path.abspath(r.path) for r in recs], dtype=object),
                   np.array([known(r.pid) for r in recs], dtype=np.int64),
                   np.array([known(r.camid) for r in recs], dtype=np.int64),
                   np.array([known(r.frame) for r in recs], dtype=np.int64))

    def select(self, mask_or_index: np.ndarray) -> Metadata:
        return Metadata(self.paths[mask_or_index], self.pids[mask_or_index], self.camids[mask_or_index],
                        self.frames[mask_or_index])

    def concat(self, other: Metadata) -> Metadata:
        return Metadata(*(np.concatenate([a, b]) for a, b in zip(self.columns(), other.columns())))

    def columns(self) -> tuple[np.ndarray, ...]:
        return self.paths, self.pids, self.camids, self.frames

    def row(self, i: int) -> dict[str, Any]:
        def value(x: np.ndarray) -> int | None:
            return None if x[i] == UNKNOWN else int(x[i])

        return {"path": str(self.paths[i]), "pid": value(self.pids), "camid": value(self.camids),
                "frame": value(self.frames)}

    def to_json(self) -> str:
        """Columnar JSON ({"path": [...], "pid": [...], ...}, null = unknown): one C-speed dump for 1e6 rows."""
        def column(x: np.ndarray) -> list[int | None]:
            return [None if v == UNKNOWN else v for v in x.tolist()]

        return json.dumps({"path": self.paths.tolist(), "pid": column(self.pids), "camid": column(self.camids),
                           "frame": column(self.frames)})

    @classmethod
    def from_json(cls, text: str, where: str) -> Metadata:
        try:
            data = json.loads(text)
            paths = np.array(data["path"], dtype=object)

            def column(key: str) -> np.ndarray:
                return np.array([UNKNOWN if v is None else v for v in data[key]], dtype=np.int64)

            columns = (paths, column("pid"), column("camid"), column("frame"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ReIDError(f"{where}: damaged metadata ({exc.__class__.__name__}: {exc})") from None
        if len({len(c) for c in columns}) != 1:
            raise ReIDError(f"{where}: damaged metadata (columns of different lengths)")
        return cls(*columns)


# ------------------------------------------------------------------------------------------------- results

@dataclass
class SearchResults:
    """Top-k per query: `indices` (Q, k) into the index rows (-1 = no result), `scores` cosine similarity.

    With re-ranking, rows are in re-ranked order and `rerank_distances` holds the re-ranked distances.
    """

    scores: np.ndarray
    indices: np.ndarray
    metadata: Metadata
    method: str
    rerank: str | None = None
    rerank_distances: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def hits(self, query: int) -> list[dict[str, Any]]:
        """Ranked list of one query as JSON-ready dicts (rank, score, row, path, pid, camid, frame)."""
        out = []
        for rank, (row, score) in enumerate(zip(self.indices[query], self.scores[query]), 1):
            if row < 0:
                break
            hit = {"rank": rank, "score": round(float(score), 6), "row": int(row), **self.metadata.row(int(row))}
            if self.rerank_distances is not None:
                hit["rerank_distance"] = round(float(self.rerank_distances[query, rank - 1]), 6)
            out.append(hit)
        return out


# --------------------------------------------------------------------------------------------------- index

@dataclass
class BuildReport:
    added: int
    skipped_existing: int
    unreadable: list[tuple[str, str]]

    def summary(self) -> str:
        lines = [f"indexed {self.added} image(s)"]
        if self.skipped_existing:
            lines.append(f"skipped {self.skipped_existing} image(s) already in the index")
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} unreadable image(s), not indexed:")
            lines += [f"  {path}: {reason}" for path, reason in self.unreadable]
        return "\n".join(lines)


class GalleryIndex:
    """Features and metadata of a gallery, persisted in a folder. Build with `GalleryIndex.build`."""

    def __init__(self, root: str | os.PathLike, features: np.ndarray, metadata: Metadata, manifest: dict[str, Any],
                 ann: Any = None):
        self.root = Path(root)
        self.features = features
        self.metadata = metadata
        self.manifest = manifest
        self._ann = ann
        self._scratch_ann: tuple[knn.AnnParams, Any] | None = None

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return len(self.metadata)

    @property
    def extractor_info(self) -> dict[str, Any]:
        return self.manifest.get("extractor", {})

    @property
    def ann_params(self) -> knn.AnnParams | None:
        params = self.manifest.get("ann")
        return knn.AnnParams.from_dict(params) if params else None

    def info(self) -> dict[str, Any]:
        """Manifest plus counts of known identities and cameras (for `reidkit index info`)."""
        known = self.metadata.pids[self.metadata.pids != UNKNOWN]
        cams = self.metadata.camids[self.metadata.camids != UNKNOWN]
        return {"root": str(self.root), **self.manifest, "identities": int(len(np.unique(known))),
                "cameras": int(len(np.unique(cams))), "rows_with_pid": int(len(known))}

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, root: str | os.PathLike, extractor: FeatureExtractor, items: Sequence[Record | str],
              approx: str = "auto", overwrite: bool = False, chunk_size: int = 256, show_progress: bool = False,
              sources: Sequence[str] = ()) -> tuple[GalleryIndex, BuildReport]:
        """Embed `items` (records or paths) and write a new index at `root`.

        approx: "auto" (faiss IVF above `knn.APPROX_THRESHOLD` images), "none", "ivf" or "hnsw".
        An existing index is replaced only with overwrite=True, and only once the new one is complete.
        """
        root = Path(root)
        if (root / MANIFEST).is_file() and not overwrite:
            raise ReIDError(f"index {root} already exists; use `index add` to extend it or overwrite=True "
                            "(--overwrite) to rebuild it")
        if root.exists() and not root.is_dir():
            raise ReIDError(f"index {root}: exists and is not a folder")
        if approx not in ("auto", "none", *knn.APPROX_KINDS):
            raise ReIDError(f"approx={approx!r}: expected auto, none, {', '.join(knn.APPROX_KINDS)}")
        metadata = _unique(Metadata.from_items(items))
        features, kept, unreadable = embed_metadata(extractor, metadata, chunk_size, show_progress)
        now = _now()
        manifest = {"format": INDEX_FORMAT, "version": _current_version(root), "dim": int(extractor.dim),
                    "count": len(kept), "extractor": describe_extractor(extractor), "files": {}, "ann": None,
                    "approx": approx, "unreadable": _unreadable_rows(unreadable), "sources": list(sources),
                    "created": now, "updated": now}
        index = cls(root, features, kept, manifest)
        index._refresh_ann(rebuild=True)
        index.save()
        return index, BuildReport(len(kept), len(items) - len(metadata), unreadable)

    @classmethod
    def load(cls, root: str | os.PathLike, with_features: bool = True) -> GalleryIndex:
        """Read the committed version of an index; ReIDError naming the folder if it is missing or damaged."""
        root = Path(root)
        manifest = _read_manifest(root)
        files = manifest["files"]
        try:
            metadata = Metadata.from_json((root / files["meta"]).read_text(), str(root / files["meta"]))
            features = np.load(root / files["features"], mmap_mode=None if with_features else "r")
        except (OSError, ValueError, KeyError) as exc:
            raise ReIDError(f"index {root}: damaged, cannot read its data files ({exc})") from None
        if features.shape != (len(metadata), manifest["dim"]):
            raise ReIDError(f"index {root}: damaged, features {features.shape} do not match {len(metadata)} "
                            f"metadata rows of dim {manifest['dim']}")
        ann = knn.load_ann(root / files["ann"]) if files.get("ann") and with_features else None
        return cls(root, features, metadata, manifest, ann)

    # -- updates ----------------------------------------------------------------------------------------------
    def check_extractor(self, extractor: FeatureExtractor, allow_other_model: bool = False) -> list[str]:
        """ReIDError on a dimension mismatch; a different model is an error unless allowed (then a note)."""
        if int(extractor.dim) != self.dim:
            raise ModelError(f"dimension mismatch: index {self.root} holds {self.dim}-d features but model "
                             f"{extractor.name} gives {extractor.dim}-d features; use the index's model "
                             f"({self.extractor_info.get('path', '?')})")
        want, have = self.extractor_info.get("sha256"), describe_extractor(extractor).get("sha256")
        if want and have and want != have:
            message = (f"model {extractor.name} differs from the one that built index {self.root} "
                       f"({self.extractor_info.get('path', '?')}); its features may not be comparable")
            if not allow_other_model:
                raise ModelError(message + " (pass --force / allow_other_model=True if it is an export of it)")
            return [message]
        return []

    def add(self, extractor: FeatureExtractor, items: Sequence[Record | str], allow_other_model: bool = False,
            chunk_size: int = 256, show_progress: bool = False) -> BuildReport:
        """Embed and append items whose path is not yet indexed, then commit atomically."""
        self.check_extractor(extractor, allow_other_model)
        new = _unique(Metadata.from_items(items))
        fresh = ~np.isin(new.paths, self.metadata.paths)
        features, kept, unreadable = embed_metadata(extractor, new.select(fresh), chunk_size, show_progress)
        self.features = np.concatenate([self.features, features]) if len(features) else self.features
        self.metadata = self.metadata.concat(kept)
        retried = set(new.paths.tolist())  # their old entries are replaced by this attempt's outcome
        previous = [row for row in self.manifest["unreadable"] if row["path"] not in retried]
        self.manifest["unreadable"] = previous + _unreadable_rows(unreadable)
        self._refresh_ann(rebuild=False, added=features)
        self.save()
        return BuildReport(len(kept), int((~fresh).sum()), unreadable)

    def remove(self, paths: Sequence[str | os.PathLike]) -> int:
        """Drop rows by image path (as given or absolute); returns how many were removed."""
        targets = np.array([os.path.abspath(p) for p in paths] + [os.fspath(p) for p in paths], dtype=object)
        drop = np.isin(self.metadata.paths, targets)
        if drop.any():
            self.features = self.features[~drop]
            self.metadata = self.metadata.select(~drop)
            self._refresh_ann(rebuild=True)
            self.save()
        return int(drop.sum())

    def _wanted_ann_kind(self) -> str | None:
        approx = self.manifest.get("approx", "auto")
        if approx == "none" or self.count == 0:
            return None
        if approx != "auto":
            return approx
        return "ivf" if self.count >= knn.APPROX_THRESHOLD else None

    def _refresh_ann(self, rebuild: bool, added: np.ndarray | None = None) -> None:
        """Keep the faiss index in step with the rows: append on add; rebuild on build/remove, on a change of
        kind, or once an IVF index has outgrown its cell count (a gallery grown 4x wants 2x the cells)."""
        self._scratch_ann = None
        kind, current = self._wanted_ann_kind(), self.ann_params
        if kind is None:
            self._ann, self.manifest["ann"] = None, None
            return
        fresh = knn.default_params(kind, self.count)
        outgrown = kind == "ivf" and current is not None and fresh.nlist >= 2 * (current.nlist or 1)
        if rebuild or outgrown or self._ann is None or current is None or current.kind != kind:
            self._ann, self.manifest["ann"] = knn.build_ann(self.features, fresh), fresh.to_dict()
        elif added is not None and len(added):
            self._ann.add(np.ascontiguousarray(added, dtype=np.float32))

    def save(self) -> None:
        """Write version N+1 beside version N, commit by replacing index.json, then delete older versions."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = max(_current_version(self.root), _highest_file_version(self.root)) + 1
        files = {"features": f"features.v{version}.npy", "meta": f"meta.v{version}.json",
                 "ann": f"ann.v{version}.faiss" if self._ann is not None else None}
        atomic_save_npy(np.ascontiguousarray(self.features, dtype=np.float32), self.root / files["features"])
        with atomic_path(self.root / files["meta"]) as tmp:
            tmp.write_text(self.metadata.to_json())
        if self._ann is not None:
            knn.save_ann(self._ann, self.root / files["ann"])
        self.manifest.update(version=version, count=self.count, files=files, updated=_now())
        atomic_write_json(self.manifest, self.root / MANIFEST)  # the commit point
        _delete_unreferenced(self.root, files)

    # -- search ---------------------------------------------------------------------------------------------
    def search(self, query_features: np.ndarray, k: int = 10, method: str = "auto", rerank: str | None = None,
               rerank_k: int = 100, **rerank_params: Any) -> SearchResults:
        """Top-k rows per query by cosine similarity.

        method: "auto" (the stored faiss index when the gallery has >= knn.APPROX_THRESHOLD rows, else exact),
        "exact", "ivf" or "hnsw" (an approximate index of that kind is built in memory if not stored).
        rerank: None or "k_reciprocal" -- re-rank the union of the queries' top-`rerank_k` candidates.
        """
        queries = np.ascontiguousarray(query_features, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ModelError(f"dimension mismatch: index {self.root} holds {self.dim}-d features but the query "
                             f"features have shape {queries.shape}")
        if k < 1:
            raise ReIDError(f"k={k}: must be >= 1")
        if self.count == 0:
            raise ReIDError(f"index {self.root} is empty")
        first_k = max(k, rerank_k) if rerank else k
        chosen = knn.choose_method(method, self.count, self.ann_params.kind if self.ann_params else None)
        scores, indices = self._first_stage(queries, first_k, chosen)
        results = SearchResults(scores, indices, self.metadata, chosen)
        if rerank:
            from ..rerank.candidates import rerank_candidates

            results = rerank_candidates(results, queries, self.features, k, rerank, **rerank_params)
        else:
            results.scores, results.indices = scores[:, :k], indices[:, :k]
        return results

    def _first_stage(self, queries: np.ndarray, k: int, method: str) -> tuple[np.ndarray, np.ndarray]:
        if method == "exact":
            return knn.exact_search(queries, self.features, k)
        stored = self.ann_params
        if self._ann is not None and stored is not None and stored.kind == method:
            return knn.ann_search(self._ann, stored, queries, k)
        # a kind the index does not store: build it in memory for this session only (not saved)
        if self._scratch_ann is None or self._scratch_ann[0].kind != method:
            params = knn.default_params(method, self.count)
            self._scratch_ann = (params, knn.build_ann(self.features, params))
        return knn.ann_search(self._scratch_ann[1], self._scratch_ann[0], queries, k)


# ------------------------------------------------------------------------------------------------- helpers

def embed_metadata(extractor: FeatureExtractor, metadata: Metadata, chunk_size: int = 256,
                   show_progress: bool = False) -> tuple[np.ndarray, Metadata, list[tuple[str, str]]]:
    """Embed in chunks (bounded memory); unreadable images are skipped and returned as (path, reason)."""
    chunks, kept, unreadable = [], [], []
    starts = range(0, len(metadata), chunk_size)
    for start in progress(starts, desc="indexing", enabled=show_progress, total=len(starts)):
        part = metadata.select(slice(start, start + chunk_size))
        images, ok, bad = decode_images(list(part.paths), extractor.input_size, extractor.resize)
        unreadable += bad
        if len(images):
            chunks.append(extractor.embed_uint8(images))
            kept.append(part.select(ok))
    if not chunks:
        return np.zeros((0, extractor.dim), np.float32), Metadata.empty(), unreadable
    merged = kept[0]
    for part in kept[1:]:
        merged = merged.concat(part)
    return np.concatenate(chunks).astype(np.float32, copy=False), merged, unreadable


def _unique(metadata: Metadata) -> Metadata:
    """First occurrence of each path, in input order."""
    _, first = np.unique(metadata.paths, return_index=True)
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
    if manifest.get("format") != INDEX_FORMAT:
        raise ReIDError(f"index {root}: {MANIFEST} has format {manifest.get('format')!r}, expected {INDEX_FORMAT}")
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
    keep = {name for name in files.values() if name}
    for name in os.listdir(root):
        if _VERSIONED_FILE.match(name) and name not in keep:
            (root / name).unlink(missing_ok=True)
