"""Search benchmarks: exact vs faiss IVF-Flat / HNSW on synthetic clustered 256-d vectors (latency, build time,
recall@10 against exact search) at 1e4, 1e5, 1e6 gallery vectors, and an end-to-end check on real data:
index the CUHK03-NP validation gallery (150 ids carved from bounding_box_train, seed 0) with an Intel OSNet-AIN
model, search with the validation queries and compare rank-1 with `evaluate_rank` on the same features; and the
cost of index updates (a commit of 10 new items, a reader's load and refresh) at 1e4 and 1e5 items.

Run: .venv/bin/python bench/bench_search.py [--sizes 10000,100000,1000000] [--queries 200] [--skip-e2e]
     .venv/bin/python bench/bench_search.py --only-updates [--update-sizes 10000,100000]
  -> docs/benchmarks/search.json and docs/benchmarks/search.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "benchmarks"
SHARED = REPO.parent / "shared"
CUHK03_TRAIN = SHARED / "datasets" / "cuhk03np-detected" / "bounding_box_train"
INTEL = {name: SHARED / "models" / "openvino" / f"person-reidentification-retail-{name}" /
         f"person-reidentification-retail-{name}.xml" for name in ("0288", "0277")}
INTEL["0267"] = SHARED / "models" / "onnx" / "person-reidentification-retail-0267.onnx"  # onnxruntime, RGB
DIM = 256
IVF_NPROBES = (16, 32, 64, 128)
HNSW_EFS = (64, 128, 256, 512)


def clustered_vectors(n: int, num_queries: int, dim: int = DIM, per_cluster: int = 10, seed: int = 0):
    """Gallery + queries around n/per_cluster random centres (like identities), L2-normalised, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_cluster), dim), dtype=np.float32)
    out = np.empty((n + num_queries, dim), dtype=np.float32)
    labels = rng.integers(0, len(centres), size=n + num_queries)
    for start in range(0, len(out), 50000):  # blocks: no big float64 temporaries
        stop = min(start + 50000, len(out))
        out[start:stop] = centres[labels[start:stop]] + 0.6 * rng.standard_normal((stop - start, dim),
                                                                                  dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out[:n], out[n:]


def load() -> float:
    return round(os.getloadavg()[0], 1)


def timed(fn, repeat: int = 3):
    """(best seconds, last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = (approx[:, :, None] == exact[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / exact.shape[1])


def sweep_point(index, params, queries: np.ndarray, exact: np.ndarray) -> dict:
    from reidkit.search.knn import ann_search

    batch_s, (_, got) = timed(lambda: ann_search(index, params, queries, 10), repeat=2)
    single_s, _ = timed(lambda: [ann_search(index, params, q[None], 10) for q in queries[:50]], repeat=1)
    return {"ms_per_query_single": single_s / 50 * 1e3, "ms_per_query_batched": batch_s / len(queries) * 1e3,
            "recall@10": recall_at(got, exact)}


def bench_size(n: int, num_queries: int, methods: set[str]) -> list[dict]:
    from reidkit.search.knn import AnnParams, build_ann, default_params, exact_search

    gallery, queries = clustered_vectors(n, num_queries)
    rows = []
    before = load()
    batch_s, (_, exact) = timed(lambda: exact_search(queries, gallery, 10), repeat=2)
    if "exact" in methods:
        single_s, _ = timed(lambda: [exact_search(q[None], gallery, 10) for q in queries[:20]], repeat=1)
        rows.append({"n": n, "method": "exact", "param": "-", "build_s": 0.0,
                     "ms_per_query_single": single_s / 20 * 1e3, "ms_per_query_batched": batch_s / num_queries * 1e3,
                     "recall@10": 1.0, "default": True, "load": f"{before}/{load()}"})
        print(rows[-1], flush=True)
    for kind, sweep, key in (("ivf", IVF_NPROBES, "nprobe"), ("hnsw", HNSW_EFS, "ef_search")):
        if kind not in methods:
            continue
        params = default_params(kind, n)
        before = load()
        t0 = time.perf_counter()
        index = build_ann(gallery, params)
        build_s = time.perf_counter() - t0
        for value in sorted(set(sweep) | {getattr(params, key)}):
            row = sweep_point(index, AnnParams(**{**params.to_dict(), key: value}), queries, exact)
            shape = f" nlist={params.nlist}" if kind == "ivf" else f" M={params.hnsw_m}"
            rows.append({"n": n, "method": kind, "param": f"{key}={value}{shape}", "build_s": build_s, **row,
                         "default": value == getattr(params, key), "load": f"{before}/{load()}"})
            print(rows[-1], flush=True)
        del index
    return rows


def end_to_end(model: str) -> dict:
    """Index the CUHK03-NP validation gallery, search its queries; compare with evaluate_rank."""
    from reidkit.data import carve_validation_records, load_image_folder
    from reidkit.inference import build_extractor
    from reidkit.metrics import evaluate_rank_full
    from reidkit.search import GalleryIndex, search_rank_k

    val = carve_validation_records(load_image_folder(CUHK03_TRAIN).train, 150, seed=0)
    ext = build_extractor(INTEL[model], batch_size=32)
    before = load()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index, report = GalleryIndex.build(Path(tmp) / "idx", ext, val.gallery)
        index_s = time.perf_counter() - t0
        index = GalleryIndex.load(Path(tmp) / "idx")
    q_feats = ext.embed([r.path for r in val.query])
    q_pids = np.array([r.pid for r in val.query])
    q_cams = np.array([r.camid for r in val.query])
    t0 = time.perf_counter()
    results = index.search(q_feats, k=50, method="exact")
    search_s = time.perf_counter() - t0
    from_search = search_rank_k(results, q_pids, q_cams, ranks=(1, 5, 10))
    reranked = search_rank_k(index.search(q_feats, k=50, method="exact", rerank="k_reciprocal", rerank_k=200),
                             q_pids, q_cams, ranks=(1, 5, 10))
    g_pids, g_cams = index.metadata.pids, index.metadata.camids
    full = evaluate_rank_full(1.0 - q_feats @ index.features.T, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    return {"model": f"person-reidentification-retail-{model}", "backend": ext.name,
            "queries": len(val.query), "gallery": index.count, "identities": len({r.pid for r in val.query}),
            "unreadable": len(report.unreadable), "index_s": index_s, "index_images_per_s": index.count / index_s,
            "search_ms_per_query": search_s / len(val.query) * 1e3,
            "search_rank1": from_search["rank1"], "search_rank5": from_search["rank5"],
            "search_rank10": from_search["rank10"], "evaluate_rank1": float(full.cmc[0]),
            "evaluate_rank5": float(full.cmc[4]), "evaluate_rank10": float(full.cmc[9]), "evaluate_mAP": full.mAP,
            "rerank_rank1": reranked["rank1"],
            # same count of rank-1 hits (cmc is float32, so compare counts, not fractions)
            "equal": round(from_search["rank1"] * full.num_valid_queries) == round(float(full.cmc[0]) *
                                                                                   full.num_valid_queries),
            "load": f"{before}/{load()}"}


def index_updates(n: int) -> dict:
    """A writer's commit of 10 new items (embeddings given: the index's cost, not the model's) and a reader's
    load / refresh / one exact search, on an index of n 256-d items with full metadata."""
    from reidkit.search import GalleryIndex

    gallery, extra = clustered_vectors(n, 10 * 5, seed=1)
    meta = [{"camid": i % 6, "track": i // 20, "frame": i, "time": i / 25.0, "source": "bench"} for i in range(n)]
    before = load()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "idx"
        index = GalleryIndex.build(root, _FixedDim(), [], approx="none")[0]
        index.add_features(gallery, meta)
        batches = iter(np.split(extra, 5))
        commit_s, _ = timed(lambda: index.add_features(next(batches)), repeat=5)
        load_s, reader = timed(lambda: GalleryIndex.load(root))
        refresh_s, _ = timed(lambda: reader.refresh(), repeat=20)
        search_s, _ = timed(lambda: reader.search(extra[:1], k=10, method="exact"), repeat=5)
        size_mb = sum(f.stat().st_size for f in root.iterdir()) / 1e6
    return {"n": n, "commit_10_s": commit_s, "load_s": load_s, "refresh_unchanged_us": refresh_s * 1e6,
            "search_ms": search_s * 1e3, "folder_mb": size_mb, "load": f"{before}/{load()}"}


class _FixedDim:
    """Only what GalleryIndex.build records of a model, for an index filled with add_features."""

    backend, name, input_size, resize, model_path, dim = "none", "bench", (256, 128), "stretch", "", DIM


def write_markdown(data: dict) -> None:
    lines = ["# Search benchmarks", "",
             f"Machine: {data['machine']}. **Shared machine**: other engineers' jobs were running during these runs "
             "(1-min load average before/after each row in the table; 2 = both cores busy), so timings are noisy "
             "and pessimistic.", "",
             "## Exact vs approximate search (synthetic)", "",
             f"{DIM}-d L2-normalised vectors around n/10 random centres (noise 0.6 per coordinate), "
             f"{data['num_queries']} queries from the same distribution. recall@10 = overlap of the top-10 with "
             "exact search's top-10. `single` = one query per call (interactive search), `batched` = all queries "
             "in one call. Bold rows are the defaults `reidkit` uses.", "",
             "| n | method | parameters | build s | ms/query single | ms/query batched | recall@10 | load |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in data["synthetic"]:
        b = "**" if r["default"] and r["method"] != "exact" else ""
        lines.append(f"| {r['n']:,} | {b}{r['method']}{b} | {r['param']} | {r['build_s']:.1f} | "
                     f"{r['ms_per_query_single']:.2f} | {r['ms_per_query_batched']:.3f} | {r['recall@10']:.3f} | "
                     f"{r['load']} |")
    lines += ["", "## End to end: CUHK03-NP validation split", "",
              "150 identities carved from `bounding_box_train` (`carve_validation_records(records, 150, seed=0)`: "
              "one query per camera per identity, the rest gallery). The gallery is indexed with "
              "`GalleryIndex.build`, the index is reloaded from disk and searched with the queries (exact, top-50); "
              "rank-k from the search results (same-camera same-identity results skipped) is compared with "
              "`evaluate_rank` on the query x gallery cosine distance matrix. Intel models used as-is (trained on "
              "other datasets; these crops are 64x128, upscaled): 0277/0288 on OpenVINO f32 with BGR 0..255, 0267 "
              "on onnxruntime with RGB input (see backends.md for why).", "",
              "| model | backend | queries | gallery | index img/s | search ms/query | search rank-1 | "
              "evaluate rank-1 | equal | rank-5 | rank-10 | mAP | k-reciprocal rank-1 | load |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for e in data.get("end_to_end", []):
        backend = e["backend"].split(":")[0]
        lines.append(f"| {e['model']} | {backend} | {e['queries']} | {e['gallery']} | {e['index_images_per_s']:.1f} | "
                     f"{e['search_ms_per_query']:.3f} | {e['search_rank1']:.4f} | {e['evaluate_rank1']:.4f} | "
                     f"{'yes' if e['equal'] else 'NO'} | {e['search_rank5']:.4f} | {e['search_rank10']:.4f} | "
                     f"{e['evaluate_mAP']:.4f} | {e['rerank_rank1']:.4f} | {e['load']} |")
    lines += ["", "Notes:", "",
              "- Exact search: one query against 1e6 vectors reads the whole 1 GB matrix (memory bound); batching "
              "queries amortises that read. `auto` switches to the stored IVF index from 200,000 vectors "
              "(`knn.APPROX_THRESHOLD`), where a single exact query costs ~70 ms here (interpolating 33 ms at 1e5 "
              "and 366 ms at 1e6).",
              "- The synthetic data is a hard case for IVF: ~10-vector clusters with no coarse structure, so a "
              "query's true neighbours spread over many cells and recall at a fixed nprobe/nlist falls with n. "
              "Real embeddings usually also have coarser structure (e.g. clothing colour) that IVF cells capture. "
              "The sweep shows the speed/recall trade-off; "
              "`AnnParams` in index.json can be edited to change nprobe / ef_search.",
              "- HNSW with the build-time-friendly defaults (M = 16, efConstruction = 40) is good at 1e4-1e5 but poor "
              "at 1e6 on this data (recall@10 <= 0.67 even at ef_search = 512) and took 16 min to build on the "
              "loaded machine; use IVF (the automatic choice) at that scale or build HNSW with larger M / "
              "efConstruction.",
              "- Rows were measured in two runs (the exact rows again after switching top-k to torch.topk); the load "
              "column is per row.",
              "- End to end: `equal` compares the number of rank-1 hits (search results vs evaluate_rank on the same "
              "features). mAP is evaluate_rank's. 0277 > 0288 as in ../shared/README's CUHK03-NP test-split figures "
              "(rank-1 38.2 / 16.5 with a 5,332-image gallery; this validation gallery is 1,150 images), and 0267 "
              "(OSNet-AIN x0.5) falls between them."]
    if data.get("updates"):
        lines += ["", "## Index updates (one writer, readers alongside)", "",
                  f"An index of n {DIM}-d items with full metadata (camid, track, frame, time, source), no "
                  "approximate index. `commit` = `add_features` of 10 items (lock, re-read check, write version "
                  "N+1 in full, replace index.json): every commit rewrites the features and the metadata, so it "
                  "grows with n -- batch additions. `load` = a reader opening the committed version; `refresh` = "
                  "a long-lived reader asking for news when there is none (one stat of index.json).", "",
                  "| n | commit of 10 items s | load s | refresh (unchanged) us | exact search ms/query | folder MB "
                  "| load |", "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        lines += [f"| {u['n']:,} | {u['commit_10_s']:.3f} | {u['load_s']:.3f} | {u['refresh_unchanged_us']:.0f} | "
                  f"{u['search_ms']:.2f} | {u['folder_mb']:.1f} | {u['load']} |" for u in data["updates"]]
    (OUT / "search.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--e2e-models", default="0288,0277,0267")
    parser.add_argument("--methods", default="exact,ivf,hnsw",
                        help="re-run only these; rows of the others are kept from the existing search.json")
    parser.add_argument("--markdown-only", action="store_true", help="re-render search.md from search.json")
    parser.add_argument("--update-sizes", default="10000,100000", help="index sizes for the update costs")
    parser.add_argument("--only-updates", action="store_true",
                        help="measure only the update costs; keep every other row of the existing search.json")
    args = parser.parse_args()
    if args.markdown_only:
        write_markdown(json.loads((OUT / "search.json").read_text()))
        return
    if args.only_updates:
        data = json.loads((OUT / "search.json").read_text())
        data["updates"] = [index_updates(int(n)) for n in args.update_sizes.split(",") if n]
        print(data["updates"], flush=True)
        (OUT / "search.json").write_text(json.dumps(data, indent=2) + "\n")
        write_markdown(data)
        return
    methods = set(args.methods.split(","))
    import torch

    data = {"machine": f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}, "
                       f"faiss {__import__('faiss').__version__}",
            "num_queries": args.queries, "synthetic": [], "end_to_end": []}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    previous = json.loads((OUT / "search.json").read_text()) if (OUT / "search.json").is_file() else {}
    kept = [r for r in previous.get("synthetic", []) if r["method"] not in methods or r["n"] not in sizes]
    for n in sizes:
        data["synthetic"] += bench_size(n, args.queries, methods)
    data["synthetic"] = sorted(kept + data["synthetic"], key=lambda r: (r["n"], ["exact", "ivf", "hnsw"].index(
        r["method"])))
    data["updates"] = [index_updates(int(n)) for n in args.update_sizes.split(",") if n]
    if args.skip_e2e:
        data["end_to_end"] = previous.get("end_to_end", [])
    elif CUHK03_TRAIN.is_dir():
        for model in args.e2e_models.split(","):
            data["end_to_end"].append(end_to_end(model))
            print(data["end_to_end"][-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "search.json").write_text(json.dumps(data, indent=2) + "\n")
    write_markdown(data)
    print(f"wrote {OUT / 'search.json'} and {OUT / 'search.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
