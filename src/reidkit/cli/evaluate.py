"""`reidkit evaluate`: rank-1/5/10, mAP and mINP (percent) of a distance matrix, features, a model or a classic
method (`--classic lomo-xqda --train DIR`), with any re-ranker of reidkit.rerank (the same options as
`reidkit search`)."""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..distance import compute_distance_matrix
from ..errors import ConfigError, DataError, ReIDError
from ..metrics.alignment import local_distance
from ..metrics.plots import plot_cmc, ranked_list_grid
from ..metrics.rank import MetricInputError, RankResult, evaluate_rank_full, summarize
from ..utils import atomic_write_json
from .options import (
    add_batch_size,
    add_device,
    add_flip,
    add_model,
    add_quiet,
    add_rerank_options,
    add_top,
    reranker_from_args,
)

ID_KEYS = ("q_pids", "g_pids", "q_camids", "g_camids")
DISTMAT_KEYS = ("distmat", *ID_KEYS)
FEATURE_KEYS = ("query_features", "gallery_features", *ID_KEYS)
PATH_KEYS = ("q_paths", "g_paths")
LOCAL_KEYS = ("query_local", "gallery_local")  # AlignedReID local features (N, stripes, dim), optional
METRIC_CHOICES = ("sqeuclidean", "euclidean", "cosine")  # reidkit.distance.METRICS; "l2" = euclidean (hidden)
CLASSIC_CHOICES = ("lomo-xqda",)  # reidkit.classic.CLASSIC_METHODS (tests/test_xqda.py checks they agree)


def evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    """Load a distance matrix, features or model; re-rank; print R1/R5/R10/mAP/mINP; write JSON + plots to --out."""
    _check_local_weight(args)
    if args.metric == "l2":  # the old name of the true L2 distance
        args.metric = "euclidean"
    if args.tracklets:
        return tracklet_evaluate_command(args)
    _refuse_tracklet_options(args)
    reranker = reranker_from_args(args, show_progress=not args.quiet)
    source, inputs = _load_inputs(args)
    classic = inputs.pop("classic", None)
    if reranker is not None:
        inputs["distmat"] = _reranked(reranker, inputs, source)
        source += f", re-ranked by {reranker.describe()}"
    try:
        result = evaluate_rank_full(inputs["distmat"], *(inputs[k] for k in ID_KEYS), max_rank=args.top,
                                    use_metric_cuhk03=args.protocol == "cuhk03", ap=args.ap)
    except MetricInputError as exc:
        raise DataError(f"{source}: {exc}") from exc
    report = _report(result, source, args, reranker)
    if classic is not None:
        report["classic"] = classic
    print(_table(result, report))
    if getattr(args, "out", None) is not None:
        _write_outputs(Path(args.out), report, result, inputs)
    return report


TRACKLET_OPTIONS = ("pooling", "set_distance", "tracklet_protocol", "split_seed")


def _refuse_tracklet_options(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in TRACKLET_OPTIONS if getattr(args, name, None) is not None]
    if given:
        raise ReIDError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to tracklet evaluation: add "
                        "--tracklets")


def tracklet_evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    """`evaluate --tracklets`: query tracklets against gallery tracklets (MARS protocol), same report keys."""
    from ..data.tracklets import load_tracklets
    from ..training.tasks.tracklet import check_evaluation_options, evaluate_tracklets, frame_embedder

    refused = [name for name, given in (("--distmat", args.distmat), ("--features", args.features),
                                        ("--rerank", args.rerank not in (None, "none")),
                                        ("--local-weight", args.local_weight > 0),
                                        ("--classic", getattr(args, "classic", None)),
                                        ("--protocol cuhk03", args.protocol == "cuhk03"),
                                        ("--ap market-official", args.ap != "torchreid")) if given]
    if refused:
        raise ReIDError(f"--tracklets: {', '.join(refused)} do(es) not apply; tracklet evaluation embeds the frames "
                        "with --model and ranks with the MARS protocol")
    if args.model is None or args.data is None:
        raise ReIDError("--tracklets needs --model (the frame embedding model) and --data (a tracklet layout: MARS, "
                        "iLIDS-VID, PRID-2011, `reidkit track` run, manifest or Market layout)")
    pooling, set_distance = args.pooling or "avg", args.set_distance or "mean"
    check_evaluation_options(pooling, set_distance, True, str(args.model))  # before any work; the head is checked
    dataset = load_tracklets(args.data, args.tracklet_protocol or "split", args.split_seed or 0)
    if not args.quiet:
        print(dataset.summary())
    embedder = frame_embedder(args.model, device=args.device, flip=args.flip, batch_size=args.batch_size)
    try:
        result, arrays = evaluate_tracklets(embedder, dataset, pooling, set_distance, args.metric, args.top,
                                            show_progress=not args.quiet)
    except MetricInputError as exc:
        raise DataError(f"{args.data}: {exc}") from exc
    source = f"{args.model} on tracklets of {args.data}" + (" (flip)" if args.flip else "")
    report = _report(result, source, args, None)
    frames = sorted({len(t) for t in dataset.query + dataset.gallery})
    report.update(tracklets=True, pooling=pooling, set_distance=set_distance, tracklet_protocol=dataset.protocol,
                  num_gallery=len(dataset.gallery), min_frames=frames[0], max_frames=frames[-1],
                  notes=list(dataset.notes))
    print(_table(result, report))
    if getattr(args, "out", None) is not None:
        _write_outputs(Path(args.out), report, result, arrays)
    return report


