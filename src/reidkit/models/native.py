"""Optional native kernels, compiled on first use with the system C compiler and loaded with ctypes.

No torch headers and no build step at install time: one small C file (ncc_kernel.c) is compiled in about a
second with `-O3 -march=native` into a per-user cache keyed by the source, the compiler and this CPU's
instruction-set flags. Without a working compiler (or with REIDKIT_NATIVE=0) callers fall back to their
pure-PyTorch path, after one warning naming the reason. ctypes releases the GIL during the call, so callers
split work across Python threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from functools import cache
from pathlib import Path

from ..utils import atomic_path

SOURCE = Path(__file__).with_name("ncc_kernel.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC")


def cache_dir() -> Path:
    root = os.environ.get("REIDKIT_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "reidkit" / "native"


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
def ncc_library() -> ctypes.CDLL | None:
    """The compiled NCC kernel (built once per process), or None when it cannot be built here."""
    if os.environ.get("REIDKIT_NATIVE", "1") == "0":
        return None
    return load_ncc_library(_compiler())


def load_ncc_library(compiler: str | None) -> ctypes.CDLL | None:
    """Build (or reuse from the cache) and load the NCC kernel with `compiler`; None after one warning."""
    if compiler is None:
        warnings.warn("reidkit: no C compiler found (set CC); the NCC layer uses its slower PyTorch path",
                      stacklevel=3)
        return None
    try:
        library = ctypes.CDLL(str(_build(SOURCE, compiler)))
    except OSError as error:
        warnings.warn(f"reidkit: native NCC kernel unavailable ({error}); using the PyTorch path", stacklevel=3)
        return None
    library.ncc_forward_blocks.restype = ctypes.c_int
    library.ncc_forward_blocks.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                           ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_long,
                                           ctypes.c_long]
    library.advise_huge_pages.restype = ctypes.c_int
    library.advise_huge_pages.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return library
