"""An index that grows past memory: faiss IVF-PQ (optionally OPQ-rotated) with on-disk, memory-mapped inverted
lists, built from a stream of feature chunks and mergeable across independently built shards.

    >>> params = IvfPqParams(nlist=4096, m=32)            # 32-byte codes, 4096 coarse cells
    >>> index = build_ivfpq("gallery.ivf", chunks, params, train_size=200_000)   # chunks: (features, ids) pairs
    >>> hits = IvfPqIndex.load("gallery.ivf").search(queries, k=10, nprobe=32)
    >>> hits.ids[0]                                        # item ids of the first query's top-10

Why faiss and this layout: faiss already has IVF-PQ, OPQ, memory-mapped `OnDiskInvertedLists` and the list merge
(`merge_from_multiple`, what `faiss.contrib.ondisk.merge_ondisk` uses); reidkit only adds streaming, item ids, a
manifest that detects damage, and a shard merge that refuses shards trained differently.

On-disk layout of an index folder (format "reidkit-ivfpq-1"), written into a temporary sibling folder and renamed
into place (readers see a whole index or none):

    ivfpq.json      manifest: dim, count, params, the trained state's SHA-256, file names and byte sizes
    trained.faiss   the trained, empty index (coarse centroids, PQ codebooks, OPQ rotation): shards share it
    index.faiss     the index header; its inverted lists live in lists.ivfdata (memory-mapped at search time)
    lists.ivfdata   the PQ codes and row numbers of every cell
    ids.txt         item ids, one per line, in row order; ids.offsets.npy (int64, count + 1) gives each line's
                    byte range, so a row's id is read without loading all ids
    vectors.npy     optional (keep_vectors, on by default): the raw features row-aligned with the index, float16
                    (or float32), memory-mapped at search time for exact re-ranking ("refine")

Refinement: PQ codes of 32-64 bytes cap recall@10 near 0.6-0.7 however many cells are probed (docs/scale.md), so
`search(..., refine=R)` takes the top R * k by PQ score, reads those rows' raw vectors from vectors.npy and re-sorts
them by exact inner product (faiss's IndexRefineFlat, but with the vectors on disk, so 10^7 x 256 never needs RAM:
5.1 GB of float16 read by the OS a few hundred rows per query).

Memory while building: one chunk of features plus the codes of one block (`block_size` rows); the codes of all
blocks are merged into lists.ivfdata on disk. Memory while searching: the coarse centroids and PQ tables; the
lists are paged in by the OS as cells are probed, and so are the refined candidates' rows of vectors.npy.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ReIDError
from ..utils import atomic_save_npy, atomic_write_json, progress

FORMAT = "reidkit-ivfpq-1"
MANIFEST = "ivfpq.json"
TRAINED, INDEX, LISTS, IDS, OFFSETS = "trained.faiss", "index.faiss", "lists.ivfdata", "ids.txt", "ids.offsets.npy"
VECTORS = "vectors.npy"
VECTOR_DTYPES = ("float16", "float32")
NPY_HEADER = 128  # bytes reserved for the .npy header of vectors.npy: written last, once the row count is known
DEFAULT_REFINE = 20  # candidates = refine * k when the index keeps its vectors (docs/benchmarks/scale.md)
MIN_POINTS_PER_CELL = 39  # faiss warns below this many training points per k-means centroid
BLOCK_SIZE = 1_000_000  # rows encoded in memory before their codes go to a block file


def _faiss():
    from ..inference import import_optional

    return import_optional("faiss", "the IVF-PQ index", package="faiss-cpu")


# ------------------------------------------------------------------------------------------------ params

@dataclass
class IvfPqParams:
    """nlist coarse cells; m PQ sub-quantizers of nbits bits each (code size m * nbits / 8 bytes per vector);
    opq: learn a rotation first (OPQ, better recall for the same code size); nprobe: cells visited per query."""

    nlist: int = 4096
    m: int = 32
    nbits: int = 8
    opq: bool = False
    nprobe: int = 32

    def check(self, dim: int) -> None:
        """ConfigError naming the parameter when faiss could not build or search this index for `dim`-d data."""
        for name in ("nlist", "m", "nbits", "nprobe"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"IVF-PQ {name}={value!r}: must be an integer >= 1")
        if dim % self.m:
            raise ConfigError(f"IVF-PQ m={self.m}: the code size must divide the feature dimension {dim} "
                              f"(each of the m sub-quantizers encodes dim / m components)")
        if not 4 <= self.nbits <= 16:
            raise ConfigError(f"IVF-PQ nbits={self.nbits}: must be between 4 and 16 bits per sub-quantizer")
        if self.m * self.nbits % 8:
            raise ConfigError(f"IVF-PQ m={self.m}, nbits={self.nbits}: the code size m * nbits must be whole bytes")
        check_nprobe(self.nprobe, self.nlist)

    @property
    def code_size(self) -> int:
        return self.m * self.nbits // 8

    def factory(self) -> str:
        """The faiss index_factory string, e.g. "OPQ32,IVF4096,PQ32x8"."""
        return f"{f'OPQ{self.m},' if self.opq else ''}IVF{self.nlist},PQ{self.m}x{self.nbits}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_nprobe(nprobe: Any, nlist: int) -> int:
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or not 1 <= nprobe <= nlist:
        raise ConfigError(f"IVF-PQ nprobe={nprobe!r}: must be an integer between 1 and nlist={nlist}")
    return int(nprobe)


# ------------------------------------------------------------------------------------------------ training

def _as_features(x: Any, where: str, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise ReIDError(f"{where}: features must be {want}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ReIDError(f"{where}: features hold NaN or inf")
    return x


def train_ivfpq(sample: np.ndarray, params: IvfPqParams, seed: int = 0) -> Any:
    """A trained, empty faiss index (inner product: features are L2-normalised, so scores are cosines)."""
    faiss = _faiss()
    sample = _as_features(sample, "training sample")
    params.check(sample.shape[1])
    if len(sample) < max(params.nlist, 2 ** params.nbits):
        raise ConfigError(f"IVF-PQ training: {len(sample)} sample vectors are too few for nlist={params.nlist} "
                          f"cells and {2 ** params.nbits} PQ centroids; give at least "
                          f"{MIN_POINTS_PER_CELL * params.nlist} or lower nlist / nbits")
    index = faiss.index_factory(sample.shape[1], params.factory(), faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivf.cp.seed = seed
    ivf.pq.cp.seed = seed
    ivf.do_polysemous_training = False  # faiss's default; costs minutes and serves only Hamming pre-filtering
    index.train(sample)
    return index


def _serialize(index: Any) -> bytes:
    return bytes(_faiss().serialize_index(index))


# ------------------------------------------------------------------------------------------------ ids

def _encode_ids(ids: Sequence[Any], where: str) -> tuple[bytes, np.ndarray]:
    """UTF-8 lines and each line's length (+1 for the newline); ReIDError for an id holding a newline."""
    text = [str(i) for i in ids]
    if any("\n" in t for t in text):
        raise ReIDError(f"{where}: an item id holds a newline")
    lines = [t.encode() + b"\n" for t in text]
    return b"".join(lines), np.fromiter((len(b) for b in lines), dtype=np.int64, count=len(lines))


