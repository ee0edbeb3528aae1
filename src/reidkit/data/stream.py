"""Streaming training data: a decoded-image cache on disk, read by DataLoader worker processes.

The in-memory store (`images.load_image_tensor`) holds every training image decoded in each process's RAM
(CUHK03-NP at 192x96: ~0.4 GB; MSMT17: ~7 GB, per rank). Here the images are decoded once, by THE decoder
(`images.decode_images`), into one uint8 .npy of shape (N, 3, H, W) -- the in-memory tensor's layout, so a row
read from it is bit for bit the tensor row -- and memory-mapped: the pages live in the OS page cache, shared by
all processes and ranks on the machine, and only the rows a batch needs are read.

The cache is keyed by the image paths, their sizes and modification times, the target size, the resize mode and
the decoder version: changing any file (or the size) makes a new cache, never a stale one. It is built under a
file lock (one builder; other processes wait, then reuse it), chunk by chunk into `<key>.npy.partial` with the
number of finished rows recorded after each chunk, so an interrupted build resumes where it stopped; the finished
file is renamed into place (atomic) and described by `<key>.json`. A .npy whose header does not match its
description (truncated, replaced) is rebuilt, with a warning.

Augmentation stays batch-level on the main process (transforms.BatchAugment): workers only read rows, so the
augmented batches are identical to the in-memory path's.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from ..utils import atomic_write_json, cache_root, progress
from .images import decode_images

CACHE_VERSION = 1  # bump when the decoder's output for the same file could change
CHUNK = 256  # images decoded (and recorded as done) at a time


def default_cache_dir() -> Path:
    return cache_root() / "decoded"


def cache_key(paths: Sequence[str | os.PathLike], size: tuple[int, int], mode: str) -> str:
    """sha256 of (paths, sizes, mtimes, size, resize mode, decoder version); a missing file is a DataError."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "size": list(size), "resize": mode}).encode())
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(f"cannot read image {os.fspath(path)}: {exc.strerror or exc}") from None
        h.update(f"{os.fspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class DecodedImages:
    """The rows of a finished cache: `images[rows]` -> uint8 tensor (len(rows), 3, H, W), as the in-memory tensor
    would give. The memory map is opened lazily in each process (DataLoader workers open their own)."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...]):
        self.path, self.shape = Path(path), tuple(shape)
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getitem__(self, rows: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.array[np.asarray(rows)]))

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "_array": None}


def open_cache(paths: Sequence[str | os.PathLike], size: tuple[int, int], mode: str = "stretch",
               cache_dir: str | os.PathLike | None = None, show_progress: bool = False,
               desc: str = "caching decoded images", workers: int = 4) -> DecodedImages:
    """The decoded-image cache of `paths` at `size`, built (or finished) first when needed."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size, mode)
    shape = (len(paths), 3, size[0], size[1])
    final = folder / f"{key}.npy"
    if _valid(final, shape):
        return DecodedImages(final, shape)
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then reuse its work
        if not _valid(final, shape):
            _build(paths, size, mode, folder, key, shape, show_progress, desc, workers)
    return DecodedImages(final, shape)


def _valid(final: Path, shape: tuple[int, ...]) -> bool:
    meta = final.with_suffix(".json")
    if not final.is_file() or not meta.is_file():
        return False
    try:
        described = tuple(json.loads(meta.read_text())["shape"])
        array = np.load(final, mmap_mode="r")
        found = array.shape
        del array
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(f"decoded-image cache {final}: unreadable ({exc}); rebuilding it", stacklevel=3)
        return False
    if found != shape or described != shape:
        warnings.warn(f"decoded-image cache {final}: holds {found}, expected {shape}; rebuilding it", stacklevel=3)
        return False
    return True


def _build(paths: Sequence[str | os.PathLike], size: tuple[int, int], mode: str, folder: Path, key: str,
           shape: tuple[int, ...], show_progress: bool, desc: str, workers: int) -> None:
    partial, done_file = folder / f"{key}.npy.partial", folder / f"{key}.progress.json"
    start = _resume_point(partial, done_file, shape)
    if start == 0:
        need = int(np.prod(shape))
        free = shutil.disk_usage(folder).free
        if free < need:
            raise DataError(f"decoded-image cache in {folder}: needs {need / 2**30:.2f} GiB for {shape[0]} images "
                            f"at {shape[2]}x{shape[3]}, {free / 2**30:.2f} GiB free; set data.cache_dir elsewhere")
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    else:
        array = np.load(partial, mmap_mode="r+")
    bad: list[tuple[str, str]] = []
    bar = progress(total=shape[0], initial=start, desc=desc, enabled=show_progress)
    for a in range(start, shape[0], CHUNK):
        b = min(a + CHUNK, shape[0])
        pixels, ok, chunk_bad = decode_images(paths[a:b], size, mode, workers)
        array[a:b][ok] = pixels.numpy()
        bad += chunk_bad
        array.flush()
        if not chunk_bad:  # a chunk with unreadable files is never recorded as done
            atomic_write_json({"done": b, "shape": list(shape)}, done_file)
        bar.update(b - a)
    bar.close()
    if bad:
        shown = "\n  ".join(reason for _, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(f"{len(bad)} unreadable image(s):\n  {shown}{more}")
    del array
    os.replace(partial, folder / f"{key}.npy")
    atomic_write_json({"version": CACHE_VERSION, "shape": list(shape), "size": list(size), "resize": mode,
                       "count": shape[0], "first": os.fspath(paths[0]) if len(paths) else ""},
                      folder / f"{key}.json")
    done_file.unlink(missing_ok=True)


def _resume_point(partial: Path, done_file: Path, shape: tuple[int, ...]) -> int:
    """Rows already decoded by an interrupted build of the same cache (0: start afresh)."""
    if not (partial.is_file() and done_file.is_file()):
        return 0
    try:
        state = json.loads(done_file.read_text())
        found = np.load(partial, mmap_mode="r").shape
    except (OSError, ValueError):
        return 0
    if tuple(state.get("shape", ())) != shape or found != shape:
        return 0
    return int(state.get("done", 0))


# ------------------------------------------------------------------------------------------------ loading

class _Batches(Dataset):
    """Item i = the rows of batch i of the epoch's plan, read from the cache (one item per batch)."""

    def __init__(self, images: DecodedImages, plan: Sequence[np.ndarray]):
        self.images, self.plan = images, list(plan)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[self.plan[i]]


def batch_images(images: torch.Tensor | DecodedImages, plan: Sequence[np.ndarray], workers: int = 0
                 ) -> Iterator[torch.Tensor]:
    """uint8 batches images[rows] for each `rows` of `plan`, in order: from memory, or read from a cache by
    `workers` DataLoader processes (prefetching two batches each) while the main process trains."""
    if workers == 0 or not isinstance(images, DecodedImages) or len(plan) == 0:
        for rows in plan:
            yield images[rows]
        return
    loader = DataLoader(_Batches(images, plan), batch_size=None, shuffle=False, num_workers=min(workers, len(plan)),
                        prefetch_factor=2)
    yield from loader
