"""IVF-PQ index (reidkit.search.ivf) at 10^6 and 10^7 synthetic 256-d features: build time, size on disk, peak RAM,
single-query latency and recall@10 against exact search, for the merged index and for 2 shards searched together.

    nohup nice -n 10 .venv/bin/python bench/scale_index.py --n 1000000 > runs/ivf/bench_1e6.log 2>&1 &

Data: a Gaussian mixture with re-id-like structure, generated chunk by chunk from a seed and never held whole
(10^7 x 256 float32 is 10 GB): `coarse` clusters (think clothing / camera conditions), identities drawn around
them, `views` views per identity around the identity. Queries are fresh views of gallery identities. Chunk c
holds whole identities, its identity centres come from the random stream (seed, c, 0) and its views from
(seed, c, 1), so a query's identity centre is regenerated without the rest of the data.

One generation pass feeds everything: even chunks go to shard 0, odd chunks to shard 1 (two IvfPqBuilders sharing
one trained state, as two machines would), and each chunk's exact inner products with the recall queries update
a running exact top-10 (the independent reference: numpy, blocked). The full index is the on-disk merge of the
two shards. recall@10 = |approximate top-10 ∩ exact top-10| / 10, averaged over the recall queries.

With --keep-vectors float16|float32 the shards also store their raw vectors (vectors.npy, merged in row order) and
each nprobe is measured at every --refine R (0: PQ scores only; R: the top R*10 re-sorted by exact inner product
with the memory-mapped vectors). Disk sizes then include the vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from reidkit.search.ivf import IvfPqBuilder, IvfPqIndex, IvfPqParams, ShardedSearch, merge_ivfpq, train_ivfpq  # noqa: E402,E501
from reidkit.utils import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Mixture:
    """Deterministic clustered features: chunk c = `ids_per_chunk` identities x `views` views."""

    def __init__(self, n: int, dim: int, views: int, coarse: int, chunk: int, seed: int):
        self.n, self.dim, self.views, self.seed = n, dim, views, seed
        self.ids_per_chunk = chunk // views
        self.chunk = self.ids_per_chunk * views
        self.chunks = -(-n // self.chunk)
        rng = np.random.default_rng([seed, 0])
        self.coarse = self._unit(rng.standard_normal((coarse, dim), dtype=np.float32))
        self.identity_spread, self.view_spread = 0.9, 0.55  # relative to unit-norm centres

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def centres(self, c: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, c, 0])
        coarse = rng.integers(0, len(self.coarse), self.ids_per_chunk)
        noise = rng.standard_normal((self.ids_per_chunk, self.dim), dtype=np.float32)
        return self._unit(self.coarse[coarse] + self.identity_spread / np.sqrt(self.dim) * noise)

    def _views(self, centres: np.ndarray, rng: np.random.Generator, repeat: int) -> np.ndarray:
        base = np.repeat(centres, repeat, axis=0)
        noise = rng.standard_normal(base.shape, dtype=np.float32)
        return self._unit(base + self.view_spread / np.sqrt(self.dim) * noise).astype(np.float32)

    def chunk_features(self, c: int) -> np.ndarray:
        """Rows c*chunk ... of the gallery (the last chunk cut at n)."""
        x = self._views(self.centres(c), np.random.default_rng([self.seed, 1, c, 1]), self.views)
        return x[:self.n - c * self.chunk]

    def queries(self, count: int) -> np.ndarray:
        """Fresh views of `count` random gallery identities (whole identities only, below n)."""
        rng = np.random.default_rng([self.seed, 2])
        identities = np.sort(rng.choice(self.n // self.views, count, replace=False))
        out = np.empty((count, self.dim), np.float32)
        for c in np.unique(identities // self.ids_per_chunk):
            sel = np.flatnonzero(identities // self.ids_per_chunk == c)
            centres = self.centres(int(c))[identities[sel] % self.ids_per_chunk]
            out[sel] = self._views(centres, np.random.default_rng([self.seed, 3, int(c)]), 1)
        return out


def update_topk(best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, start: int, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([best_s, scores], axis=1)
    i = np.concatenate([best_i, start + np.broadcast_to(np.arange(scores.shape[1]), scores.shape)], axis=1)
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    return np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def recall_at(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int) -> float:
    hits = [len(np.intersect1d(a[:k], e[:k])) for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits) / k)


def latency_ms(search, queries: np.ndarray) -> dict[str, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None])
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}


def run(args: argparse.Namespace) -> dict:
    faiss.omp_set_num_threads(args.threads)
    mix = Mixture(args.n, args.dim, args.views, args.coarse, args.chunk, args.seed)
    work = Path(args.workdir) / f"n{args.n}{args.tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = IvfPqParams(nlist=args.nlist, m=args.m, nbits=8, opq=args.opq, nprobe=args.nprobe[0])
    k = 10
    queries = mix.queries(args.queries)
    recall_q = queries[:args.exact_queries]
    result = {"n": args.n, "dim": args.dim, "params": params.to_dict(), "factory": params.factory(),
              "train_size": args.train, "chunk": mix.chunk, "load_average_start": load_average(),
              "threads": args.threads, "data": {"coarse": args.coarse, "views": args.views,
                                                "identities": args.n // args.views}}
    print(f"n={args.n}: {mix.chunks} chunks of {mix.chunk}; {params.factory()}", flush=True)

    t0 = time.perf_counter()
    sample_chunks = -(-args.train // mix.chunk)  # chunks are independent random identities: their head is a sample
    sample = np.concatenate([mix.chunk_features(c) for c in range(min(sample_chunks, mix.chunks))])[:args.train]
    trained = train_ivfpq(sample, params, seed=args.seed)
    del sample
    train_s = time.perf_counter() - t0
    print(f"trained in {train_s:.0f} s (load {load_average()})", flush=True)

    t1 = time.perf_counter()
    keep = None if args.keep_vectors == "none" else args.keep_vectors
    refines = args.refine if keep else [0]
    result["keep_vectors"] = keep
    builders = [IvfPqBuilder(work / f"shard{s}", trained, params, keep_vectors=keep) for s in range(2)]
    best_s = np.full((len(recall_q), k), -np.inf, np.float32)
    best_i = np.full((len(recall_q), k), -1, np.int64)
    row_of_gen = [np.empty(0, np.int64), np.empty(0, np.int64)]  # generation index of each shard row
    exact_s = 0.0
    for c in range(mix.chunks):
        x = mix.chunk_features(c)
        gen = c * mix.chunk + np.arange(len(x))
        builders[c % 2].add(x, [f"v{g}" for g in gen.tolist()])
        row_of_gen[c % 2] = np.concatenate([row_of_gen[c % 2], gen])
        te = time.perf_counter()
        best_s, best_i = update_topk(best_s, best_i, recall_q @ x.T, c * mix.chunk, k)
        exact_s += time.perf_counter() - te
        if c % 10 == 0:
            print(f"chunk {c + 1}/{mix.chunks} ({time.perf_counter() - t1:.0f} s, load {load_average()}, "
                  f"peak {peak_rss_mb():.0f} MB)", flush=True)
    shards = [b.finish() for b in builders]
    add_s = time.perf_counter() - t1 - exact_s
    t2 = time.perf_counter()
    index = merge_ivfpq([s.root for s in shards], work / "merged")
    merge_s = time.perf_counter() - t2
    gen_of_row = np.concatenate(row_of_gen)  # merged rows: shard 0's, then shard 1's
    exact_rows = best_i[np.arange(len(best_i))[:, None], np.argsort(-best_s, axis=1)]
    result["build"] = {"train_s": round(train_s, 1), "add_s (2 shards, incl. chunk generation)": round(add_s, 1),
                       "merge_s": round(merge_s, 1), "total_s": round(train_s + add_s + merge_s, 1),
                       "exact_reference_s": round(exact_s, 1), "peak_rss_mb": round(peak_rss_mb())}
    result["disk_bytes"] = {"merged": folder_bytes(work / "merged"),
                            "shards": [folder_bytes(s.root) for s in shards],
                            "per_vector_merged": round(folder_bytes(work / "merged") / args.n, 1),
                            "vectors_merged": index.info()["file_bytes"].get("vectors.npy", 0)}
    print(json.dumps(result["build"]), flush=True)

    sharded = ShardedSearch([IvfPqIndex.load(s.root) for s in shards], threaded=True)
    result["search"] = []
    for nprobe in args.nprobe:
        for refine in refines:
            row = {"nprobe": nprobe, "refine": refine, "candidates": k * max(refine, 1)}
            for name, idx in (("merged", index), ("2 shards", sharded)):
                def search(q, i=idx, p=nprobe, r=refine):
                    return i.search(q, k, nprobe=p, with_ids=False, refine=r)

                search(queries[:20])  # warm the page cache for these cells
                approx = search(recall_q).rows
                row[f"recall@10 {name}"] = round(recall_at(gen_of_row[approx], exact_rows, k), 4)
                row[f"latency {name}"] = latency_ms(search, queries[:args.latency_queries])
            row["load_average"] = load_average()
            print(json.dumps(row), flush=True)
            result["search"].append(row)
    result["peak_rss_mb"] = round(peak_rss_mb())
    result["load_average_end"] = load_average()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--views", type=int, default=5, help="views per identity")
    p.add_argument("--coarse", type=int, default=2000, help="coarse clusters")
    p.add_argument("--chunk", type=int, default=100_000)
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--m", type=int, default=32, help="PQ bytes per vector")
    p.add_argument("--opq", action="store_true")
    p.add_argument("--train", type=int, default=200_000)
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--latency-queries", type=int, default=500)
    p.add_argument("--exact-queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-vectors", choices=("none", "float16", "float32"), default="none",
                   help="store raw vectors for refinement (none: the PQ-only rows of earlier runs)")
    p.add_argument("--refine", type=int, nargs="+", default=[0, 2, 4, 10], help="refine factors measured")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=str(ROOT / "runs" / "ivf" / "bench"))
    p.add_argument("--keep", action="store_true", help="keep the index folders")
    p.add_argument("--tag", default="", help="suffix of this run's key in the JSON (n=N<tag>)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "scale_index.json")
    args = p.parse_args(argv)
    result = run(args)
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    data[f"n={args.n}{args.tag}"] = result
    atomic_write_json(data, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
