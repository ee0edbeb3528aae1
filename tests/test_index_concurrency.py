"""Two processes search an index while a third adds crops to it: no error, and every search sees exactly one
committed version (row count, ids and features checked against references computed from the pixels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from reidkit.search import GalleryIndex

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _index_worker as worker  # noqa: E402

BATCHES, BATCH_SIZE = 8, 5


def test_two_readers_search_while_a_writer_adds(tmp_path):
    root = tmp_path / "idx"
    ext = worker.ProjectionExtractor()
    index, _ = GalleryIndex.build(root, ext, [])
    index.add_images(ext, [worker.crop(n) for n in range(worker.INITIAL)], worker.metadata(range(worker.INITIAL)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    script = str(HERE / "_index_worker.py")
    procs = [subprocess.Popen([sys.executable, script, "reader", str(root), name, mode], env=env,
                              stderr=subprocess.PIPE, text=True) for name, mode in (("a", "load"), ("b", "refresh"))]
    procs.append(subprocess.Popen([sys.executable, script, "writer", str(root), str(BATCHES), str(BATCH_SIZE), "2"],
                                  env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    committed = {worker.INITIAL + b * BATCH_SIZE for b in range(BATCHES + 1)}
    summaries = [json.loads((tmp_path / f"reader-{name}.json").read_text()) for name in ("a", "b")]
    for summary in summaries:
        assert summary["errors"] == []
        assert {int(c) for c in summary["counts"]} <= committed
        assert str(max(committed)) in summary["counts"]  # each reader's last search saw the final version
    assert len({c for s in summaries for c in s["counts"]}) >= 2  # the searches really overlapped the writes
    final = GalleryIndex.load(root)
    assert final.count == max(committed)
    np.testing.assert_allclose(final.features, worker.expected_features(final.metadata.frames), atol=1e-5)