def _reranked(reranker: Any, inputs: dict[str, np.ndarray], source: str) -> np.ndarray:
    """The re-ranked distances; a re-ranker whose inputs the source lacks is refused, never skipped."""
    if reranker.needs_features and "query_features" not in inputs:
        raise ConfigError(f"--rerank {reranker.label}: needs query/gallery features, but {source} is a distance "
                          "matrix (use --features or --model; a distance matrix allows only --rerank pair)")
    missing = [k for k in PATH_KEYS if k not in inputs]
    if reranker.needs_images and missing:
        raise ConfigError(f"--rerank {reranker.label}: the pair network needs the images, but {source} has no "
                          f"{', '.join(missing)} (use --model, or --features written by `reidkit extract`)")
    try:
        return reranker(inputs.get("query_features"), inputs.get("gallery_features"), distances=inputs["distmat"],
                        query_images=inputs.get("q_paths"), gallery_images=inputs.get("g_paths"))
    except MetricInputError as exc:
        raise DataError(f"{source}: {exc}") from exc


def _report(result: RankResult, source: str, args: argparse.Namespace, reranker: Any) -> dict[str, Any]:
    """Rates in percent (rank-k, mAP, mINP and the CMC curve alike), with the re-ranker and its parameters."""
    report = summarize(result.cmc, result.mAP, result.mINP, num_valid_queries=result.num_valid_queries,
                       num_skipped_queries=result.num_skipped_queries)
    report.update(units="percent", num_queries=result.num_queries,
                  skipped_queries=result.skipped_queries.tolist(), protocol=result.protocol, ap=result.ap,
                  top=int(result.cmc.size), source=source, metric=None if args.distmat else args.metric,
                  flip=bool(args.flip), local_weight=args.local_weight,
                  rerank=None if reranker is None else reranker.label,
                  rerank_params=None if reranker is None else reranker.params(),
                  cmc=[round(100.0 * float(v), 5) for v in result.cmc])
    return report


def _check_local_weight(args: argparse.Namespace) -> None:
    weight = args.local_weight
    if weight < 0:
        raise ReIDError(f"--local-weight {weight}: must be >= 0 (0 = global distance only)")
    if weight == 0:
        return
    if args.distmat is not None:
        raise ReIDError("--local-weight needs --features or --model: a distance matrix has no local features")
    if args.rerank not in ("none", "pair"):
        raise ReIDError(f"--local-weight cannot be combined with --rerank {args.rerank}: re-ranking works on the "
                        "global features only")


def _table(result: RankResult, report: dict[str, Any]) -> str:
    header = (f"{result.protocol} protocol, {result.ap} AP: {result.num_queries} queries, "
              f"{result.num_valid_queries} evaluated, {result.num_skipped_queries} skipped "
              "(no valid match in the gallery)")
    names = ("R1 %", "R5 %", "R10 %", "mAP %", "mINP %")
    values = (report["rank1"], report["rank5"], report["rank10"], report["mAP"], report["mINP"])
    return "\n".join([header, "".join(f"{n:>8s}" for n in names), "".join(f"{v:8.2f}" for v in values)])


def output_paths(out: Path) -> tuple[Path, Path]:
    """The CMC and ranked-list pictures beside the JSON, named after it: results.json -> results_cmc.png,
    results_ranked.png (two evaluations in one folder do not overwrite each other's pictures)."""
    return out.with_name(f"{out.stem}_cmc.png"), out.with_name(f"{out.stem}_ranked.png")


