"""Benchmark reidkit.metrics on Market-1501-sized inputs: a random 3,368 x 15,913 distance matrix.

Run: .venv/bin/python bench/bench_eval.py   -> docs/benchmarks/eval.json and docs/benchmarks/eval.md
Timings are wall-clock; the machine's load average is recorded because the machine is shared.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from reidkit.metrics import compute_distance_matrix, evaluate_rank, evaluate_rank_full

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "docs" / "benchmarks"
NUM_QUERY, NUM_GALLERY, NUM_IDS, NUM_CAMS = 3368, 15913, 751, 6
TARGET_SECONDS = 2.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def market_sized_case(seed: int = 0):
    """Random distances and ids with Market-1501's sizes: 750 query ids, gallery ids 0..750 (0 = distractor)."""
    rng = np.random.default_rng(seed)
    distmat = rng.random((NUM_QUERY, NUM_GALLERY), dtype=np.float32)
    q_pids = rng.integers(1, NUM_IDS, NUM_QUERY)
    g_pids = rng.integers(0, NUM_IDS, NUM_GALLERY)
    return distmat, q_pids, g_pids, rng.integers(0, NUM_CAMS, NUM_QUERY), rng.integers(0, NUM_CAMS, NUM_GALLERY)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def peak_extra_memory(fn: Callable[[], object]) -> int:
    """Peak resident memory above the starting level while `fn` runs (polled every millisecond)."""
    baseline, peak, done = _rss_bytes(), [0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return max(peak[0], _rss_bytes()) - baseline


def memory_probe(threads: int) -> None:
    """Child-process mode: print the peak extra memory of one evaluate_rank call in a fresh process (a process
    that already ran it keeps freed memory mapped, which would hide the peak)."""
    case = market_sized_case()
    print(peak_extra_memory(lambda: evaluate_rank(*case, max_rank=50, num_threads=threads)) / 2**20)


def fresh_peak_extra_mib(threads: int) -> float:
    probe = subprocess.run([sys.executable, __file__, "--memory-probe", str(threads)], capture_output=True,
                           text=True, check=True)
    return float(probe.stdout.strip().splitlines()[-1])


def timed(fn: Callable[[], object], repeats: int) -> tuple[list[float], float]:
    """(wall-clock seconds per run, median process CPU seconds per run)."""
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times, statistics.median(cpu)


def plain_loop_seconds_per_query(case, num_queries: int = 300) -> tuple[float, float]:
    """torchreid's Python algorithm (argsort each row, filter, cumsum) as a per-query loop, for scale:
    (wall, CPU) seconds per query."""
    distmat, q_pids, g_pids, q_camids, g_camids = case
    start, start_cpu = time.perf_counter(), time.process_time()
    for q in range(num_queries):
        order = np.argsort(distmat[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        raw_cmc = (g_pids[order][keep] == q_pids[q]).astype(np.int32)
        if raw_cmc.any():
            hits = raw_cmc.cumsum()
            _ = (hits / np.arange(1, hits.size + 1) * raw_cmc).sum() / raw_cmc.sum()
    return (time.perf_counter() - start) / num_queries, (time.process_time() - start_cpu) / num_queries


def main() -> None:
    load_before = os.getloadavg()
    case = market_sized_case()
    distmat, q_pids, g_pids, q_camids, g_camids = case
    rows = []

    def add(name: str, shape: tuple[int, int], fn: Callable[[], object], repeats: int, threads: int, **extra):
        times, cpu = timed(fn, repeats)
        rows.append({"case": name, "shape": list(shape), "torch_threads": threads,
                     "median_s": statistics.median(times), "runs_s": times, "cpu_s": cpu, **extra})

    # Default: torch runs single-threaded inside evaluate_rank; then the process's own setting (2 threads).
    for threads in (1, os.cpu_count() or 1):
        add("evaluate_rank, market protocol, torchreid AP", distmat.shape,
            lambda t=threads: evaluate_rank(*case, max_rank=50, num_threads=t), repeats=3, threads=threads,
            peak_extra_mib=fresh_peak_extra_mib(threads))
    result = evaluate_rank_full(*case, max_rank=50)
    rows[0].update(rank1=float(result.cmc[0]), mAP=result.mAP, mINP=result.mINP)

    add("evaluate_rank, market protocol, market-official AP", distmat.shape,
        lambda: evaluate_rank(*case, max_rank=50, ap="market-official"), repeats=1, threads=1)
    # CUHK03-NP test sizes: 1,400 queries, 5,332 gallery images.
    cuhk = (distmat[:1400, :5332], q_pids[:1400], g_pids[:5332], q_camids[:1400], g_camids[:5332])
    add("evaluate_rank, CUHK03 classic protocol (10 single-shot draws)", (1400, 5332),
        lambda: evaluate_rank(*cuhk, max_rank=50, use_metric_cuhk03=True), repeats=1, threads=1)
    wall, cpu = plain_loop_seconds_per_query(case)
    rows.append({"case": "plain per-query loop (torchreid's Python algorithm), extrapolated from 300 queries",
                 "shape": list(distmat.shape), "torch_threads": None, "median_s": wall * NUM_QUERY,
                 "runs_s": [], "cpu_s": cpu * NUM_QUERY})
    rng = np.random.default_rng(1)
    qf = rng.standard_normal((NUM_QUERY, 512), dtype=np.float32)
    gf = rng.standard_normal((NUM_GALLERY, 512), dtype=np.float32)
    add("compute_distance_matrix, 512-d features, squared euclidean", distmat.shape,
        lambda: compute_distance_matrix(qf, gf, metric="sqeuclidean"), repeats=1, threads=torch.get_num_threads())

    machine = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
               "torch": torch.__version__, "processor": platform.processor() or platform.machine(),
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "note": "2-core machine shared with other engineers' jobs; a load average above 2 means the timings "
                       "include waiting for a core"}
    report = {"target_s": TARGET_SECONDS, "machine": machine, "results": rows}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT_DIR / "eval.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Evaluation benchmark (`bench/bench_eval.py`)",
        "",
        f"Random float32 distance matrix of Market-1501 size ({NUM_QUERY} x {NUM_GALLERY}), 750 query ids, "
        f"gallery ids 0..750 (0 = distractors), {NUM_CAMS} cameras. Target for `evaluate_rank`: "
        f"<= {report['target_s']} s.",
        "",
        "| case | shape | torch threads | wall time (s) | all runs (s) | CPU time (s) | peak extra memory (MiB) |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for row in report["results"]:
        runs = ", ".join(f"{t:.2f}" for t in row["runs_s"]) or "-"
        memory = f"{row['peak_extra_mib']:.0f}" if "peak_extra_mib" in row else "-"
        cpu = "-" if row["cpu_s"] is None else f"{row['cpu_s']:.2f}"
        lines.append(f"| {row['case']} | {row['shape'][0]} x {row['shape'][1]} | {row['torch_threads'] or '-'} | "
                     f"{row['median_s']:.2f} | {runs} | {cpu} | {memory} |")
    lines += [
        "",
        "Wall time is the median of the runs listed; CPU time is the process CPU time of one run (all threads), "
        "the better guide when the machine is busy: a single-threaded run on an idle core takes about its CPU "
        "time. "
        "Peak extra memory is resident memory above the level before the call (the input matrix itself is "
        "204 MiB).",
        "",
        f"Machine: {m['cpu_count']} cores ({m['processor']}), torch {m['torch']}, numpy {m['numpy']}, "
        f"Python {m['python']}. Load average before / after: "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_before'])} / "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_after'])}. {m['note']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        memory_probe(int(sys.argv[2]))
    else:
        main()
