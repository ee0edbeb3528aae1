"""Load test of `reidkit serve` on loopback: N concurrent clients searching a 100k-item index for 60 s.

    .venv/bin/python bench/web_load.py [--items 100000] [--clients 8] [--seconds 60] [--model runs/emb_val/best.pt]
                                       [--writer]

Builds an index of `--items` synthetic features (GalleryIndex.add_features with metadata: camid, time, pid,
source), starts `reidkit serve` as a subprocess on a free 127.0.0.1 port (never any other address), and lets
`--clients` threads POST real person crops to /api/search (top 10) back to back for `--seconds`, then stops the
server: bounded, nothing keeps running. Every request runs the whole path: upload, decode by the one decoder,
embed with the model, exact search over the 100k rows, JSON. With --writer, another process-like writer (its
own GalleryIndex) appends 1000 rows every 5 s meanwhile. Records throughput, p50 / p90 / p99 / max latency, the
error count, the server's RSS every 5 s and the load average (the machine is shared), in
docs/benchmarks/web_load.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "docs" / "benchmarks"
SHARED_CROPS = ROOT.parent / "shared" / "datasets" / "cuhk03np-detected" / "bounding_box_train"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def query_crops(count: int, scratch: Path) -> list[bytes]:
    """Real person crops from ../shared (any: only the speed is measured) when present, else synthetic ones."""
    files = sorted(SHARED_CROPS.glob("*.jpg"))[:: 97][:count] if SHARED_CROPS.is_dir() else []
    if not files:
        from reidkit.data.synth import SynthConfig, generate_market_dataset

        root = generate_market_dataset(scratch / "synth", SynthConfig(num_train_ids=2, num_test_ids=count,
                                                                      num_cameras=2, images_per_camera=2, seed=1),
                                       show_progress=False)
        files = sorted((root / "query").glob("*.jpg"))[:count]
    return [f.read_bytes() for f in files]


def build_index(root: Path, model: Path, items: int, seed: int = 0) -> int:
    from reidkit.inference import build_extractor
    from reidkit.search.index import GalleryIndex

    extractor = build_extractor(model, device="cpu")
    index, _ = GalleryIndex.build(root, extractor, [], approx="auto")
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((items, extractor.dim)).astype(np.float32)
    cams = rng.integers(0, 8, items)
    meta = [{"id": f"syn-{i}", "camid": int(c), "pid": i // 10, "time": float(i) * 0.5, "source": f"cam{c + 1}"}
            for i, c in enumerate(cams.tolist())]
    index.add_features(features, meta)
    return int(extractor.dim)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, model: Path, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "reidkit.cli", "serve", "--index", str(index), "--model",
                             str(model), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start within 300 s")


def run_load(url: str, crops: list[bytes], clients: int, seconds: float) -> tuple[list[float], list[str], int]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = k
            while time.monotonic() < stop:
                crop = crops[i % len(crops)]
                i += clients
                start = time.perf_counter()
                try:
                    response = http.post("/api/search", files={"image": ("q.jpg", crop, "image/jpeg")},
                                         data={"top_k": "10"})
                    ok = response.status_code == 200 and len(response.json()["hits"]) == 10
                    problem = None if ok else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, len(latencies) + len(errors)


def writer(index: Path, dim: int, stop: threading.Event, added: list[int]) -> None:
    from reidkit.search.index import GalleryIndex

    rng = np.random.default_rng(1)
    live = GalleryIndex.load(index)
    while not stop.wait(5.0):
        n = live.count
        live.add_features(rng.standard_normal((1000, dim)).astype(np.float32),
                          [{"id": f"new-{n + i}", "camid": 0} for i in range(1000)])
        added.append(1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "emb_val" / "best.pt")
    parser.add_argument("--server-threads", type=int, default=2, help="torch/OpenMP threads of the server")
    parser.add_argument("--writer", action="store_true", help="append 1000 rows every 5 s during the load")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "web_load")
    args = parser.parse_args()
    if args.seconds > 600:
        raise SystemExit("--seconds above 600: this bench is bounded")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="web_load_") as scratch:
        scratch = Path(scratch)
        t0 = time.perf_counter()
        dim = build_index(scratch / "index", args.model, args.items)
        build_s = time.perf_counter() - t0
        crops = query_crops(32, scratch)
        port = free_port()
        proc = start_server(scratch / "index", args.model, port, args.server_threads)
        url = f"http://127.0.0.1:{port}"
        try:
            warm = httpx.post(url + "/api/search", files={"image": ("q.jpg", crops[0], "image/jpeg")}, timeout=120)
            assert warm.status_code == 200, warm.text
            rss = [(0.0, rss_mb(proc.pid))]
            load_before = os.getloadavg()
            sampling, added = threading.Event(), []
            start = time.monotonic()

            def sample() -> None:
                while not sampling.wait(5.0):
                    rss.append((round(time.monotonic() - start, 1), rss_mb(proc.pid)))

            sampler = threading.Thread(target=sample)
            sampler.start()
            extra = threading.Thread(target=writer, args=(scratch / "index", dim, sampling, added)) \
                if args.writer else None
            if extra:
                extra.start()
            latencies, errors, total = run_load(url, crops, args.clients, args.seconds)
            wall = time.monotonic() - start
            sampling.set()
            sampler.join()
            if extra:
                extra.join()
            rss.append((round(wall, 1), rss_mb(proc.pid)))
            health = httpx.get(url + "/api/health").json()
            final, batches = health["index"], health["search_batches"]
            load_after = os.getloadavg()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ms = sorted(1000 * x for x in latencies)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 1) if ms else float("nan")

    result = {
        "items": args.items, "dim": dim, "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT)
                                                     else args.model),
        "clients": args.clients, "seconds": round(wall, 1), "server_threads": args.server_threads,
        "writer": args.writer, "rows_added_during_load": sum(added), "final_index_count": final["count"],
        "requests": total, "errors": len(errors), "search_batches": batches, "error_samples": errors[:5],
        "throughput_rps": round(len(latencies) / wall, 2),
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": round(ms[-1], 1) if ms else None,
                       "mean": round(statistics.fmean(ms), 1) if ms else None},
        "server_rss_mb": [(t, round(m, 1)) for t, m in rss], "index_build_s": round(build_s, 1),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
    }
    from reidkit.utils import atomic_write_json, atomic_write_text

    atomic_write_json(result, args.out.with_suffix(".json"))
    atomic_write_text(markdown(result), args.out.with_suffix(".md"))
    print(markdown(result))


def markdown(r: dict) -> str:
    lat, sb = r["latency_ms"], r["search_batches"]
    rss = r["server_rss_mb"]
    lines = [
        "# Web app load test (bench/web_load.py)", "",
        f"`reidkit serve` on 127.0.0.1, {r['clients']} concurrent clients POSTing real crops to `/api/search` "
        f"(top 10) back to back for {r['seconds']} s; index of {r['items']:,} synthetic {r['dim']}-d features, "
        f"model `{r['model']}` on CPU ({r['server_threads']} server threads). Each request: upload, decode, embed, "
        "exact search over every row, JSON."
        + (f" A writer appended {r['rows_added_during_load']:,} rows meanwhile (index now "
           f"{r['final_index_count']:,})." if r["writer"] else ""), "",
        "| requests | errors | throughput (req/s) | p50 ms | p90 ms | p99 ms | max ms | server RSS start -> end (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {r['requests']} | {r['errors']} | {r['throughput_rps']} | {lat['p50']} | {lat['p90']} | {lat['p99']} | "
        f"{lat['max']} | {rss[0][1]} -> {rss[-1][1]} |", "",
        f"RSS every 5 s (MB): {', '.join(str(m) for _, m in rss)}.", "",
        f"Concurrent uploads were embedded and searched together (reidkit.web.batching): {sb['queries']} queries in "
        f"{sb['batches']} batches, mean {sb['queries'] / max(sb['batches'], 1):.1f}, largest {sb['largest']}.", "",
        f"Machine: {r['cpus']} CPUs shared with other jobs; load average (1/5/15 min) before {r['loadavg_before']}, "
        f"after {r['loadavg_after']}. Python {r['python']}, torch {r['torch']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