def _write_outputs(out: Path, report: dict[str, Any], result: RankResult, inputs: dict[str, np.ndarray]) -> None:
    atomic_write_json(report, out)
    cmc_path, grid_path = output_paths(out)
    plot_cmc(result.cmc, cmc_path, title=f"CMC ({result.protocol} protocol)")
    written = [out, cmc_path]
    if all(k in inputs for k in PATH_KEYS):
        try:
            ranked_list_grid([str(p) for p in inputs["q_paths"]], [str(p) for p in inputs["g_paths"]],
                             inputs["distmat"], *(inputs[k] for k in ID_KEYS), grid_path)
            written.append(grid_path)
        except ReIDError as exc:  # images moved or on another machine: the metrics are still valid
            print(f"note: no ranked-list grid: {exc}")
    print("wrote " + ", ".join(str(p) for p in written))


def _load_inputs(args: argparse.Namespace) -> tuple[str, dict[str, np.ndarray]]:
    """(source description, arrays with distmat + ids, optionally features and q_paths/g_paths)."""
    given = [f"--{name}" for name in ("distmat", "features", "model", "classic") if getattr(args, name) is not None]
    if len(given) != 1:
        raise ReIDError("evaluate: give exactly one of --distmat, --features, --model or --classic"
                        + (f" (got {', '.join(given)})" if given else ""))
    if args.train is not None and args.classic is None:
        raise ReIDError("--train applies to --classic (the images a classic method learns its metric on)")
    if args.flip and args.model is None:
        raise ReIDError("--flip applies when evaluate embeds the images (--model); features and distance matrices "
                        "are already computed (use `reidkit extract --flip`)")
    if args.distmat is not None:
        return str(args.distmat), _load_npz(Path(args.distmat), DISTMAT_KEYS)
    if args.features is not None:
        arrays = _load_npz(Path(args.features), FEATURE_KEYS)
        source = str(args.features)
    elif args.model is not None:
        if args.data is None:
            raise ReIDError(f"--model {args.model}: also give --data (the dataset root to evaluate on)")
        from ..inference import extractor

        arrays = extractor.extract_split_features(args.model, args.data, device=args.device,
                                                  show_progress=not args.quiet, flip=args.flip,
                                                  local=args.local_weight > 0, batch_size=args.batch_size)
        source = f"{args.model} on {args.data}" + (" (flip)" if args.flip else "")
    elif args.classic is not None:
        return _classic_inputs(args)
    else:
        raise AssertionError("unreachable: one source is given")
    return source, _with_distances(arrays, source, args.metric, args.local_weight)


def _classic_inputs(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """A classic method (reidkit.classic) learned on --train, applied to --data; its features are the method's
    metric embedding (squared L2 there = the method's distance); timings and sizes go to the report."""
    missing = [f"{name} ({what})" for name, value, what in (("--train", args.train, "the training images"),
                                                            ("--data", args.data, "the dataset root to evaluate on"))
               if value is None]
    if missing:
        raise ReIDError(f"--classic {args.classic}: also give {' and '.join(missing)}")
    if args.local_weight > 0:
        raise ReIDError(f"--local-weight needs AlignedReID local features; --classic {args.classic} has none")
    from ..classic import classic_split_features

    arrays = classic_split_features(args.classic, args.train, args.data, show_progress=not args.quiet)
    source = f"{args.classic} trained on {args.train}, on {args.data}"
    inputs: dict[str, Any] = dict(_with_distances(arrays, source, args.metric))
    inputs["classic"] = {"method": args.classic, "train": str(args.train), **arrays["info"],
                         **{k: round(v, 3) for k, v in arrays["timing"].items()}}
    return source, inputs


def _with_distances(arrays: dict[str, Any], source: str, metric: str, local_weight: float = 0.0
                    ) -> dict[str, np.ndarray]:
    """Features, ids, paths and the `metric` query-gallery distances (+ local_weight x AlignedReID local)."""
    missing = [k for k in FEATURE_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)}")
    try:
        distmat = compute_distance_matrix(arrays["query_features"], arrays["gallery_features"], metric=metric)
        if local_weight > 0:
            distmat = distmat + local_weight * _local_distances(arrays, source)
    except MetricInputError as exc:
        raise DataError(f"{source}: {exc}") from exc
    result = {k: np.asarray(arrays[k]) for k in (*FEATURE_KEYS, *PATH_KEYS) if k in arrays}
    result["distmat"] = np.asarray(distmat)
    return result


