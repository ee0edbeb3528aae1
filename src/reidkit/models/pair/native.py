"""Optional native kernels, compiled on first use with the system C compiler and loaded with ctypes.

No torch headers and no build step at install time: one small C file (kernels.c: the NCC layer's inference
kernel, IDLA's and IDLA-NCC's forward and backward kernels) is compiled in about a second with
`-O3 -march=native` into a per-user cache keyed by the source, the compiler and this CPU's instruction-set
flags. Without a working compiler (or with REIDKIT_NATIVE=0) callers fall back to their pure-PyTorch path, after
one warning naming the reason.
ctypes releases the GIL during the call, so callers split work across Python threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

from ...utils import atomic_path, cache_root

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC")


def cache_dir() -> Path:
    return cache_root() / "native"


def _cpu_fingerprint() -> str:
    """-march=native code must not run on another CPU: key the cache by this one's feature flags."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return flags


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(source: Path, compiler: str) -> Path:
    key = hashlib.sha256(
        "\n".join([source.read_text(), compiler, *FLAGS, platform.machine(), _cpu_fingerprint()]).encode()
    ).hexdigest()[:16]
    library = cache_dir() / f"{source.stem}-{key}.so"
    if not library.exists():
        with atomic_path(library) as tmp:  # concurrent first uses each build, the last rename wins
            result = subprocess.run([compiler, *FLAGS, str(source), "-o", str(tmp), "-lm"],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise OSError(f"{compiler} failed on {source.name}: {result.stderr.strip()[:500]}")
    return library


@cache
def native_library() -> ctypes.CDLL | None:
    """The compiled kernels (built once per process), or None when they cannot be built here."""
    if os.environ.get("REIDKIT_NATIVE", "1") == "0":
        return None
    return load_library(_compiler())


def load_library(compiler: str | None) -> ctypes.CDLL | None:
    """Build (or reuse from the cache) and load the kernels with `compiler`; None after one warning."""
    if compiler is None:
        warnings.warn("reidkit: no C compiler found (set CC); the NCC layer and IDLA use their slower PyTorch "
                      "paths", stacklevel=3)
        return None
    try:
        library = ctypes.CDLL(str(_build(SOURCE, compiler)))
    except OSError as error:
        warnings.warn(f"reidkit: native kernels unavailable ({error}); using the PyTorch paths", stacklevel=3)
        return None
    library.ncc_forward_blocks.restype = ctypes.c_int
    library.ncc_forward_blocks.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                           ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_long,
                                           ctypes.c_long]
    library.advise_huge_pages.restype = ctypes.c_int
    library.advise_huge_pages.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    library.idla_summary_pairs.restype = ctypes.c_int
    library.idla_summary_pairs.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4 + [ctypes.c_long] * 2
    library.idla_summary_backward_pairs.restype = ctypes.c_int
    library.idla_summary_backward_pairs.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 4 + [ctypes.c_long] * 2
    library.ncc_summary_pairs.restype = ctypes.c_int
    library.ncc_summary_pairs.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.c_int,
                                                                                       ctypes.c_long, ctypes.c_long]
    library.ncc_summary_backward_pairs.restype = ctypes.c_int
    library.ncc_summary_backward_pairs.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 5 + [
        ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return library


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def split_spans(items: int) -> list[tuple[int, int]]:
    """`items` split into torch.get_num_threads() contiguous, non-empty (first, last) spans."""
    parts = max(1, min(torch.get_num_threads(), items))
    bounds = [items * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def run_split(kernel: Callable[[int, int], int], items: int, what: str) -> None:
    """Run kernel(first, last) over the split_spans(items) in parallel (ctypes releases the GIL); a nonzero
    return code (scratch allocation failed) raises MemoryError."""
    spans = split_spans(items)
    if len(spans) <= 1:
        codes = [kernel(*span) for span in spans]
    else:
        codes = list(_pool(len(spans)).map(lambda span: kernel(*span), spans))
    if any(codes):
        raise MemoryError(f"{what}: the native kernel could not allocate its scratch buffers")


def run_split_summed(kernel: Callable[[int, int, int], int], items: int, shape: tuple[int, ...],
                     what: str) -> torch.Tensor:
    """run_split for kernels that accumulate into a shared float32 buffer (a weight gradient): each span gets its
    own zeroed buffer of `shape`, passed as kernel(first, last, buffer_pointer); returns their sum."""
    spans = split_spans(items)
    slots = {first: i for i, (first, _) in enumerate(spans)}
    partial = torch.zeros(len(spans), *shape)
    run_split(lambda first, last: kernel(first, last, partial[slots[first]].data_ptr()), items, what)
    return partial.sum(0)


def _pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per process and size; keyed by pid because a forked child inherits the pool object
    but not its threads."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="reidkit-native")
    return _POOLS[key]
