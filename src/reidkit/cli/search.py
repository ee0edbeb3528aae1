"""`reidkit index build|add|remove|info`, `reidkit search`, `reidkit ivf build|merge|search|info` (the IVF-PQ index
past memory) and `export` (from cli/export.py).

cli/main.py needs one line: `add_search_parsers(sub)` registers all three commands with their handlers.
Only argparse is imported at module level, so building the `reidkit` parser stays fast (no torch/faiss import);
the choices below mirror the library's constants (a test keeps them in sync).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ReIDError
from .options import (
    PAIR_TOP_DEFAULT,
    POOL_DEFAULT,
    add_batch_size,
    add_data,
    add_device,
    add_flip,
    add_model,
    add_option,
    add_quiet,
    add_rerank_options,
    add_top,
    non_negative_int,
    positive_int,
    reranker_from_args,
)

if TYPE_CHECKING:
    from ..inference import FeatureExtractor
    from ..search.index import GalleryIndex

BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino")  # inference.backends.BACKENDS
APPROX_CHOICES = ("auto", "none", "ivf", "hnsw")  # "auto", "none" + search.knn.APPROX_KINDS
SEARCH_APPROX_CHOICES = ("auto", "none", "exact", "ivf", "hnsw")  # search.knn.METHODS + none (= exact)
SPLIT_CHOICES = ("auto", "all", "train", "query", "gallery")  # search.sources.SOURCE_SPLITS

# ------------------------------------------------------------------------------------------------ handlers

def _extractor(spec: Path | None, index: GalleryIndex | None, args: argparse.Namespace) -> FeatureExtractor:
    """--model if given, else the model recorded in the index (see `_recorded_model`)."""
    from ..inference import build_extractor

    if spec is None:
        if index is None:
            raise ReIDError("--model is required to build an index")
        recorded = index.extractor_info
        spec = _recorded_model(index)
        backend = args.backend if args.backend != "auto" else recorded.get("backend", "auto")
        return build_extractor(spec, backend=backend, batch_size=args.batch_size, device=args.device,
                               flip=args.flip or bool(recorded.get("flip")))
    return build_extractor(spec, backend=args.backend, batch_size=args.batch_size, device=args.device, flip=args.flip)


def _recorded_model(index: GalleryIndex) -> Path:
    """The model path written in an index folder, followed only when the file still has the SHA-256 recorded at
    build time, and announced on stderr: an index may come from someone else, so the user sees what is loaded."""
    from ..inference.backends import file_digest, model_files

    recorded = index.extractor_info
    spec = Path(recorded.get("path", ""))
    if not spec.is_file():
        raise ReIDError(f"index {index.root} was built with model {spec}, which is missing; pass --model")
    want = recorded.get("sha256")
    if not want:
        raise ReIDError(f"index {index.root} records model {spec} without its SHA-256, so it is not loaded "
                        "unasked; pass --model to choose the model yourself")
    have = file_digest(model_files(spec))
    if have != want:
        raise ReIDError(f"index {index.root}: model {spec} named in the index no longer matches the SHA-256 "
                        f"recorded at build time ({have} != {want}); not loaded. Pass --model to choose the model "
                        "yourself")
    print(f"loading model {spec} recorded in index {index.root} (SHA-256 {want} as at build time)",
          file=sys.stderr)
    return spec


def _print_info(info: dict[str, Any], as_json: bool) -> None:
    """One write per report (a reader that leaves early, `| head`, is handled once by cli/main.py)."""
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    ext = info.get("extractor", {})
    ann = info.get("ann") or {}
    lines = [f"index {info['root']} (format {info['format']}, version {info['version']}, updated {info['updated']})",
             f"  {info['count']} items, {info['dim']}-d features, {info['identities']} known identities, "
             f"{info['cameras']} cameras, {info.get('tracks', 0)} tracks, "
             f"{info.get('rows_without_path', 0)} items without a file",
             f"  model: {ext.get('name')} [{ext.get('backend')}] {ext.get('path')}"
             + (" (flip)" if ext.get("flip") else ""),
             f"  approximate index: {ann.get('kind', 'none')} {ann if ann else ''}",
             f"  unreadable images (not indexed): {len(info['unreadable'])}"]
    lines += [f"    {row['path']}: {row['reason']}" for row in info["unreadable"][:20]]
    sys.stdout.write("\n".join(lines) + "\n")


def index_command(args: argparse.Namespace) -> None:
    from ..search.index import GalleryIndex
    from ..search.sources import collect_items

    show = not args.quiet
    if args.index_command == "info":
        _print_info(GalleryIndex.load(args.index, with_features=False).info(), args.json)
        return
    if args.index_command == "remove":
        index = GalleryIndex.load(args.index)
        keys = list(args.keys) + (Path(args.from_file).read_text().split() if args.from_file else [])
        print(f"removed {index.remove(keys)} of {len(keys)} id(s)/path(s); index now holds {index.count} items")
        return
    items = collect_items(args.data, args.split)
    if args.index_command == "build":
        extractor = _extractor(args.model, None, args)
        index, report = GalleryIndex.build(args.index, extractor, items, approx=args.approx,
                                           overwrite=args.overwrite, show_progress=show, sources=[str(args.data)])
    else:
        index = GalleryIndex.load(args.index)
        report = index.add(_extractor(args.model, index, args), items, allow_other_model=args.force,
                           show_progress=show)
    print(report.summary())
    print(f"index {index.root}: {index.count} items, {index.dim}-d, version {index.version}")


def _query_pid(path: Path) -> int | None:
    from ..data.records import Record
    from ..search.sources import collect_items

    item = collect_items(path)[0]
    return item.pid if isinstance(item, Record) else None


def _table(query: str, hits: list[dict[str, Any]], rerank: str | None) -> list[str]:
    """One query's ranked list. The first number is what the ranking used: the cosine score, or after re-ranking
    the re-ranked distance (labelled; the cosine follows). `cam` is 1-based as in file names (c1 = camid 0);
    rows without a file show their id."""
    def known(value: Any, shift: int = 0) -> str:
        return "?" if value is None else str(value + shift)

    label = f"{rerank} distance" if rerank else "score"
    width = max(7, len(label))
    head = f"{'rank':>4s} {label:>{width}s}" + (f" {'cosine':>7s}" if rerank else "")
    lines = [f"query {query}", f"{head} {'pid':>6s} {'cam':>4s}  path"]
    for hit in hits:
        shown = hit["rerank_distance"] if rerank else hit["score"]
        cosine = f" {hit['score']:7.4f}" if rerank else ""
        where = hit["path"] if hit.get("path") is not None else f"id {hit['id']}" + "".join(
            f" {key} {hit[key]}" for key in ("camid", "track", "frame") if hit.get(key) is not None)
        lines.append(f"{hit['rank']:4d} {shown:{width}.4f}{cosine} {known(hit['pid']):>6s} "
                     f"{known(hit['camid'], 1):>4s}  {where}")
    return lines


def _candidates_per_query(args: argparse.Namespace, pair_only: bool) -> int:
    """First-stage results per query handed to the re-ranker: at least --top; --rerank-top, else the default of
    pair fusion (its top-k) or of the pool-based re-rankers."""
    return max(args.top, args.rerank_top or (PAIR_TOP_DEFAULT if pair_only else POOL_DEFAULT))


def search_command(args: argparse.Namespace) -> None:
    from ..search.index import GalleryIndex
    from ..search.picture import ranked_list_picture

    index = GalleryIndex.load(args.index)
    extractor = _extractor(args.model, index, args)
    notes = index.check_extractor(extractor, allow_other_model=True)
    queries = list(args.query)
    features = extractor.embed([str(q) for q in queries])
    reranker = reranker_from_args(args)
    rerank = None if reranker is None else reranker.label
    extra = {} if reranker is None else {
        "rerank": reranker, "query_images": [str(q) for q in queries],
        "rerank_k": _candidates_per_query(args, reranker.name == "pair")}
    method = "exact" if args.approx == "none" else args.approx
    results = index.search(features, k=args.top, method=method, **extra)
    hits = [results.hits(i) for i in range(len(queries))]
    picture = None
    if args.picture is not None:  # only when asked: nothing lands in the current folder by default
        picture = ranked_list_picture([str(q) for q in queries], hits, args.picture,
                                      query_pids=[_query_pid(q) for q in queries])
    if args.json:
        sys.stdout.write(json.dumps({
            "index": str(index.root), "version": results.version, "method": results.method, "rerank": rerank,
            "notes": notes, "picture": str(picture) if picture else None,
            "queries": [{"query": str(q), "results": h} for q, h in zip(queries, hits)]}, indent=2) + "\n")
        return
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    lines = [f"method: {results.method}" + (f", re-ranked by {reranker.describe()}" if reranker else "")]
    for query, query_hits in zip(queries, hits):
        lines += _table(str(query), query_hits, rerank)
    if picture:
        lines.append(f"ranked list picture: {picture}")
    sys.stdout.write("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------- parsers

def _model_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    add_model(p, required=required, help=None if required else
              "model file (.pt, .onnx or .xml); default: the model that built the index, "
              "if its SHA-256 still matches the one recorded at build time")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="runtime for the model (auto: by file type; for the index's model, the one it was built with)")
    add_batch_size(p, default=32)
    add_device(p)
    add_flip(p)


def _add_index_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, extend, shrink or describe a gallery index",
                       description="A gallery index: features + metadata (id, path, pid, camid, track, frame, time, "
                                   "source) in a folder; one writer at a time, readers never blocked. From Python, "
                                   "GalleryIndex.add_images adds crops held in memory.")
    isub = p.add_subparsers(dest="index_command", required=True, metavar="{build,add,remove,info}")
    for name, text in (("build", "embed images into a new index"), ("add", "embed and append new images")):
        q = isub.add_parser(name, help=text, description=text)
        q.add_argument("--index", type=Path, required=True, help="index folder")
        add_data(q, help="image folder, Market-layout root, manifest (.csv/.json) or one image")
        q.add_argument("--split", choices=SPLIT_CHOICES, default="auto",
                       help="split of a Market root / manifest to index (auto: gallery if present)")
        _model_options(q, required=name == "build")
        add_quiet(q)
        if name == "build":
            q.add_argument("--approx", choices=APPROX_CHOICES, default="auto",
                           help="faiss index to store (auto: IVF for large galleries)")
            q.add_argument("--overwrite", action="store_true", help="replace an existing index")
        else:
            q.add_argument("--force", action="store_true",
                           help="allow a model other than the index's (e.g. its ONNX export)")
    q = isub.add_parser("remove", help="drop items from an index by id or path")
    q.add_argument("--index", type=Path, required=True, help="index folder")
    q.add_argument("keys", nargs="*", metavar="ID_OR_PATH", help="item ids or image paths to remove")
    q.add_argument("--from-file", type=Path, help="text file with one id or path per line")
    add_quiet(q)
    q = isub.add_parser("info", help="describe an index")
    q.add_argument("--index", type=Path, required=True, help="index folder")
    q.add_argument("--json", action="store_true", help="print the description as JSON")
    add_quiet(q)
    p.set_defaults(func=index_command)


def _add_search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="rank an index's images by similarity to query images")
    p.add_argument("--index", type=Path, required=True, help="index folder")
    p.add_argument("--query", type=Path, nargs="+", required=True, help="query image(s)")
    add_top(p, 10, "results per query")
    _model_options(p)
    add_quiet(p)
    add_option(p, "--approx", aliases=("--method",), choices=SEARCH_APPROX_CHOICES, default="auto",
               help="auto: the index's stored faiss index for large galleries, else exact; none (= exact), ivf or "
                    "hnsw (built in memory if the index does not store that kind)")
    add_rerank_options(p)
    p.add_argument("--picture", type=Path, metavar="FILE", help="also draw the ranked lists into this PNG")
    p.add_argument("--no-picture", action="store_true", help=argparse.SUPPRESS)  # the old opt-out; now the default
    p.add_argument("--json", action="store_true", help="print results as JSON (for scripts)")
    p.set_defaults(func=search_command)


# ------------------------------------------------------------------------------------------- ivf (past memory)

def _feature_chunks(files: list[Path], split: str):
    """(features, ids) per file: a .npz from `extract` / `merge-features` (its {split}_features, ids = the image
    paths) or a plain .npy (N, D) array, memory-mapped (ids = file:row)."""
    import numpy as np

    for path in files:
        if path.suffix == ".npy":
            try:
                x = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise ReIDError(f"features {path}: cannot be read ({exc})") from None
            for start in range(0, len(x), 100_000):
                part = np.asarray(x[start:start + 100_000])
                yield part, [f"{path.name}:{start + i}" for i in range(len(part))]
            continue
        try:
            with np.load(path) as npz:
                features, ids = npz[f"{split}_features"], npz[f"{split[0]}_paths"]
        except KeyError:
            raise ReIDError(f"features {path}: no {split}_features / {split[0]}_paths (choose --split)") from None
        except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError: damaged or not an .npz
            raise ReIDError(f"features {path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
        yield features, ids.tolist()


def _ivf_params(args: argparse.Namespace):
    from ..search.ivf import IvfPqParams

    return IvfPqParams(nlist=args.nlist, m=args.m, nbits=args.nbits, opq=args.opq, nprobe=args.nprobe)


def ivf_command(args: argparse.Namespace) -> None:
    from ..search import ivf

    if args.ivf_command == "build":
        index = ivf.build_ivfpq(args.index, _feature_chunks(args.features, args.split), _ivf_params(args),
                                train_size=args.train_size, trained_from=args.trained_from,
                                overwrite=args.overwrite, show_progress=not args.quiet,
                                keep_vectors=None if args.keep_vectors == "none" else args.keep_vectors,
                                refine=args.refine)
        info = index.info()
        kept = f", {info['vectors']} vectors kept (refine {index.refine})" if info.get("vectors") else ""
        print(f"index {index.root}: {index.count} vectors, {index.dim}-d, {info['factory']}{kept}, "
              f"{info['bytes_on_disk'] / 1e6:.1f} MB on disk")
    elif args.ivf_command == "merge":
        index = ivf.merge_ivfpq(args.shards, args.index, overwrite=args.overwrite)
        print(f"merged {len(args.shards)} shard(s) into {index.root}: {index.count} vectors")
    elif args.ivf_command == "info":
        _print_json_or_lines(ivf.IvfPqIndex.load(args.index).info(), args.json)
    else:
        import numpy as np

        index = ivf.IvfPqIndex.load(args.index)
        chunks = list(_feature_chunks(args.features, args.split))
        queries = np.concatenate([c[0] for c in chunks])
        names = [q for c in chunks for q in c[1]]
        res = index.search(queries, k=args.top, nprobe=args.nprobe, refine=args.refine)
        out = [{"query": str(name), "results": [{"rank": r + 1, "score": round(float(s), 6), "row": int(row),
                                                  "id": item} for r, (s, row, item) in
                                                 enumerate(zip(res.scores[q], res.rows[q], res.ids[q])) if row >= 0]}
               for q, name in enumerate(names)]
        if args.json:
            sys.stdout.write(json.dumps({"index": str(index.root), "queries": out}, indent=2) + "\n")
            return
        lines = []
        for query in out:
            lines.append(f"query {query['query']}")
            lines += [f"{h['rank']:4d} {h['score']:8.4f}  {h['id']}" for h in query["results"]]
        sys.stdout.write("\n".join(lines) + "\n")


def _print_json_or_lines(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    sys.stdout.write("\n".join(f"{k}: {v}" for k, v in info.items() if k != "files") + "\n")


def _add_ivf_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ivf", help="an IVF-PQ index past memory: build from features, merge shards, search",
                       description="faiss IVF-PQ (optionally OPQ) with memory-mapped on-disk inverted lists, built "
                                   "from feature files chunk by chunk (e.g. the parts of `extract --shard`); shards "
                                   "built with --trained-from one index merge into one. See docs/scale.md.")
    isub = p.add_subparsers(dest="ivf_command", required=True, metavar="{build,merge,search,info}")
    q = isub.add_parser("build", help="build an index folder from feature files")
    q.add_argument("--index", type=Path, required=True, help="index folder to create")
    q.add_argument("--features", type=Path, nargs="+", required=True, metavar="FILE",
                   help=".npz from extract / merge-features (ids: image paths) or .npy (N, D) arrays")
    q.add_argument("--split", choices=("gallery", "query", "train"), default="gallery", help="split of a .npz")
    q.add_argument("--nlist", type=positive_int, default=4096, help="coarse cells (about 4 sqrt(N))")
    q.add_argument("--m", type=positive_int, default=32, help="PQ sub-quantizers = code bytes at 8 bits")
    q.add_argument("--nbits", type=positive_int, default=8, help="bits per sub-quantizer code")
    q.add_argument("--opq", action="store_true", help="learn an OPQ rotation before PQ (better recall, slower)")
    q.add_argument("--nprobe", type=positive_int, default=32, help="cells visited per query, stored as the default")
    q.add_argument("--train-size", type=positive_int,
                   help="train on the first N vectors (default: 64 per cell; the files should be in random order)")
    q.add_argument("--trained-from", type=Path, metavar="INDEX",
                   help="reuse this index's trained quantizers (build shards of one index with the same one)")
    q.add_argument("--keep-vectors", choices=("float16", "float32", "none"), default="float16",
                   help="also store the raw vectors (vectors.npy, 2 or 4 bytes per component) for exact re-ranking "
                        "of the PQ candidates at search: recall@10 0.6 -> ~1 for 8-16x the disk of the codes")
    q.add_argument("--refine", type=non_negative_int, default=20,
                   help="default refine factor stored in the index: re-rank refine * top PQ candidates (0: off)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing index")
    add_quiet(q)
    q = isub.add_parser("merge", help="merge shards (built with one --trained-from) into one index")
    q.add_argument("shards", type=Path, nargs="+", metavar="SHARD", help="shard index folders, in row order")
    q.add_argument("--index", type=Path, required=True, help="merged index folder to create")
    q.add_argument("--overwrite", action="store_true", help="replace an existing index")
    q = isub.add_parser("search", help="top-k of query features")
    q.add_argument("--index", type=Path, required=True, help="index folder")
    q.add_argument("--features", type=Path, nargs="+", required=True, metavar="FILE",
                   help="query features: .npz (see --split) or .npy")
    q.add_argument("--split", choices=("gallery", "query", "train"), default="query", help="split of a .npz")
    add_top(q, 10, "results per query")
    q.add_argument("--nprobe", type=positive_int, help="cells visited per query (default: the index's)")
    q.add_argument("--refine", type=non_negative_int, metavar="R",
                   help="re-rank the top R * top PQ candidates by exact inner product with the stored vectors; "
                        "0: PQ scores only (default: the index's)")
    q.add_argument("--json", action="store_true", help="print results as JSON (for scripts)")
    q = isub.add_parser("info", help="describe an index")
    q.add_argument("--index", type=Path, required=True, help="index folder")
    q.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=ivf_command)


def add_search_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `index`, `search`, `ivf` and `export` on the `reidkit` subparsers."""
    from .export import add_export_parser

    _add_index_parser(sub)
    _add_search_parser(sub)
    _add_ivf_parser(sub)
    add_export_parser(sub)