def _local_distances(arrays: dict[str, Any], source: str) -> np.ndarray:
    """AlignedReID shortest-path local distance of every query-gallery pair, (Q, G), in bounded-memory chunks."""
    missing = [k for k in LOCAL_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{source}: --local-weight needs {', '.join(missing)} (AlignedReID local features: extract "
                        "with a checkpoint trained with model.local_dim > 0)")
    local = {}
    for key, feature_key in zip(LOCAL_KEYS, ("query_features", "gallery_features"), strict=True):
        value = np.asarray(arrays[key])
        if value.ndim != 3 or len(value) != len(arrays[feature_key]) or not np.issubdtype(value.dtype, np.number):
            raise DataError(f"{source}: {key} must be a numeric (N, stripes, dim) array with N = "
                            f"{len(arrays[feature_key])} (the rows of {feature_key}), got shape {value.shape}")
        local[key] = torch.from_numpy(np.ascontiguousarray(value)).float()
    if local["query_local"].shape[2] != local["gallery_local"].shape[2]:
        raise DataError(f"{source}: query_local and gallery_local differ in feature size "
                        f"({local['query_local'].shape[2]} vs {local['gallery_local'].shape[2]})")
    with torch.no_grad():
        return local_distance(local["query_local"], local["gallery_local"]).numpy()


def _load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: expected an .npz archive with keys {', '.join(keys)}, got a single array")
        with loaded as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(npz.files)})")
            return {k: npz[k] for k in (*keys, *PATH_KEYS, *LOCAL_KEYS) if k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `reidkit evaluate` (cli/main.py registers the verb)."""
    src = p.add_argument_group("input (exactly one)")
    src.add_argument("--distmat", type=Path, help=".npz with distmat, q_pids, g_pids, q_camids, g_camids")
    src.add_argument("--features", type=Path, help=".npz with query/gallery features and ids (`reidkit extract`)")
    add_model(src, required=False, help="model file (.pt) that embeds the query and gallery of --data")
    src.add_argument("--classic", choices=CLASSIC_CHOICES,
                     help="classic method learned on --train and applied to --data: lomo-xqda = LOMO features + "
                          "XQDA metric (Liao et al. 2015; docs/models.md); --metric sqeuclidean ranks by the XQDA "
                          "distance")
    p.add_argument("--data", type=Path, help="dataset root (Market layout or manifest) for --model or --classic")
    p.add_argument("--train", type=Path,
                   help="--classic: training images (Market root, manifest or folder of Market-named images; "
                        "e.g. the bounding_box_train of a `reidkit split` carve)")
    p.add_argument("--metric", choices=(*METRIC_CHOICES, "l2"), default="sqeuclidean",
                   metavar="{" + ",".join(METRIC_CHOICES) + "}",
                   help="distance: sqeuclidean = squared L2 (torchreid convention), euclidean = L2, cosine "
                        "(L2 and squared L2 rank identically)")
    p.add_argument("--protocol", choices=("market", "cuhk03"), default="market",
                   help="market: multi-shot with same-camera filtering; cuhk03: classic single-gallery-shot")
    p.add_argument("--ap", choices=("torchreid", "market-official"), default="torchreid",
                   help="AP definition: torchreid (precision at each hit) or the official Market-1501 trapezoid")
    p.add_argument("--local-weight", type=float, default=0.0,
                   help="AlignedReID: add W x the local (shortest-path) distance to the --metric distance; needs a "
                        "model with a local branch or features with query_local/gallery_local (0 = global only; "
                        "--metric euclidean --local-weight 1 is the paper's global + local distance)")
    add_top(p, 50, "length of the CMC curve (ranks reported)")
    p.add_argument("--out", type=Path,
                   help="metrics JSON; the CMC and ranked-list pictures go beside it (OUT_cmc.png, OUT_ranked.png)")
    add_flip(p)
    add_device(p)
    add_batch_size(p, default=128)
    add_quiet(p)
    add_rerank_options(p)
    t = p.add_argument_group("tracklets (video re-ID, docs/tracklets.md)")
    t.add_argument("--tracklets", action="store_true",
                   help="evaluate tracklets of --data (MARS, iLIDS-VID, PRID-2011, `reidkit track` run, tracklet "
                        "manifest, or a Market layout grouped by identity and camera) with --model")
    t.add_argument("--pooling", choices=("avg", "attention", "consensus"),
                   help="tracklet feature: avg of the frame embeddings, attention (the learned head of a temporal "
                        "checkpoint) or consensus (frames weighted by agreement with their tracklet) (default: avg)")
    t.add_argument("--set-distance", choices=("mean", "min"),
                   help="tracklet distance: mean = between pooled features, min = the closest pair of frames "
                        "(default: mean)")
    t.add_argument("--tracklet-protocol", choices=("split", "pooled"),
                   help="Market layouts: split = query/ and bounding_box_test/ grouped separately; pooled = both "
                        "grouped together, every tracklet against the others (default: split)")
    t.add_argument("--split-seed", type=int,
                   help="iLIDS-VID / PRID-2011: seed of the random 50/50 identity split (default: 0)")
    p.set_defaults(func=evaluate_command)
