"""`reidkit index build|add|remove|info` and `reidkit search` (and `export`, from cli/export.py).

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


def add_search_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `index`, `search` and `export` on the `reidkit` subparsers."""
    from .export import add_export_parser

    _add_index_parser(sub)
    _add_search_parser(sub)
    add_export_parser(sub)