# ------------------------------------------------------------------------------------------------ index

@dataclass
class IvfResults:
    """Top-k per query: `rows` (Q, k) into the index (-1 = fewer than k results), `scores` (cosine estimates
    from the PQ codes, or exact inner products with the stored vectors when refined), `ids` the item ids (None
    where rows is -1)."""

    scores: np.ndarray
    rows: np.ndarray
    ids: list[list[str | None]]


class IvfPqIndex:
    """A finished IVF-PQ folder: `load`, `search`, `item_ids`, `info`. Build with `build_ivfpq` or `IvfPqBuilder`,
    combine shards with `merge_ivfpq`."""

    def __init__(self, root: Path, manifest: dict[str, Any], index: Any, ids_blob: np.ndarray,
                 offsets: np.ndarray, vectors: np.ndarray | None = None):
        self.root, self.manifest, self.index = root, manifest, index
        self._ids_blob, self._offsets = ids_blob, offsets
        self.vectors = vectors  # (count, dim) memory-mapped raw features, or None

    @property
    def refine(self) -> int:
        """The stored default refine factor (0: no refinement; the index keeps no vectors)."""
        return int(self.manifest.get("refine", 0)) if self.vectors is not None else 0

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def params(self) -> IvfPqParams:
        return IvfPqParams(**self.manifest["params"])

    @classmethod
    def load(cls, root: str | os.PathLike) -> IvfPqIndex:
        """Open an index folder; ReIDError naming the file when one is missing, truncated or damaged."""
        root = Path(root)
        manifest = _read_manifest(root)
        _check_files(root, manifest)
        faiss = _faiss()
        try:  # ONDISK_SAME_DIR: the lists file is found next to index.faiss wherever the folder was moved
            index = faiss.read_index(str(root / INDEX), faiss.IO_FLAG_ONDISK_SAME_DIR)
        except RuntimeError as exc:
            raise ReIDError(f"IVF-PQ index {root / INDEX}: damaged, faiss cannot read it ({_first_line(exc)})") \
                from None
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        if index.ntotal != manifest["count"] or os.path.getsize(root / LISTS) < lists.totsize:
            raise ReIDError(f"IVF-PQ index {root / LISTS}: damaged, holds {os.path.getsize(root / LISTS)} bytes "
                            f"for {index.ntotal} rows where {lists.totsize} are needed")
        offsets = np.load(root / OFFSETS, mmap_mode="r")
        blob = np.memmap(root / IDS, dtype=np.uint8, mode="r") if manifest["count"] else np.zeros(0, np.uint8)
        if len(offsets) != manifest["count"] + 1 or (len(offsets) and offsets[-1] != len(blob)):
            raise ReIDError(f"IVF-PQ index {root / IDS}: damaged, its {len(blob)} bytes do not match "
                            f"{root / OFFSETS} for {manifest['count']} rows")
        return cls(root, manifest, index, blob, offsets, _load_vectors(root, manifest))

    def item_ids(self, rows: np.ndarray) -> list[str | None]:
        """Item ids of index rows (-1 -> None), read from the memory-mapped ids file."""
        out: list[str | None] = []
        for row in np.asarray(rows).ravel().tolist():
            if row < 0:
                out.append(None)
                continue
            start, stop = int(self._offsets[row]), int(self._offsets[row + 1]) - 1
            out.append(bytes(self._ids_blob[start:stop]).decode())
        return out

    def search(self, queries: np.ndarray, k: int = 10, nprobe: int | None = None, with_ids: bool = True,
               refine: int | None = None) -> IvfResults:
        """Top-k by (PQ-approximated) inner product, visiting `nprobe` cells (default: the built value); with
        `refine` R >= 1 (default: the stored value when the index keeps its vectors) the top R * k are re-sorted by
        exact inner product with the stored vectors. refine=0 switches refinement off."""
        queries = _as_features(queries, "queries", self.dim)
        set_nprobe(self.index, self.params.nprobe if nprobe is None else nprobe)
        if k < 1:
            raise ConfigError(f"k={k}: must be >= 1")
        refine = _check_refine(self.refine if refine is None else refine, self.vectors is not None, self.root)
        return _search_candidates(self, queries, k, refine, with_ids)

    def rows_of(self, rows: np.ndarray) -> np.ndarray:
        """Stored raw vectors (float32) of sorted, valid rows, read from the memory map."""
        if self.vectors is None:
            raise ReIDError(f"IVF-PQ index {self.root}: keeps no vectors (build with keep_vectors)")
        return np.asarray(self.vectors[rows], dtype=np.float32)

    def info(self) -> dict[str, Any]:
        sizes = {name: os.path.getsize(self.root / name) for name in self.manifest["files"]}
        return {"root": str(self.root), **self.manifest, "bytes_on_disk": sum(sizes.values()), "file_bytes": sizes}


