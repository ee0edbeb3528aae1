"""Sharded extraction on this machine: one `reidkit extract` process vs 2 shards (`--shard 0/2`, `--shard 1/2`) run
at the same time, then `merge-features`; wall time and whether the merged features equal the single run's.

    nohup nice -n 10 .venv/bin/python bench/scale_extract.py --data runs/h3/cuhk03-val > runs/ivf/extract.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from reidkit.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def reidkit(*args: str, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "reidkit.cli", *args, "--quiet"], env=env)


def wait(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{p.args} failed")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, default=ROOT / "runs" / "emb_val" / "best.pt")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "ivf" / "extract")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "scale_extract.json")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    common = ["--model", str(args.model), "--data", str(args.data), "--splits", "query", "gallery",
              "--device", "cpu", "--batch-size", "64"]
    result = {"data": str(args.data), "model": str(args.model), "load_average_start": list(os.getloadavg())}
    t = time.perf_counter()
    wait(reidkit("extract", *common, "--out", str(args.work / "single.npz"), threads=2))
    result["single_process_2_threads_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    wait(*(reidkit("extract", *common, "--out", str(args.work / "sharded.npz"), "--shard", f"{i}/2", threads=1)
           for i in range(2)))
    result["two_shards_1_thread_each_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    parts = [str(args.work / f"sharded.part-{i}-of-2.npz") for i in range(2)]
    subprocess.run([sys.executable, "-m", "reidkit.cli", "merge-features", *parts, "--out",
                    str(args.work / "merged.npz")], check=True)
    result["merge_s"] = round(time.perf_counter() - t, 1)
    with np.load(args.work / "single.npz") as a, np.load(args.work / "merged.npz") as b:
        result["same_keys"] = sorted(a.files) == sorted(b.files)
        for split in ("query", "gallery"):
            fa, fb = a[f"{split}_features"], b[f"{split}_features"]
            result[f"{split}_items"] = len(fa)
            result[f"{split}_bitwise_equal"] = bool(np.array_equal(fa, fb))
            result[f"{split}_max_abs_diff"] = float(np.abs(fa - fb).max())
        result["ids_paths_equal"] = all(np.array_equal(a[k], b[k]) for k in a.files if not k.endswith("_features"))
    result["load_average_end"] = list(os.getloadavg())
    atomic_write_json(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
