"""Many cameras on Dask workers: `reidkit track` over N synthetic cameras, in one process vs one worker process per
camera (reidkit.video.workers), on this machine (2 shared cores).

    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python bench/scale_cameras.py [--cameras 4] [--seconds 15]

Video: `reidkit.data.synth_video` (synthetic pedestrians), N cameras of 640x360 at 10 fps, generated once under
runs/scale_cameras/. Detector: the default (vendored adas-0002, OpenVINO) on every frame; re-id: Intel OSNet x0.25
(0288, OpenVINO); online association (each tracklet gets its global id when it ends); no annotated video.

Runs: (1) one process, all cameras interleaved (OpenVINO and torch at 2 threads: the whole machine); (2) a
LocalCluster of N worker processes, 1 thread each, one camera per worker. Measured: wall time and frames/s in
total, per worker (its camera's frames / its task's tracking time), the association latency (tracklet closed on
its worker -> global id on the client; p50/p95/max) and the queue transit (closed -> received), the start time of
a LocalCluster of 2 and N processes, the agreement of the two runs' outputs (identical rows; IDF1 of one run's
ids against the other's), and the load average before and after each run.

Writes docs/benchmarks/scale_cameras.json and prints the markdown table of docs/benchmarks/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models/openvino/person-reidentification-retail-0288/person-reidentification-retail-0288.xml"
OUT_JSON = ROOT / "docs" / "benchmarks" / "scale_cameras.json"


def _cpu_seconds() -> float:
    """CPU time of this process (user + system, all its threads); workers report their own."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def make_video(root: Path, cameras: int, seconds: float) -> list[Path]:
    from reidkit.data.synth_video import SynthVideoConfig, generate_synth_video

    cfg = SynthVideoConfig(cameras=cameras, people=max(12, 4 * cameras), seconds=seconds, fps=10.0, width=640,
                           height=360, seed=7)
    marker = root.parent / f"{root.name}.config.json"  # the configuration the cached video was made with
    wanted = json.loads(json.dumps(cfg.__dict__))
    if not marker.is_file() or json.loads(marker.read_text()) != wanted:
        generate_synth_video(root, cfg, overwrite=True, show_progress=False)
        marker.write_text(json.dumps(wanted))
    return [root / name for name in cfg.camera_names]


def cluster_start_seconds(workers: int) -> float:
    from reidkit.video.workers import start_local_cluster

    started = time.perf_counter()
    client, cluster = start_local_cluster(workers)
    seconds = time.perf_counter() - started
    client.close()
    cluster.close()
    return round(seconds, 2)


def run(cams: list[Path], out: Path, workers: int, model: str) -> dict:
    from reidkit.video.pipeline import TrackOptions, track

    load_before = os.getloadavg()
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    result = track([str(c) for c in cams], out, model=model, options=TrackOptions(online=True, video=False),
                   show_progress=False, overwrite=True, workers=workers)
    wall = time.perf_counter() - started
    client_cpu = _cpu_seconds() - cpu_before
    row = {"workers": workers, "frames": result.frames, "wall_s": round(wall, 2),
           "client_cpu_s": round(client_cpu, 2),
           "frames_per_second": round(result.frames / wall, 2), "tracklets": result.num_tracklets,
           "identities": result.num_identities,
           "seconds_per_stage": {k: round(v, 2) for k, v in result.timings.items()},
           "load_avg_before": [round(x, 2) for x in load_before],
           "load_avg_after": [round(x, 2) for x in os.getloadavg()], "uptime_after": uptime()}
    cpu = client_cpu + sum(c.get("cpu_seconds", 0.0) for c in result.workers.get("cameras", {}).values())
    row["cpu_ms_per_frame"] = round(1000 * cpu / max(result.frames, 1), 1)  # client + workers, all processes
    if result.workers:
        row["per_worker"] = result.workers["cameras"]
        row["association_latency_seconds"] = result.workers.get("association_latency_seconds")
        row["queue_transit_seconds"] = result.workers.get("queue_transit_seconds")
    return row


