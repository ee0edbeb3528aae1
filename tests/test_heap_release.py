"""utils.release_free_heap: freed C-heap pages go back to the system (the long-stream memory fix of the video
pipeline). Reference: the process's own VmRSS from /proc, before and after, in a fresh child process."""

import ctypes.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file() or ctypes.util.find_library("c") is None,
                                reason="needs Linux /proc and glibc")

CHILD = textwrap.dedent("""
    import sys
    from reidkit.utils import release_free_heap

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    blocks = [bytes(1000) + bytes([i % 256]) for i in range(150_000)]  # ~150 MB of malloc'd (not pymalloc) blocks
    keep = bytes(1000) + b"x"  # allocated after them: the heap top stays in use, so free() alone cannot shrink it
    del blocks
    before = rss_mb()
    release_free_heap() if sys.argv[1] == "release" else None
    print(before, rss_mb())
""")


def run_child(mode: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout
    before, after = map(float, out.split())
    return before, after


def test_release_returns_freed_heap_pages():
    before, after = run_child("release")
    assert before - after > 100, (before, after)  # ~150 MB freed in the middle of the heap, handed back


def test_without_release_glibc_keeps_them():
    # the premise of the fix: the same frees without the call leave resident memory where it was
    before, after = run_child("keep")
    assert abs(before - after) < 5, (before, after)
