"""`reidkit index build|add|remove|info` and `reidkit search` (and `export`, registered from reidkit.export).

cli.py needs one line: `add_search_parsers(sub)` registers all three commands with their handlers.
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

if TYPE_CHECKING:
    from ..inference.backends import FeatureExtractor
    from ..search.index import GalleryIndex

BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino")  # engine.backends.BACKENDS
METHOD_CHOICES = ("auto", "exact", "ivf", "hnsw")  # search.knn.METHODS
APPROX_CHOICES = ("auto", "none", "ivf", "hnsw")  # "auto", "none" + search.knn.APPROX_KINDS
SPLIT_CHOICES = ("auto", "all", "train", "query", "gallery")  # search.sources.SOURCE_SPLITS
RERANK_CHOICES = ("none", "k_reciprocal", "pair")  # "none" + search.rerank.RERANKERS

# ------------------------------------------------------------------------------------------------ handlers

def _extractor(spec: Path | None, index: GalleryIndex | None, args: argparse.Namespace) -> FeatureExtractor:
    """--model if given, else the model recorded in the index."""
    from ..inference.backends import build_extractor

    if spec is None:
        if index is None:
            raise ReIDError("--model is required to build an index")
        recorded = index.extractor_info
        spec = Path(recorded.get("path", ""))
        if not spec.is_file():
            raise ReIDError(f"index {index.root} was built with model {spec}, which is missing; pass --model")
        backend = args.backend if args.backend != "auto" else recorded.get("backend", "auto")
        return build_extractor(spec, backend=backend, batch_size=args.batch_size, device=args.device)
    return build_extractor(spec, backend=args.backend, batch_size=args.batch_size, device=args.device)


def _print_info(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    ext = info.get("extractor", {})
    ann = info.get("ann") or {}
    print(f"index {info['root']} (version {info['version']}, updated {info['updated']})\n"
          f"  {info['count']} images, {info['dim']}-d features, {info['identities']} known identities, "
          f"{info['cameras']} cameras\n"
          f"  model: {ext.get('name')} [{ext.get('backend')}] {ext.get('path')}\n"
          f"  approximate index: {ann.get('kind', 'none')} {ann if ann else ''}\n"
          f"  unreadable images (not indexed): {len(info['unreadable'])}")
    for row in info["unreadable"][:20]:
        print(f"    {row['path']}: {row['reason']}")


def index_command(args: argparse.Namespace) -> None:
    from ..search.index import GalleryIndex
    from ..search.sources import collect_items

    show = not args.quiet
    if args.index_command == "info":
        _print_info(GalleryIndex.load(args.index, with_features=False).info(), args.json)
        return
    if args.index_command == "remove":
        index = GalleryIndex.load(args.index)
        paths = list(args.paths) + (Path(args.from_file).read_text().split() if args.from_file else [])
        print(f"removed {index.remove(paths)} of {len(paths)} path(s); index now holds {index.count} images")
        return
    items = collect_items(args.images, args.split)
    if args.index_command == "build":
        extractor = _extractor(args.model, None, args)
        index, report = GalleryIndex.build(args.index, extractor, items, approx=args.approx,
                                           overwrite=args.overwrite, show_progress=show, sources=[str(args.images)])
    else:
        index = GalleryIndex.load(args.index)
        report = index.add(_extractor(args.model, index, args), items, allow_other_model=args.force,
                           show_progress=show)
    print(report.summary())
    print(f"index {index.root}: {index.count} images, {index.dim}-d, version {index.manifest['version']}")


def _query_pid(path: Path) -> int | None:
    from ..data.records import Record
    from ..search.sources import collect_items

    item = collect_items(path)[0]
    return item.pid if isinstance(item, Record) else None


def _print_table(query: str, hits: list[dict[str, Any]], rerank: bool) -> None:
    print(f"query {query}")
    extra = f" {'re-ranked':>10s}" if rerank else ""
    print(f"{'rank':>4s} {'score':>7s}{extra} {'pid':>6s} {'camid':>5s}  path")
    for hit in hits:
        pid = "?" if hit["pid"] is None else str(hit["pid"])
        cam = "?" if hit["camid"] is None else str(hit["camid"])
        dist = f" {hit['rerank_distance']:10.4f}" if rerank else ""
        print(f"{hit['rank']:4d} {hit['score']:7.4f}{dist} {pid:>6s} {cam:>5s}  {hit['path']}")


def _rerank_params(args: argparse.Namespace, queries: list[Path]) -> dict[str, Any]:
    if args.rerank != "pair":
        return {}
    if args.pair_checkpoint is None:
        raise ReIDError("--rerank pair needs --pair-checkpoint")
    from ..checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(args.pair_checkpoint)
    return {"model": model.eval(), "query_images": [str(q) for q in queries]}


def search_command(args: argparse.Namespace) -> None:
    from ..search.index import GalleryIndex
    from ..search.picture import ranked_list_picture

    index = GalleryIndex.load(args.index)
    extractor = _extractor(args.model, index, args)
    notes = index.check_extractor(extractor, allow_other_model=True)
    queries = list(args.query)
    features = extractor.embed([str(q) for q in queries])
    rerank = None if args.rerank == "none" else args.rerank
    results = index.search(features, k=args.top, method=args.method, rerank=rerank,
                                          rerank_k=args.rerank_k, **_rerank_params(args, queries))
    hits = [results.hits(i) for i in range(len(queries))]
    picture = None
    if not args.no_picture:
        picture = ranked_list_picture([str(q) for q in queries], hits, args.picture,
                                      query_pids=[_query_pid(q) for q in queries])
    if args.json:
        print(json.dumps({"index": str(index.root), "method": results.method, "rerank": rerank, "notes": notes,
                          "picture": str(picture) if picture else None,
                          "queries": [{"query": str(q), "results": h} for q, h in zip(queries, hits)]}, indent=2))
        return
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"method: {results.method}" + (f", re-ranked by {rerank}" if rerank else ""))
    for query, query_hits in zip(queries, hits):
        _print_table(str(query), query_hits, rerank is not None)
    if picture:
        print(f"ranked list picture: {picture}")


# ------------------------------------------------------------------------------------------------- parsers

def _model_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", type=Path, required=required,
                   help="checkpoint (.pt), ONNX (.onnx) or OpenVINO IR (.xml)"
                        + ("" if required else "; default: the model that built the index"))
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="runtime for the model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="torch device for checkpoints")


def _add_index_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build, extend, shrink or describe a gallery index")
    isub = p.add_subparsers(dest="index_command", required=True)
    for name, text in (("build", "embed images into a new index"), ("add", "embed and append new images")):
        q = isub.add_parser(name, help=text)
        q.add_argument("--index", type=Path, required=True, help="index folder")
        q.add_argument("--images", type=Path, required=True,
                       help="image folder, Market-layout root, manifest (.csv/.json) or one image")
        q.add_argument("--split", choices=SPLIT_CHOICES, default="auto",
                       help="split of a Market root / manifest to index (auto: gallery if present)")
        _model_options(q, required=name == "build")
        q.add_argument("--quiet", action="store_true")
        if name == "build":
            q.add_argument("--approx", choices=APPROX_CHOICES, default="auto",
                           help="faiss index to store (auto: IVF for large galleries)")
            q.add_argument("--overwrite", action="store_true", help="replace an existing index")
        else:
            q.add_argument("--force", action="store_true",
                           help="allow a model other than the index's (e.g. its ONNX export)")
    q = isub.add_parser("remove", help="drop images from an index by path")
    q.add_argument("--index", type=Path, required=True)
    q.add_argument("paths", nargs="*", help="image paths to remove")
    q.add_argument("--from-file", type=Path, help="text file with one path per line")
    q.add_argument("--quiet", action="store_true")
    q = isub.add_parser("info", help="describe an index")
    q.add_argument("--index", type=Path, required=True)
    q.add_argument("--json", action="store_true")
    q.add_argument("--quiet", action="store_true")
    p.set_defaults(func=index_command)


def _add_search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="rank an index's images by similarity to query images")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--query", type=Path, nargs="+", required=True, help="query image(s)")
    p.add_argument("--top", type=int, default=10, help="results per query")
    _model_options(p)
    p.add_argument("--method", choices=METHOD_CHOICES, default="auto",
                   help="exact, faiss ivf/hnsw, or auto (faiss for large indexes)")
    p.add_argument("--rerank", choices=RERANK_CHOICES, default="none",
                   help="re-rank the top --rerank-k candidates")
    p.add_argument("--rerank-k", type=int, default=100)
    p.add_argument("--pair-checkpoint", type=Path, help="pair-network checkpoint for --rerank pair")
    p.add_argument("--picture", type=Path, default=Path("search_results.png"), help="ranked-list picture (PNG)")
    p.add_argument("--no-picture", action="store_true")
    p.add_argument("--json", action="store_true", help="print results as JSON (for scripts)")
    p.set_defaults(func=search_command)


def add_search_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `index`, `search` and `export` on the `reidkit` subparsers."""
    from .export import add_export_parser

    _add_index_parser(sub)
    _add_search_parser(sub)
    add_export_parser(sub)