def _tracks(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", ndmin=2) if path.stat().st_size else np.zeros((0, 10))


def agreement(a: Path, b: Path, cams: list[Path]) -> dict:
    """Rows identical between the two runs, and the IDF1 of run b's global ids against run a's (tracklet-level,
    length-weighted, over all cameras: 100 = the same identities up to renaming)."""
    from reidkit.video.association import tracklet_idf1

    same, total, ids_a, ids_b = 0, 0, [], []
    for cam in cams:
        ta, tb = (_tracks(r / cam.name / "tracks.txt") for r in (a, b))
        total += max(len(ta), len(tb))
        if ta.shape == tb.shape:
            same += int((np.abs(ta[:, [0, 2, 3, 4, 5]] - tb[:, [0, 2, 3, 4, 5]]).max(axis=1) < 0.01).sum())
            ids_a += [f"{x}" for x in ta[:, 1].astype(int)]
            ids_b += [f"{x}" for x in tb[:, 1].astype(int)]
    idf1 = tracklet_idf1(np.asarray(ids_b), np.asarray(ids_a)) if ids_a else None
    return {"rows_identical_percent": round(100.0 * same / max(total, 1), 2),
            "idf1_of_worker_ids_vs_single_process_ids": None if idf1 is None else round(idf1, 2)}


def association_cost(sizes: tuple[int, ...] = (1_000, 10_000, 100_000), dim: int = 512, adds: int = 10) -> list[dict]:
    """Milliseconds per `OnlineAssociator.add` (the client's work per tracklet) when it already holds N tracklets
    of N / 2 identities, 20 cameras, random unit features (so nothing merges below the threshold; each add scans
    every identity, the worst case)."""
    from reidkit.video.association import AssociationConfig, OnlineAssociator, _Rows

    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        assoc = OnlineAssociator(AssociationConfig(threshold=0.35))
        feats = rng.standard_normal((n // 2, dim)).astype(np.float32)
        sums = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float64) * 2
        starts = np.sort(rng.uniform(0, 3600, n))
        state = {"_sums": (sums, dim), "_counts": (np.full(n // 2, 2.0), None), "_cams": (rng.integers(0, 20, n), None),
                 "_starts": (starts, None), "_ends": (starts + 8.0, None),
                 "_labels": (np.repeat(np.arange(1, n // 2 + 1), 2), None)}
        for name, (values, width) in state.items():  # the held tracklets, written straight into its arrays
            held = _Rows(width, values.dtype.type)
            for value in values:
                held.append(value)
            setattr(assoc, name, held)
        queries = rng.standard_normal((adds, dim))
        started = time.perf_counter()
        for q in queries:
            assoc.add(q, int(rng.integers(20)), 3600.0, 3608.0)
        rows.append({"tracklets": n, "identities": n // 2, "dim": dim,
                     "ms_per_add": round(1000 * (time.perf_counter() - started) / adds, 2)})
    return rows


def markdown(doc: dict) -> str:
    one, many = doc["single_process"], doc["workers"]
    lines = [f"`bench/scale_cameras.py`: {doc['cameras']} synthetic cameras (640x360, 10 fps, {doc['seconds']:g} s "
             f"each, {one['frames']} frames), default detector on every frame, OSNet 0288 (OpenVINO), online "
             "association, no annotated video. Measured " + doc["date"] + ".", "",
             "| run | wall (s) | frames/s total | frames/s per worker | CPU ms per frame (all processes) | "
             "association latency p50 / p95 / max (s) | queue transit p50 (s) | load before -> after |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in (("1 process (2 threads)", one), (f"{many['workers']} worker processes (1 thread each)", many)):
        per = row.get("per_worker")
        per_text = ", ".join(f"{v['frames_per_second']}" for v in per.values()) if per else "-"
        lat = row.get("association_latency_seconds")
        lat_text = f"{lat['p50']:.2f} / {lat['p95']:.2f} / {lat['max']:.2f}" if lat else "0 (in the loop)"
        transit = row.get("queue_transit_seconds")
        transit_text = f"{transit['p50']:.2f}" if transit else "-"
        lines.append(f"| {name} | {row['wall_s']} | **{row['frames_per_second']}** | {per_text} | "
                     f"{row.get('cpu_ms_per_frame', '-')} | {lat_text} | "
                     f"{transit_text} | {row['load_avg_before'][0]} -> "
                     f"{row['load_avg_after'][0]} |")
    lines += ["", f"LocalCluster start (processes up, scheduler ready): 2 workers {doc['cluster_start_s']['2']} s, "
              f"{many['workers']} workers {doc['cluster_start_s'][str(many['workers'])]} s. Agreement of the two "
              f"runs: {doc['agreement']['rows_identical_percent']} % of rows identical, IDF1 of the workers' ids "
              f"against the single process's {doc['agreement']['idf1_of_worker_ids_vs_single_process_ids']}.",
              "", "Client-side association cost (`OnlineAssociator.add`, worst case: every identity scanned):", "",
              "| tracklets held | identities | ms per add |", "|---|---|---|"]
    lines += [f"| {r['tracklets']} | {r['identities']} | {r['ms_per_add']} |" for r in doc["association_cost"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scale_cameras")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    cams = make_video(args.out / "video", args.cameras, args.seconds)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cameras": args.cameras,
           "seconds": args.seconds, "model": Path(args.model).name, "uptime_start": uptime(),
           "cluster_start_s": {str(n): cluster_start_seconds(n) for n in sorted({2, args.cameras})}}
    print(json.dumps(doc["cluster_start_s"]), flush=True)
    doc["single_process"] = run(cams, args.out / "one", 0, args.model)
    print(json.dumps(doc["single_process"]), flush=True)
    doc["workers"] = run(cams, args.out / "many", args.cameras, args.model)
    print(json.dumps(doc["workers"]), flush=True)
    doc["agreement"] = agreement(args.out / "one", args.out / "many", cams)
    doc["association_cost"] = association_cost()
    print(json.dumps(doc["association_cost"]), flush=True)
    doc["uptime_end"] = uptime()
    from reidkit.utils import atomic_write_json

    atomic_write_json(doc, OUT_JSON)
    print(markdown(doc))


if __name__ == "__main__":
    main()
