"""Training throughput and memory: 1 vs 2 processes (gloo DDP) and streamed vs in-memory training data.

    nohup nice -n 10 .venv/bin/python bench/scale_training.py > runs/dist/scale_training.log 2>&1 &

Each configuration is one `reidkit train` command (`--nproc 2` for two processes) of one epoch on the CUHK03-NP
training folder (7,365 images, 767 identities, no validation) at 128x64, EfficientNet-Lite0 from random
initialisation, P x K = 16 x 4 (the global batch: two processes take 8 identities each). While it runs the process
tree is sampled every 0.5 s: the peak RSS and PSS (proportional set size: shared pages split between the processes
that map them, so page-cache pages of the memory-mapped cache are not counted once per process) of each training
rank and of its DataLoader workers. images/s is the epoch's global images over the epoch's wall time, from log.jsonl.
Writes docs/benchmarks/scale_training.json; the table goes in docs/benchmarks/scale.md. The load average of this
shared 2-core machine is recorded before and after each run: the figures are only as good as it allows.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from reidkit.utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected" / "bounding_box_train"
RUNS = ROOT / "runs" / "dist" / "bench"
OUT = ROOT / "docs" / "benchmarks" / "scale_training.json"
CACHE = RUNS / "cache"
SETTINGS = ["model.backbone=efficientnet_lite0", "model.pretrained=false", "data.height=128", "data.width=64",
            "optim.epochs=1", "optim.p=16", "optim.k=4", "optim.warmup_epochs=0", "sync_bn=neck",
            f"data.cache_dir={CACHE}"]
CONFIGS = [  # name, processes, stream, DataLoader workers
    ("1 process, in memory", 1, False, 0),
    ("2 processes, in memory", 2, False, 0),
    ("1 process, streamed (2 workers)", 1, True, 2),
    ("2 processes, streamed (2 workers each)", 2, True, 2),
    ("1 process, streamed (no workers)", 1, True, 0),
]


def _memory(proc: psutil.Process) -> tuple[float, float]:
    try:
        info = proc.memory_full_info()
        return info.rss / 2**20, info.pss / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0, 0.0


def _roles(root: psutil.Process, nproc: int) -> dict[int, str]:
    """pid -> rank / worker / launcher in the command's process tree."""
    roles: dict[int, str] = {}
    ranks = [root] if nproc == 1 else [c for c in root.children() if "reidkit.cli" in " ".join(c.cmdline())]
    if nproc > 1:
        roles[root.pid] = "launcher"
    for rank in ranks:
        roles[rank.pid] = "rank"
        for child in rank.children(recursive=True):
            roles[child.pid] = "worker"
    return roles


def _folder(name: str) -> Path:
    return RUNS / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")


def run(name: str, nproc: int, streamed: bool, workers: int) -> dict:
    """One configuration, measured; kept in its run folder (bench.json) so a rerun skips finished ones."""
    out = _folder(name)
    if (out / "bench.json").is_file():
        return json.loads((out / "bench.json").read_text())
    threads = max(1, 2 // nproc)
    cmd = [sys.executable, "-m", "reidkit.cli", "train", "--data", str(DATA), "--out", str(out), "--no-val",
           "--overwrite", "--quiet", "--nproc", str(nproc), *SETTINGS, f"data.stream={str(streamed).lower()}",
           f"data.workers={workers}", f"num_threads={threads}"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env)
    root = psutil.Process(proc.pid)
    peaks: dict[int, dict] = {}
    while proc.poll() is None:
        try:
            roles = _roles(root, nproc)
        except psutil.NoSuchProcess:
            break
        for pid, role in roles.items():
            try:
                rss, pss = _memory(psutil.Process(pid)) if pid != root.pid else _memory(root)
            except psutil.NoSuchProcess:  # a DataLoader worker that just ended
                continue
            peak = peaks.setdefault(pid, {"role": role, "rss_mb": 0.0, "pss_mb": 0.0})
            peak["rss_mb"], peak["pss_mb"] = max(peak["rss_mb"], rss), max(peak["pss_mb"], pss)
        time.sleep(0.5)
    if proc.returncode:
        raise SystemExit(f"{name}: reidkit train exited with {proc.returncode}")
    row = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    ranks = [p for p in peaks.values() if p["role"] == "rank"]
    helpers = [p for p in peaks.values() if p["role"] == "worker"]
    result = {
        "name": name, "processes": nproc, "streamed": streamed, "workers": workers,
        "threads_per_process": threads,
        "images_per_second": round(row["images_per_second"], 1), "epoch_seconds": round(row["epoch_seconds"], 1),
        "wall_seconds": round(time.monotonic() - start, 1), "loss": round(row["loss"], 4),
        "rank_peak_rss_mb": [round(p["rss_mb"]) for p in ranks],
        "rank_peak_pss_mb": [round(p["pss_mb"]) for p in ranks],
        "worker_peak_rss_mb": [round(p["rss_mb"]) for p in helpers],
        "worker_peak_pss_mb": [round(p["pss_mb"]) for p in helpers],
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    atomic_write_json(result, out / "bench.json")
    return result


def build_cache() -> dict:
    """The decoded-image cache, built once before the streamed runs (timed on its own)."""
    from reidkit.data.stream import open_cache
    from reidkit.training.config import DataConfig
    from reidkit.training.splits import prepare_splits

    shutil.rmtree(CACHE, ignore_errors=True)
    splits = prepare_splits(DATA, DataConfig(validation="none"))
    paths = [r.path for r in splits.train]
    start = time.monotonic()
    images = open_cache(paths, (128, 64), "stretch", CACHE, show_progress=True)
    seconds = time.monotonic() - start
    return {"images": len(paths), "build_seconds": round(seconds, 1),
            "file_mb": round(images.path.stat().st_size / 2**20),
            "in_memory_tensor_mb": round(len(paths) * 3 * 128 * 64 / 2**20)}


def main() -> None:
    import torch

    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found (../shared)")
    RUNS.mkdir(parents=True, exist_ok=True)
    cache_json = RUNS / "cache.json"
    cache = json.loads(cache_json.read_text()) if cache_json.is_file() else build_cache()
    atomic_write_json(cache, cache_json)
    print(json.dumps(cache), flush=True)
    results = []
    for name, nproc, streamed, workers in CONFIGS:
        results.append(run(name, nproc, streamed, workers))
        print(json.dumps(results[-1]), flush=True)
    atomic_write_json({"script": "bench/scale_training.py", "data": str(DATA.relative_to(ROOT.parent)),
                       "settings": SETTINGS[:-1], "cache": cache, "runs": results,
                       "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                   "torch": torch.__version__}}, OUT)


if __name__ == "__main__":
    main()
