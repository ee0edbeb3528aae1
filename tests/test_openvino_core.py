"""OpenVINO models made and dropped in any order must leave the process able to take a Python signal.

Each `openvino.Core`'s CPU plugin swaps the calling thread's alternate signal stack for one of its own and unmaps
it when the Core is destroyed. Two Cores destroyed in creation order left the thread's alternate stack on unmapped
memory, and the next signal with a Python handler (Ctrl-C; the SIGCHLD handler torch's DataLoader installs, which
fired when the browser test's chromedriver exited) killed the whole test process with SIGSEGV. The reference is the
operating system: the child process either runs its handler and exits 0, or dies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import reidkit

pytest.importorskip("openvino")
VENDORED_ONNX = Path(reidkit.__file__).parent / "models" / "weights" / "person-reidentification-retail-0267.onnx"

CHILD = f"""
import gc, os, signal
from reidkit.inference.backends import OpenVinoExtractor

first = OpenVinoExtractor({str(VENDORED_ONNX)!r})
second = OpenVinoExtractor({str(VENDORED_ONNX)!r})
del first   # dropped in creation order, the order that left a dangling alternate stack
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGUSR1, lambda *_: print("handler ran", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive", flush=True)
"""


def test_signal_handler_runs_after_openvino_models_are_dropped():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"child died with {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.split() == ["handler", "ran", "alive"]
