"""#21: a real SIGKILL in the middle of `reidkit index add` leaves the index at a committed version."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from reidkit.cli import main
from reidkit.search.index import GalleryIndex

CLI = "import sys; from reidkit.cli import main; sys.exit(main())"


def _batch(folder: Path, pid: int, seed: int, count: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(folder / f"{pid:04d}_c1_{i:02d}.png")
    return folder


def _kill_during_add(index: Path, batch: Path, model: list[str], trigger) -> None:
    """Start `index add`, SIGKILL it as soon as `trigger()` is true (or it ends), and reap it."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, "index", "add", "--index", str(index), "--data", str(batch),
                             *model], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not trigger():
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def test_sigkill_during_index_add_leaves_a_committed_version(tmp_path, small_checkpoint):
    index = tmp_path / "idx"
    model = ["--model", str(small_checkpoint), "--device", "cpu", "--quiet"]
    assert main(["index", "build", "--index", str(index), "--data", str(_batch(tmp_path / "b0", 1, 0)), *model]) == 0
    count = 3
    rng = random.Random(0)
    for attempt in range(1, 6):
        before = set(os.listdir(index))
        if attempt <= 3:  # the moment a new version's file (temporary or final) appears: inside _commit
            def trigger(before=before):
                return any(name.startswith("features.v") for name in set(os.listdir(index)) - before)
        else:  # somewhere in the run (loading the model, embedding, committing)
            deadline = time.monotonic() + rng.uniform(0.5, 4.0)

            def trigger(deadline=deadline):
                return time.monotonic() >= deadline
        _kill_during_add(index, _batch(tmp_path / f"b{attempt}", attempt + 1, attempt), model, trigger)
        loaded = len(GalleryIndex.load(index).metadata.paths)
        assert loaded in (count, count + 3), f"attempt {attempt}: {loaded} rows, expected {count} or {count + 3}"
        count = loaded
    assert main(["index", "add", "--index", str(index), "--data", str(_batch(tmp_path / "last", 9, 9)), *model]) == 0
    final = GalleryIndex.load(index)
    assert len(final.metadata.paths) == count + 3 and final.features.shape == (count + 3, 64)
    # the next commit sweeps the temporaries the killed writers left (only index files and the lock remain)
    assert sorted(f.name for f in index.iterdir() if f.name.endswith(".tmp")) == []


TINY = ["--quiet", "--device", "cpu", "model.backbone=simple_cnn", "model.pretrained=false", "optim.epochs=3",
        "optim.p=4", "optim.k=2", "optim.warmup_epochs=0", "data.height=32", "data.width=16",
        "data.validation=dataset", "num_threads=1"]


def test_sigkill_after_the_first_last_pt_then_resume_completes(tmp_path, tiny_market):
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_market), "--out", str(out), *TINY]
    proc = subprocess.Popen([sys.executable, "-c", CLI, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and not (out / "last.pt").exists():
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()  # killed mid-run, not finished
    assert main([*argv, "--resume"]) == 0
    import torch

    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 3  # all three epochs done after resuming