def _check_refine(refine: Any, has_vectors: bool, where: Any) -> int:
    if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 0:
        raise ConfigError(f"refine={refine!r}: must be an integer >= 0 (candidates = refine * k; 0: off)")
    if refine and not has_vectors:
        raise ConfigError(f"refine={refine}: IVF-PQ index {where} keeps no vectors (build it with keep_vectors)")
    return int(refine)


def _search_candidates(source: Any, queries: np.ndarray, k: int, refine: int, with_ids: bool) -> IvfResults:
    """Top-k of `source.index` (an index or faiss IndexShards): refine x k PQ candidates re-ranked exactly through
    `source.rows_of` when refine > 0; item ids through `source.item_ids`."""
    scores, rows = source.index.search(queries, k * max(refine, 1))
    rows = rows.astype(np.int64)
    if refine:
        scores, rows = refine_candidates(queries, rows, k, source.rows_of)
    ids = [source.item_ids(r) for r in rows] if with_ids else []
    return IvfResults(scores, rows, ids)


def refine_candidates(queries: np.ndarray, rows: np.ndarray, k: int, fetch, block: int = 256
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Re-sort candidate `rows` (Q, C; -1 = none) by exact inner product with their raw vectors, keep the top k.
    `fetch(sorted unique rows)` returns their vectors: one vectorised gather per block of queries, in row order so
    the memory-mapped reads walk the file forwards."""
    out_s = np.full((len(rows), k), -np.inf, np.float32)
    out_r = np.full((len(rows), k), -1, np.int64)
    for start in range(0, len(rows), block):
        cand, q = rows[start:start + block], queries[start:start + block]
        valid = cand >= 0
        unique, inverse = np.unique(cand[valid], return_inverse=True)
        if not len(unique):
            continue
        vectors = fetch(unique)
        where = np.zeros(cand.shape, np.int64)
        where[valid] = inverse
        exact = np.einsum("qcd,qd->qc", vectors[where], q, dtype=np.float32)
        exact[~valid] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        out_s[start:start + block, :order.shape[1]] = np.take_along_axis(exact, order, 1)
        out_r[start:start + block, :order.shape[1]] = np.where(np.take_along_axis(valid, order, 1),
                                                                np.take_along_axis(cand, order, 1), -1)
    return out_s, out_r


def _load_vectors(root: Path, manifest: dict[str, Any]) -> np.ndarray | None:
    """The memory-mapped vectors.npy (its size already checked against the manifest), or None."""
    dtype = manifest.get("vectors")
    if not dtype:
        return None
    path = root / VECTORS
    count, dim = manifest["count"], manifest["dim"]
    try:
        vectors = np.load(path, mmap_mode="r") if count else np.zeros((0, dim), dtype)
    except (OSError, ValueError) as exc:
        raise ReIDError(f"IVF-PQ index {path}: damaged, cannot be read ({exc})") from None
    mapping = getattr(vectors, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
        # candidates are scattered rows: without this the kernel reads ahead ~128 KB around each one (32x the
        # bytes needed from disk, and the whole file ends up mapped into the process after a few hundred queries)
        mapping.madvise(mmap.MADV_RANDOM)
    if vectors.shape != (count, dim) or vectors.dtype != np.dtype(dtype):
        raise ReIDError(f"IVF-PQ index {path}: damaged, holds {vectors.dtype} {vectors.shape} where {dtype} "
                        f"({count}, {dim}) were written")
    return vectors


def set_nprobe(index: Any, nprobe: int) -> None:
    ivf = _faiss().extract_index_ivf(index)
    ivf.nprobe = check_nprobe(nprobe, ivf.nlist)


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else exc.__class__.__name__


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise ReIDError(f"IVF-PQ index {root}: not an index folder (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ReIDError(f"IVF-PQ index {path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        manifest["dim"], manifest["count"], manifest["params"], manifest["files"]  # noqa: B018 (presence check)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ReIDError(f"IVF-PQ index {path}: damaged manifest ({exc.__class__.__name__}: {exc})") from None
    return manifest


def _check_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every file present with the byte size the manifest recorded: a truncated file is caught here, before faiss
    memory-maps it (reading past the end of a mapping would kill the process with SIGBUS)."""
    for name, size in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise ReIDError(f"IVF-PQ index {path}: missing")
        have = os.path.getsize(path)
        if have != size:
            raise ReIDError(f"IVF-PQ index {path}: damaged, {have} bytes where {size} were written "
                            f"({'truncated' if have < size else 'grown'})")


# ------------------------------------------------------------------------------------------------ building

class IvfPqBuilder:
    """Adds chunks of (features, ids) to a trained index, one block file per `block_size` rows, then `finish`
    merges the blocks into on-disk lists and renames the folder into place. Nothing is visible at `root` before
    `finish`; an exception (or `abort`) removes the temporary folder."""

    def __init__(self, root: str | os.PathLike, trained: Any, params: IvfPqParams, overwrite: bool = False,
                 block_size: int = BLOCK_SIZE, keep_vectors: str | None = "float16", refine: int = DEFAULT_REFINE):
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise ReIDError(f"IVF-PQ index {self.root}: already exists (overwrite to replace it)")
        if trained.ntotal != 0 or not trained.is_trained:
            raise ReIDError("IVF-PQ builder: needs a trained, empty index")
        self.params, self.dim = params, trained.d
        params.check(self.dim)
        if keep_vectors not in (None, *VECTOR_DTYPES):
            raise ConfigError(f"keep_vectors={keep_vectors!r}: must be one of {', '.join(VECTOR_DTYPES)} or None")
        self.keep_vectors, self.refine = keep_vectors, _check_refine(refine, True, self.root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.", suffix=".building", dir=self.root.parent))
        self._trained_bytes = _serialize(trained)
        (self.tmp / TRAINED).write_bytes(self._trained_bytes)
        self._block: Any = None
        self._blocks: list[Path] = []
        self._block_size = block_size
        self._ids = open(self.tmp / IDS, "wb")  # noqa: SIM115 (closed in finish/abort)
        self._vectors = open(self.tmp / VECTORS, "wb") if keep_vectors else None  # noqa: SIM115 (as _ids)
        if self._vectors is not None:
            self._vectors.write(b"\0" * NPY_HEADER)  # the header follows in finish, once the count is known
        self._lengths: list[np.ndarray] = []
        self.count = 0

    def add(self, features: np.ndarray, ids: Sequence[Any]) -> None:
        features = _as_features(features, f"IVF-PQ {self.root}: chunk at row {self.count}", self.dim)
        if len(ids) != len(features):
            raise ReIDError(f"IVF-PQ {self.root}: chunk at row {self.count} has {len(features)} features but "
                            f"{len(ids)} ids")
        blob, lengths = _encode_ids(ids, f"IVF-PQ {self.root}: chunk at row {self.count}")
        if self._vectors is not None:
            if self.keep_vectors == "float16" and len(features) and np.abs(features).max() > 65504:
                raise ReIDError(f"IVF-PQ {self.root}: chunk at row {self.count} exceeds the float16 range "
                                "(features should be L2-normalised; or keep float32 vectors)")
            self._vectors.write(features.astype(self.keep_vectors).tobytes())
        for start in range(0, len(features), self._block_size):
            part = features[start:start + self._block_size]
            if self._block is None:
                self._block = _faiss().deserialize_index(np.frombuffer(self._trained_bytes, np.uint8))
            row = self.count + start
            room = self._block_size - self._block.ntotal
            self._block.add_with_ids(part[:room], np.arange(row, row + len(part[:room]), dtype=np.int64))
            if len(part) > room:  # a chunk straddling two blocks
                self._flush()
                self._block = _faiss().deserialize_index(np.frombuffer(self._trained_bytes, np.uint8))
                self._block.add_with_ids(part[room:], np.arange(row + room, row + len(part), dtype=np.int64))
            if self._block.ntotal >= self._block_size:
                self._flush()
        self._ids.write(blob)
        self._lengths.append(lengths)
        self.count += len(features)

    def _flush(self) -> None:
        if self._block is None or self._block.ntotal == 0:
            return
        path = self.tmp / f"block-{len(self._blocks):05d}.faiss"
        _faiss().write_index(self._block, str(path))
        self._blocks.append(path)
        self._block = None

    def finish(self, extra: dict[str, Any] | None = None) -> IvfPqIndex:
        self._flush()
        self._ids.close()
        if self._vectors is not None:
            _finish_vectors(self._vectors, self.count, self.dim, self.keep_vectors)
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        extra = {"vectors": self.keep_vectors, "refine": self.refine if self.keep_vectors else 0, **(extra or {})}
        _write_merged(self.tmp, self._trained_bytes, self._blocks, [0] * len(self._blocks), self.params, offsets,
                      extra)
        for block in self._blocks:
            block.unlink()
        return _commit(self.tmp, self.root)

    def abort(self) -> None:
        self._ids.close()
        if self._vectors is not None:
            self._vectors.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> IvfPqBuilder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _finish_vectors(fh: Any, count: int, dim: int, dtype: str) -> None:
    """Write the .npy header into the space reserved at the start of an open vectors file, then close it."""
    header = _npy_header(count, dim, dtype)
    fh.seek(0)
    fh.write(header)
    fh.close()


def _npy_header(count: int, dim: int, dtype: str) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": (count, dim)})
    if len(buf.getvalue()) != NPY_HEADER:  # numpy pads to 64 bytes; 128 hold any shape below 10^15 rows
        raise ReIDError(f"IVF-PQ vectors: a .npy header of {len(buf.getvalue())} bytes for shape ({count}, {dim})")
    return buf.getvalue()


def _write_merged(folder: Path, trained_bytes: bytes, sources: Sequence[Path], row_starts: Sequence[int],
                  params: IvfPqParams, offsets: np.ndarray, extra: dict[str, Any] | None) -> None:
    """index.faiss + lists.ivfdata in `folder`: the inverted lists of `sources` (IVF indexes with the same trained
    state) concatenated cell by cell on disk (OnDiskInvertedLists.merge_from_multiple, as
    faiss.contrib.ondisk.merge_ondisk does), the row numbers of source i shifted by row_starts[i]. faiss's own
    shift_ids is not used: it shifts by the wrong amount when sources differ in size (faiss 1.15)."""
    faiss = _faiss()
    merged = faiss.deserialize_index(np.frombuffer(trained_bytes, np.uint8))
    ivf = faiss.extract_index_ivf(merged)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(folder / LISTS))
    parts, keep = faiss.InvertedListsPtrVector(), []
    for path in sources:
        # a block's lists are memory-mapped from its file; a shard's are on disk already (mapping both crashes)
        flag = faiss.IO_FLAG_ONDISK_SAME_DIR if path.name == INDEX else faiss.IO_FLAG_MMAP
        part = faiss.read_index(str(path), flag)
        keep.append(part)  # the lists belong to their index: keep it alive until merged
        parts.push_back(faiss.extract_index_ivf(part).invlists)
    sizes = np.array([[il.list_size(j) for j in range(ivf.nlist)] for il in
                      (faiss.extract_index_ivf(p).invlists for p in keep)], dtype=np.int64).reshape(len(keep), -1)
    total = lists.merge_from_multiple(parts.data(), parts.size(), False, False) if keep else 0
    if any(row_starts):
        _shift_rows(lists, sizes, np.asarray(row_starts, np.int64))
    merged.ntotal = ivf.ntotal = total
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    del keep
    if total != len(offsets) - 1:
        raise ReIDError(f"IVF-PQ {folder}: merged {total} rows but holds {len(offsets) - 1} ids")
    faiss.write_index(merged, str(folder / INDEX))
    atomic_save_npy(offsets, folder / OFFSETS)
    if not (folder / LISTS).exists():  # no rows: faiss never created the lists file
        (folder / LISTS).touch()
    names = (TRAINED, INDEX, LISTS, IDS, OFFSETS) + ((VECTORS,) if (extra or {}).get("vectors") else ())
    files = {name: os.path.getsize(folder / name) for name in names}
    atomic_write_json({"format": FORMAT, "dim": int(merged.d), "count": int(total), "params": params.to_dict(),
                       "factory": params.factory(), "trained_sha256": hashlib.sha256(trained_bytes).hexdigest(),
                       "build_id": uuid.uuid4().hex, "files": files, **(extra or {})}, folder / MANIFEST)


def _shift_rows(lists: Any, sizes: np.ndarray, row_starts: np.ndarray) -> None:
    """In each cell, the entries that came from source i (merged in source order) get row_starts[i] added."""
    faiss = _faiss()
    for j in np.flatnonzero(sizes.sum(axis=0)).tolist():
        n = lists.list_size(j)
        ids = faiss.rev_swig_ptr(lists.get_ids(j), n).copy() + np.repeat(row_starts, sizes[:, j])
        codes = faiss.rev_swig_ptr(lists.get_codes(j), n * lists.code_size).copy()
        lists.update_entries(j, 0, n, faiss.swig_ptr(ids), faiss.swig_ptr(codes))


def _commit(tmp: Path, root: Path) -> IvfPqIndex:
    """Rename the finished folder into place (an existing index is replaced only after the new one is whole)."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(root, old)
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return IvfPqIndex.load(root)


def _take_sample(chunks: Iterator[tuple[np.ndarray, Sequence[Any]]], size: int
                 ) -> tuple[np.ndarray, list[tuple[np.ndarray, Sequence[Any]]]]:
    """The first `size` vectors of the stream, and the chunks read for them (added afterwards)."""
    taken: list[tuple[np.ndarray, Sequence[Any]]] = []
    have = 0
    for features, ids in chunks:
        taken.append((features, ids))
        have += len(features)
        if have >= size:
            break
    if not taken:
        raise ReIDError("IVF-PQ build: no features given")
    return np.concatenate([np.asarray(f, np.float32) for f, _ in taken])[:size], taken


def build_ivfpq(root: str | os.PathLike, chunks: Iterable[tuple[np.ndarray, Sequence[Any]]], params: IvfPqParams,
                train_size: int | None = None, train_sample: np.ndarray | None = None, trained_from: Any = None,
                overwrite: bool = False, seed: int = 0, block_size: int = BLOCK_SIZE, show_progress: bool = False,
                total: int | None = None, keep_vectors: str | None = "float16", refine: int = DEFAULT_REFINE
                ) -> IvfPqIndex:
    """Build an index from an iterable of (features (n, D), ids (n,)) chunks; no more than one chunk and one block
    of codes is held in memory.

    The quantizers come from `trained_from` (an index folder or a trained faiss index: what shards of one index
    must share), else are trained on `train_sample`, else on the first `train_size` vectors of the stream
    (default 64 per cell; the stream should then be in random order).

    keep_vectors ("float16", "float32" or None) also stores the raw features in vectors.npy for exact re-ranking;
    `refine` is the default refine factor stored with them (see IvfPqIndex.search)."""
    chunks = iter(chunks)
    head: list[tuple[np.ndarray, Sequence[Any]]] = []
    if trained_from is not None:
        trained = load_trained(trained_from)
        params = IvfPqParams(**{**params.to_dict(), **_trained_params(trained)})
    else:
        if train_sample is None:
            train_sample, head = _take_sample(chunks, train_size or 64 * params.nlist)
        trained = train_ivfpq(train_sample, params, seed)
    bar = progress(desc="adding to IVF-PQ", total=total, enabled=show_progress, unit="vec")
    with IvfPqBuilder(root, trained, params, overwrite, block_size, keep_vectors, refine) as builder:
        for features, ids in [*head, *chunks] if head else chunks:
            builder.add(features, ids)
            bar.update(len(features))
        bar.close()
        return builder.finish()


def load_trained(source: Any) -> Any:
    """A trained, empty index from an index folder (its trained.faiss) or a faiss index (copied, emptied)."""
    faiss = _faiss()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        path = path / TRAINED if path.is_dir() else path
        try:
            return faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ReIDError(f"IVF-PQ trained index {path}: cannot be read ({_first_line(exc)})") from None
    index = faiss.clone_index(source)
    index.reset()
    return index


def _trained_params(trained: Any) -> dict[str, Any]:
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(trained)
    pq = faiss.downcast_index(ivf).pq
    return {"nlist": int(ivf.nlist), "m": int(pq.M), "nbits": int(pq.nbits),
            "opq": isinstance(trained, faiss.IndexPreTransform)}


# ------------------------------------------------------------------------------------------------ shards

def merge_ivfpq(shards: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False
                ) -> IvfPqIndex:
    """One index holding the rows of `shards` in the order given (rows of shard 2 follow those of shard 1).

    Shards must come from one trained state (build them with `trained_from` the same folder); a shard given twice,
    a damaged shard or one trained differently is a ReIDError naming it. The lists are merged on disk."""
    if not shards:
        raise ReIDError("IVF-PQ merge: no shards given")
    opened = [IvfPqIndex.load(s) for s in shards]
    first = opened[0]
    seen: dict[str, Path] = {}
    for shard in opened:
        if shard.manifest["trained_sha256"] != first.manifest["trained_sha256"]:
            raise ReIDError(f"IVF-PQ merge: shard {shard.root} was trained differently from {first.root} "
                            "(build every shard with the same trained_from)")
        if shard.manifest["build_id"] in seen:
            raise ReIDError(f"IVF-PQ merge: shard {shard.root} is the same build as {seen[shard.manifest['build_id']]}"
                            " (given twice?)")
        seen[shard.manifest["build_id"]] = shard.root
        if shard.manifest.get("vectors") != first.manifest.get("vectors"):
            raise ReIDError(f"IVF-PQ merge: shard {shard.root} keeps vectors {shard.manifest.get('vectors')} but "
                            f"{first.root} keeps {first.manifest.get('vectors')} (build every shard alike)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ReIDError(f"IVF-PQ index {out}: already exists (overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".merging", dir=out.parent))
    try:
        trained_bytes = (first.root / TRAINED).read_bytes()
        (tmp / TRAINED).write_bytes(trained_bytes)
        with open(tmp / IDS, "wb") as fh:
            for shard in opened:
                with open(shard.root / IDS, "rb") as src:
                    shutil.copyfileobj(src, fh, 16 << 20)
        dtype = first.manifest.get("vectors")
        if dtype:
            _concat_vectors([s.root / VECTORS for s in opened if s.count], tmp / VECTORS, sum(s.count for s in opened),
                            first.dim, dtype)
        shifts = np.cumsum([0] + [len(s._ids_blob) for s in opened[:-1]])
        offsets = np.concatenate([[0]] + [np.asarray(s._offsets[1:]) + shift for s, shift in zip(opened, shifts)])
        shard_info = [{"root": str(s.root), "count": s.count, "build_id": s.manifest["build_id"]} for s in opened]
        starts = np.cumsum([0] + [s.count for s in opened[:-1]]).tolist()
        extra = {"vectors": dtype, "refine": first.manifest.get("refine", 0), "merged_from": shard_info}
        _write_merged(tmp, trained_bytes, [s.root / INDEX for s in opened], starts, first.params,
                      offsets.astype(np.int64), extra)
        return _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _concat_vectors(sources: Sequence[Path], out: Path, count: int, dim: int, dtype: str) -> None:
    """The shards' vectors.npy data concatenated in row order under one header, copied file to file."""
    with open(out, "wb") as fh:
        fh.write(_npy_header(count, dim, dtype))
        for path in sources:
            with open(path, "rb") as src:
                src.seek(np.load(path, mmap_mode="r").offset)
                shutil.copyfileobj(src, fh, 16 << 20)


class ShardedSearch:
    """Search several indexes (shards of one gallery, each possibly on its own disk) as one, with faiss.IndexShards:
    each query goes to every shard (in parallel threads), the top-k lists are merged by score. Rows are global:
    shard 2's rows follow shard 1's. A service spreading shards over machines does the same over the network."""

    def __init__(self, shards: Sequence[IvfPqIndex], threaded: bool = True):
        if not shards:
            raise ReIDError("sharded search: no shards given")
        faiss = _faiss()
        self.shards = list(shards)
        dims = {s.dim for s in self.shards}
        if len(dims) > 1:
            raise ReIDError(f"sharded search: shards of different dimensions {sorted(dims)}")
        self.index = faiss.IndexShards(self.shards[0].dim, threaded, True)  # successive_ids: rows follow on
        for shard in self.shards:
            self.index.add_shard(shard.index)
        self.starts = np.cumsum([0] + [s.count for s in self.shards])

    def search(self, queries: np.ndarray, k: int = 10, nprobe: int | None = None, with_ids: bool = True,
               refine: int | None = None) -> IvfResults:
        """As IvfPqIndex.search; refinement needs every shard to keep its vectors (default: the first shard's)."""
        queries = _as_features(queries, "queries", self.shards[0].dim)
        for shard in self.shards:
            set_nprobe(shard.index, shard.params.nprobe if nprobe is None else nprobe)
        if k < 1:
            raise ConfigError(f"k={k}: must be >= 1")
        has_vectors = all(s.vectors is not None for s in self.shards)
        refine = _check_refine(self.shards[0].refine if refine is None else refine, has_vectors, "shard")
        return _search_candidates(self, queries, k, refine, with_ids)

    def rows_of(self, rows: np.ndarray) -> np.ndarray:
        """Raw vectors of sorted global rows: each shard's contiguous run read from its own memory map."""
        cuts = np.searchsorted(rows, self.starts)
        return np.concatenate([shard.rows_of(rows[cuts[s]:cuts[s + 1]] - self.starts[s])
                               for s, shard in enumerate(self.shards)])

    def item_ids(self, rows: np.ndarray) -> list[str | None]:
        rows = np.asarray(rows).ravel()
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        return [None if r < 0 else self.shards[s].item_ids(np.array([r - self.starts[s]]))[0]
                for r, s in zip(rows.tolist(), shard.tolist())]
