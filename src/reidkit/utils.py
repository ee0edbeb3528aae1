"""Small shared helpers: seeding, device choice, atomic file writes, progress bars, the one OpenVINO Core."""

from __future__ import annotations

import functools
import io
import json
import os
import random
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, ModelError

_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_root() -> Path:
    """$REIDKIT_CACHE/reidkit (else $XDG_CACHE_HOME/reidkit, else ~/.cache/reidkit): the per-user folder of every
    derived-file cache (compiled kernels, keypoints, decoded images, teacher embeddings)."""
    root = os.environ.get("REIDKIT_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "reidkit"


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc `malloc_trim`; a no-op elsewhere).

    A long stream frees and re-allocates many differently sized native buffers (OpenVINO's inference tensors, the
    decoder's frames); glibc keeps the freed pages, so resident memory crept ~8 MB per stream-minute with the
    OpenVINO re-id model although nothing leaked: trimming once a minute held it at ~1 MB per minute
    (docs/benchmarks/video.md). Cheap (milliseconds), so a long-running loop can call it every few seconds."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


def openvino_precision(precision: str, what: str = "") -> dict[str, str]:
    """The compile setting for an inference precision ("f32", "bf16", "f16"). Always set it: left alone, OpenVINO
    runs bf16 by itself on CPUs that have it, and results then differ between hosts (docs/video.md)."""
    if precision not in ("f32", "bf16", "f16"):
        raise ModelError(f"{what}precision={precision!r}: expected 'f32', 'bf16' or 'f16'")
    return {"INFERENCE_PRECISION_HINT": precision}


@functools.cache
def openvino_core() -> Any:
    """The process's one `openvino.Core` (the caller has checked that openvino imports); never make another.

    Each Core's CPU plugin swaps the calling thread's alternate signal stack for one of its own and unmaps it when
    the Core dies; two Cores dying in creation order leave the thread's alternate stack on unmapped memory, and the
    next signal with a Python handler (Ctrl-C, torch DataLoader's SIGCHLD) then kills the process with SIGSEGV
    (tests/test_openvino_core.py). One Core kept for the process's life also saves re-reading the plugins."""
    import openvino as ov

    return ov.Core()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; a device this machine does not have is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = "auto, cpu, cuda, cuda:N, mps"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: unknown (choose {choices})") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s) (choose {choices})")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available on this machine (choose {choices})")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r}: not supported (choose {choices})")
    return resolved


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in the target folder; rename it over `path` only if the block succeeds.

    An interrupted write therefore never leaves a truncated file: readers see the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename not in (None, tmp):
            raise
        # A failed write (disk full, file size limit) names no file, a failed rename the temporary one: name the
        # file being written.
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    # Serialised in memory, written by Python: a failed write (disk full) is then an OSError naming `path`, where
    # torch's own file writer reports it as a RuntimeError ("unexpected pos").
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def atomic_save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
             enabled: bool = True, **kwargs):
    """tqdm with ETA, switched off by `enabled=False` (tests, library calls that want silence)."""
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, dynamic_ncols=True, **kwargs)
