"""Re-ranking benchmarks: time and peak memory of k-reciprocal re-ranking (the authors' public function, the
vectorised `re_ranking`, the scalable `re_ranking_features`), evaluation, alpha-QE, SSM and the AlignedReID local
distance, on synthetic clustered 512-d features.

Run: .venv/bin/python bench/bench_reranking.py [--sizes 8000,19281,100000] [--skip-public]
  -> docs/benchmarks/reranking.json and docs/benchmarks/reranking.md

Validation mode: the re-rankers on the CUHK03-NP validation carve-out, through the command line as a user runs
them (`reidkit split`, `reidkit evaluate`, `reidkit index build`, `reidkit search`), evaluate vs search:
  .venv/bin/python bench/bench_reranking.py --validation --embedding runs/emb_val/best.pt \
      --pair runs/idla_val/best.pt [--work /tmp/rkval]
  -> docs/benchmarks/reranking_validation.json and docs/benchmarks/reranking_validation.md

Every configuration runs in a fresh Python process (`--worker`), so `ru_maxrss` is that run's own peak resident
memory (tracemalloc misses torch/numpy buffers). The public function is the transcription kept in
tests/test_reranking.py (loaded from there, so there is a single copy).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks"
DIM = 512
# n -> (queries, gallery): Market-1501 ratio at 8,000; Market-1501 itself; MSMT17-like ratio at 100,000.
SPLITS = {8000: (1400, 6600), 19281: (3368, 15913), 100000: (12000, 88000)}
PUBLIC_MAX_N = 20000  # the public function holds several (n, n) arrays: ~200 GB at n = 94,000


# ---------------------------------------------------------------------------------------------------- data


def synthetic_split(num_query: int, num_gallery: int, dim: int = DIM, seed: int = 0):
    """Clustered, L2-normalised features with ~12 images per identity over 6 cameras and a camera bias."""
    rng = np.random.default_rng(seed)
    n = num_query + num_gallery
    num_ids = max(2, n // 12)
    pids = rng.integers(0, num_ids, size=n)
    camids = rng.integers(0, 6, size=n)
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32) * 0.5
    cameras = rng.standard_normal((6, dim), dtype=np.float32) * 0.25
    feats = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 20000):  # float32 in blocks: no (n, dim) float64 temporaries
        stop = min(start + 20000, n)
        feats[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
        feats[start:stop] += centres[pids[start:stop]] + cameras[camids[start:stop]]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    order = rng.permutation(n)
    q, g = order[:num_query], order[num_query:]
    return feats[q], feats[g], pids[q], pids[g], camids[q], camids[g]


def _public_re_ranking():
    spec = importlib.util.spec_from_file_location("_reranking_tests", REPO / "tests" / "test_reranking.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.public_re_ranking


# ---------------------------------------------------------------------------------------------------- worker


def _rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


def _evaluate(distmat, data) -> dict:
    try:
        from reidkit.metrics.rank import evaluate_rank
    except ImportError:
        return {"eval_s": None, "mAP": None, "rank1": None}
    _, _, q_pids, g_pids, q_cams, g_cams = data
    start = time.perf_counter()
    cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    return {"eval_s": time.perf_counter() - start, "mAP": float(mAP), "rank1": float(cmc[0])}


def _distances(a, b):
    from reidkit.distance import compute_distance_matrix

    return compute_distance_matrix(a, b, "euclidean")


def _run_k_reciprocal(method: str, data, show_progress: bool) -> tuple[np.ndarray, dict]:
    from reidkit.rerank.methods import re_ranking, re_ranking_features

    qf, gf = data[0], data[1]
    info: dict = {}
    if method == "features":
        return re_ranking_features(qf, gf, show_progress=show_progress), info
    start = time.perf_counter()
    q_g, q_q, g_g = _distances(qf, gf), _distances(qf, qf), _distances(gf, gf)
    info["distance_s"] = time.perf_counter() - start
    function = _public_re_ranking() if method == "public" else re_ranking
    return function(q_g, q_q, g_g), info


def worker(config: dict) -> dict:
    """One configuration in this (fresh) process; returns the measurements."""
    import torch

    torch.set_num_threads(2)
    method, n = config["method"], config["n"]
    num_query, num_gallery = config["split"]
    data = synthetic_split(num_query, num_gallery, config.get("dim", DIM))
    result = {**config, "load_before": os.getloadavg()[0], "rss_inputs_gb": _rss_gb()}
    start = time.perf_counter()
    if method == "baseline":
        distmat = _distances(data[0], data[1])
    elif method in ("public", "dense", "features"):
        distmat, info = _run_k_reciprocal(method, data, show_progress=n >= 50000)
        result.update(info)
    elif method in ("aqe", "ssm"):
        from reidkit.rerank.methods import rerank

        distmat = rerank(data[0], data[1], method, **config.get("params", {}))
    elif method == "local":
        from reidkit.metrics.alignment import local_distance

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(num_query, 8, 128, generator=gen)
        y = torch.randn(num_gallery, 8, 128, generator=gen)
        start = time.perf_counter()
        local_distance(x, y)
        return {**result, "seconds": time.perf_counter() - start, "peak_rss_gb": _peak_rss_gb(),
                "load_after": os.getloadavg()[0]}
    else:
        raise SystemExit(f"unknown method {method!r}")
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_gb"] = _peak_rss_gb()  # before evaluation, which would add its own buffers
    result.update(_evaluate(distmat, data))
    if config.get("save_to"):
        np.save(config["save_to"], np.asarray(distmat, dtype=np.float32))
    result["load_after"] = os.getloadavg()[0]
    return result


# ---------------------------------------------------------------------------------------------------- driver


def run_in_subprocess(config: dict) -> dict:
    print(f"-> {config['method']} n={config['n']}", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(config)], stdout=subprocess.PIPE,
                          text=True, cwd=REPO)
    if proc.returncode != 0:
        return {**config, "error": f"exit code {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"   {result.get('seconds', 0):.1f} s, peak {result.get('peak_rss_gb', 0):.2f} GB", flush=True)
    return result


def k_reciprocal_configs(sizes: list[int], skip_public: bool, tmp: Path) -> list[dict]:
    configs = []
    for n in sizes:
        split = SPLITS.get(n, (n // 6, n - n // 6))
        methods = ["baseline", "features"]
        if n <= PUBLIC_MAX_N:
            methods += ["dense"] + ([] if skip_public else ["public"])
        for method in methods:
            save = str(tmp / f"{method}_{n}.npy") if n <= PUBLIC_MAX_N and method != "baseline" else None
            configs.append({"method": method, "n": n, "split": split, "save_to": save})
    return configs


def extra_configs() -> list[dict]:
    return [
        {"method": "aqe", "n": 19281, "split": SPLITS[19281], "params": {"top_k": 5, "alpha": 3.0}},
        {"method": "aqe", "n": 19281, "split": SPLITS[19281],
         "params": {"top_k": 5, "alpha": 3.0, "expand_gallery": True}},
        {"method": "ssm", "n": 2000, "split": (350, 1650), "params": {"alpha": 0.9, "n_neighbors": 20}},
        {"method": "ssm", "n": 4000, "split": (700, 3300), "params": {"alpha": 0.9, "n_neighbors": 20}},
        {"method": "local", "n": 6000, "split": (1000, 5000)},
    ]


def agreement(results: list[dict]) -> list[dict]:
    """Max |difference| between the re-ranked matrices of the same n."""
    rows = []
    by_key = {(r["method"], r["n"]): r for r in results if r.get("save_to") and "error" not in r}
    for (method, n), result in by_key.items():
        if method == "public":
            continue
        reference = by_key.get(("public", n))
        if reference:
            diff = np.abs(np.load(result["save_to"], mmap_mode="r") - np.load(reference["save_to"], mmap_mode="r"))
            rows.append({"n": n, "method": method, "vs": "public", "max_abs_diff": float(diff.max())})
    return rows


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    lines = [
        "# Re-ranking benchmarks",
        "",
        f"Machine: {report['machine']['cpus']} CPU cores, {report['machine']['memory_gb']:.0f} GB RAM, "
        f"Python {report['machine']['python']}, torch {report['machine']['torch']}. "
        "Each run had the machine to itself unless its load column says otherwise (1-min load average "
        "before/after the run; 2 = both cores busy, e.g. by the run's own threads).",
        "",
        "Synthetic clustered 512-d L2-normalised features (~12 images per identity, 6 cameras). n = queries + "
        "gallery: 8,000 = 1,400 + 6,600 (Market ratio), 19,281 = 3,368 + 15,913 (Market-1501), 100,000 = "
        "12,000 + 88,000 (MSMT17 ratio). Each row is a fresh process; peak RSS = `ru_maxrss` of that process "
        "(inputs included, evaluation excluded). `public` = the authors' python-version (re_ranking_ranklist.py), "
        "given float32 euclidean distance matrices (their computation is the `dist s` column); `dense` = "
        "`re_ranking` (same inputs); `features` = `re_ranking_features` (from features, distances included). "
        "The public function is not run at n = 100,000: it holds several (n, n) arrays (~200 GB at MSMT17 "
        "size). mAP/rank-1 are on synthetic data (they show the mechanics, not real-data gains).",
        "",
        "| method | n | Q x G | time s | dist s | peak RSS GB | inputs RSS GB | eval s | mAP | rank-1 | load |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['n']} | {r['split'][0]} x {r['split'][1]} | {r['error']} "
                         "| | | | | | | |")
            continue
        method = r["method"] + (f" {r['params']}" if r.get("params") else "")
        lines.append(
            f"| {method} | {r['n']} | {r['split'][0]} x {r['split'][1]} | {_fmt(r.get('seconds'), 1)} | "
            f"{_fmt(r.get('distance_s'), 1)} | {_fmt(r.get('peak_rss_gb'))} | {_fmt(r.get('rss_inputs_gb'))} | "
            f"{_fmt(r.get('eval_s'))} | {_fmt(r.get('mAP'), 4)} | {_fmt(r.get('rank1'), 4)} | "
            f"{r['load_before']:.1f}/{r['load_after']:.1f} |")
    lines += ["", "Agreement with the public function (max |difference| of the (Q, G) re-ranked matrices):", "",
              "| n | method | max abs diff |", "| ---: | --- | ---: |"]
    lines += [f"| {a['n']} | {a['method']} | {a['max_abs_diff']:.2e} |" for a in report["agreement"]]
    lines += ["", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def speedups(runs: list[dict]) -> list[str]:
    notes = []
    by_key = {(r["method"], r["n"]): r for r in runs if "error" not in r}
    for n in sorted({r["n"] for r in runs}):
        public, features = by_key.get(("public", n)), by_key.get(("features", n))
        if public and features:
            public_total = public["seconds"] + public.get("distance_s", 0.0)
            speedup, alone = public_total / features["seconds"], public["seconds"] / features["seconds"]
            memory = features["peak_rss_gb"] / public["peak_rss_gb"]
            notes.append(f"n = {n}: re_ranking_features is {speedup:.1f}x faster than the public function "
                         f"(distances included on both sides; {alone:.1f}x against the public re-ranking alone) "
                         f"with {memory:.2f} of its peak memory.")
    return notes


# ------------------------------------------------------------------------------------- validation (CLI)

VAL_TRAIN_DIR = Path("/work/shared/datasets/cuhk03np-detected/bounding_box_train")
VAL_SEED, PAIR_TOP = 0, 20
PAIR_WEIGHTS = (0.25,)  # the rank fusion behind the earlier 54.0 -> 60.0 (1.0 = pair score alone)


def _reidkit(*argv) -> tuple[str, float]:
    """Run the `reidkit` command as a user would: (stdout, seconds)."""
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "reidkit"), *map(str, argv)], check=True,
                          capture_output=True, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    return done.stdout, time.perf_counter() - start


def _same_carve_out(train_dir: Path, split: Path, val_ids: int) -> dict:
    """The split folder holds exactly the images the trainer's carve-out (carve_validation_records, same ids and
    seed) validates on."""
    from reidkit.data import load_image_folder
    from reidkit.data.split import carve_validation_records

    carved = carve_validation_records(load_image_folder(train_dir).train, val_ids, VAL_SEED)
    out = {}
    for name, records, folder in (("query", carved.query, "query"), ("gallery", carved.gallery, "bounding_box_test")):
        expected = sorted(Path(r.path).name for r in records)
        written = sorted(p.name for p in (split / folder).iterdir())
        if expected != written:
            raise SystemExit(f"{split / folder} differs from the trainer's carve-out ({len(written)} vs "
                             f"{len(expected)} images)")
        out[name] = len(written)
    out["ids"] = len({r.pid for r in carved.query})
    return out


def _search_metrics(hits: list[list[dict]], q_paths: list[str], arrays: dict, index_root: Path) -> dict:
    """rank-1/5 and mAP of search results that list the whole gallery: the distance of a hit is its position, so
    evaluate_rank_full measures the search's own order; rank-1 is cross-checked with search_rank_k."""
    from reidkit.metrics import evaluate_rank_full
    from reidkit.search.evaluate import search_rank_k
    from reidkit.search.index import GalleryIndex, SearchResults

    g_index = {p: i for i, p in enumerate(map(str, arrays["g_paths"]))}
    num_gallery = len(g_index)
    order = np.array([[g_index[h["path"]] for h in query_hits] for query_hits in hits])
    if order.shape != (len(q_paths), num_gallery):
        raise SystemExit(f"search returned {order.shape} results, expected every gallery image per query")
    distmat = np.empty(order.shape)
    np.put_along_axis(distmat, order, np.arange(num_gallery, dtype=float)[None].repeat(len(q_paths), 0), axis=1)
    r = evaluate_rank_full(distmat, arrays["q_pids"], arrays["g_pids"], arrays["q_camids"], arrays["g_camids"],
                           max_rank=20)
    index = GalleryIndex.load(index_root)
    rows = np.array([[h["row"] for h in query_hits] for query_hits in hits])
    results = SearchResults(np.zeros(rows.shape, np.float32), rows, index.metadata, "exact")
    check = search_rank_k(results, arrays["q_pids"], arrays["q_camids"], ranks=(1,))
    return {"rank1": 100 * float(r.cmc[0]), "rank5": 100 * float(r.cmc[4]), "mAP": 100 * r.mAP,
            "rank1_search_rank_k": 100 * check["rank1"], "order": order}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def validation(args: argparse.Namespace) -> None:
    """Embedding alone, + k_reciprocal, + pair fusion: `reidkit evaluate` vs `reidkit index build` + `search`."""
    from reidkit.inference.extractor import extract_split_features
    from reidkit.utils import atomic_write_json, atomic_write_text

    load_before, work = os.getloadavg(), args.work
    checkpoints = {str(path): _sha256(path) for path in (args.embedding, args.pair)}
    work.mkdir(parents=True, exist_ok=True)
    split = work / "cuhk03-val"
    if not split.exists():
        _reidkit("split", "--data", args.train_dir, "--out", split, "--val-ids", args.val_ids, "--seed", VAL_SEED,
                 "--quiet")
    carve = _same_carve_out(args.train_dir, split, args.val_ids)
    arrays = extract_split_features(args.embedding, split, device="cpu", show_progress=False)
    q_paths = [str(p) for p in arrays["q_paths"]]
    num_gallery = len(arrays["g_paths"])
    variants = {"embedding": [], "k_reciprocal": ["--rerank", "k_reciprocal"]}
    for weight in PAIR_WEIGHTS:
        variants[f"pair (weight {weight:g})"] = ["--pair-model", args.pair, "--rerank-top", PAIR_TOP,
                                                 "--pair-weight", weight]
    rows = {}
    for name, options in variants.items():
        out = work / f"evaluate_{name.split()[0]}_{len(rows)}.json"
        _, seconds = _reidkit("evaluate", "--model", args.embedding, "--data", split, "--out", out, "--device",
                              "cpu", "--quiet", *options)
        report = json.loads(out.read_text())
        rows[name] = {"evaluate": {"rank1": report["rank1"], "rank5": report["rank5"], "mAP": report["mAP"],
                                   "seconds": round(seconds, 1)}, "options": [str(o) for o in options]}
    index = work / "index"
    _, build_seconds = _reidkit("index", "build", "--index", index, "--data", split, "--split", "gallery", "--model",
                                args.embedding, "--approx", "none", "--device", "cpu", "--overwrite", "--quiet")
    for name, options in variants.items():
        if name == "k_reciprocal":  # the pool = the whole gallery: the same problem as evaluate's
            options = [*options, "--rerank-top", num_gallery]
        stdout, seconds = _reidkit("search", "--index", index, "--query", *q_paths, "--top", num_gallery, "--approx",
                                   "none", "--device", "cpu", "--json", *options)
        hits = [q["results"] for q in json.loads(stdout)["queries"]]
        metrics = _search_metrics(hits, q_paths, arrays, index)
        rows[name]["search"] = {k: v for k, v in metrics.items() if k != "order"} | {"seconds": round(seconds, 1)}
        rows[name]["search_order"] = metrics["order"]
    agreement = _agreement_with_library(rows, arrays, args)
    if {str(path): _sha256(path) for path in (args.embedding, args.pair)} != checkpoints:
        raise SystemExit("a checkpoint changed during the run (a trainer still writing it?): evaluate and search "
                         "may have used different models; run again on a copy")
    for name, row in rows.items():
        row["queries_with_identical_ranking"] = agreement[name]
        del row["search_order"]
    report = {"embedding": str(args.embedding), "pair": str(args.pair), "sha256": checkpoints, "split": str(split),
              "carve_out": carve,
              "queries": len(q_paths), "gallery": num_gallery, "index_build_seconds": round(build_seconds, 1),
              "pair_top": PAIR_TOP, "rows": rows, "load_before": load_before, "load_after": os.getloadavg(),
              "cpus": os.cpu_count()}
    atomic_write_json(report, OUT / "reranking_validation.json")
    atomic_write_text(validation_markdown(report), OUT / "reranking_validation.md")
    print(validation_markdown(report))


def _agreement_with_library(rows: dict, arrays: dict, args: argparse.Namespace) -> dict[str, int]:
    """Per variant: queries whose whole search ranking equals the library's full-gallery re-ranking of evaluate's
    features (the code `reidkit evaluate` runs), i.e. the same ranking, not only the same averages."""
    from reidkit.distance import compute_distance_matrix
    from reidkit.rerank import build_reranker

    qf, gf = arrays["query_features"], arrays["gallery_features"]
    base = compute_distance_matrix(qf, gf, "sqeuclidean")
    images = {"query_images": [str(p) for p in arrays["q_paths"]],
              "gallery_images": [str(p) for p in arrays["g_paths"]]}
    out = {}
    for name, row in rows.items():
        if name == "embedding":
            dist = base
        elif name == "k_reciprocal":
            dist = build_reranker("k_reciprocal")(qf, gf)
        else:
            weight = float(row["options"][-1])
            dist = build_reranker("pair", model=args.pair, top=PAIR_TOP, weight=weight)(qf, gf, distances=base,
                                                                                      **images)
        order = np.argsort(dist, axis=1, kind="stable")
        out[name] = int((order == row["search_order"]).all(axis=1).sum())
    return out


def validation_markdown(report: dict) -> str:
    carve = report["carve_out"]
    lines = [
        "# Re-ranking on the CUHK03-NP validation carve-out: `reidkit evaluate` vs `reidkit search`", "",
        f"Embedding `{report['embedding']}`, pair network `{report['pair']}`; validation split "
        f"{carve['ids']} identities (query {carve['query']}, gallery {carve['gallery']}), written by `reidkit split` "
        "and checked image by image against the trainer's carve-out (`carve_validation_records`, same ids and seed 0). "
        f"Search: exact, every gallery image returned per query; k_reciprocal re-ranks a pool of the whole gallery, "
        f"pair fusion each query's top-{report['pair_top']}. Rates in percent (market protocol). "
        f"Machine: {report['cpus']} cores shared with other jobs, 1-minute load average "
        f"{report['load_before'][0]:.1f} before and {report['load_after'][0]:.1f} after (timings are noisy).", "",
        "| ranking | evaluate rank-1 | search rank-1 | evaluate mAP | search mAP | evaluate rank-5 | search rank-5 "
        "| queries ranked identically | evaluate s | search s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["rows"].items():
        e, s = row["evaluate"], row["search"]
        lines.append(f"| {name} | {e['rank1']:.1f} | {s['rank1']:.1f} | {e['mAP']:.1f} | {s['mAP']:.1f} | "
                     f"{e['rank5']:.1f} | {s['rank5']:.1f} | {row['queries_with_identical_ranking']} / "
                     f"{report['queries']} | {e['seconds']:.0f} | {s['seconds']:.0f} |")
    lines += ["", f"Index build: {report['index_build_seconds']:.0f} s. evaluate seconds include embedding the query "
              "and gallery; search seconds include embedding the queries. search rank-1 is also computed by "
              "`search_rank_k` (same values: " + ", ".join(
                  f"{row['search']['rank1_search_rank_k']:.1f}" for row in report["rows"].values()) + ")."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8000,19281,100000")
    parser.add_argument("--skip-public", action="store_true")
    parser.add_argument("--skip-extras", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--validation", action="store_true", help="evaluate vs search on the validation split")
    parser.add_argument("--embedding", type=Path, default=REPO / "runs" / "emb_val" / "best.pt")
    parser.add_argument("--pair", type=Path, default=REPO / "runs" / "idla_val" / "best.pt")
    parser.add_argument("--train-dir", type=Path, default=VAL_TRAIN_DIR)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rkval"))
    parser.add_argument("--val-ids", type=int, default=150, help="validation identities (the trainer's val_ids)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.validation:
        validation(args)
        return

    import torch

    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="bench_reranking_") as tmp:
        configs = k_reciprocal_configs(sizes, args.skip_public, Path(tmp))
        configs += [] if args.skip_extras else extra_configs()
        runs = [run_in_subprocess(config) for config in configs]
        agree = agreement(runs)
    for run in runs:
        run.pop("save_to", None)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9},
        "runs": runs,
        "agreement": agree,
        "notes": speedups(runs) + [
            "SSM iterates a dense (n, n) float64 matrix with a kNN-sparse P (about log(tol)/log(alpha) = 131 "
            "steps at alpha = 0.9): O(n^2) memory, O(steps * k * n^2) time, hence the small n.",
            "local = AlignedReID local distance for all Q x G pairs, 8 stripes x 128-d (n = Q + G).",
        ],
    }
    from reidkit.utils import atomic_write_json, atomic_write_text

    atomic_write_json(report, OUT / "reranking.json")
    atomic_write_text(markdown(report), OUT / "reranking.md")
    print(markdown(report))


if __name__ == "__main__":
    main()
