"""`reidkit evaluate` and the metric summary other modules report (trainer, demo)."""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..distance import compute_distance_matrix
from ..errors import DataError, ReIDError
from ..metrics.alignment import local_distance
from ..metrics.plots import plot_cmc, ranked_list_grid
from ..metrics.rank import MetricInputError, RankResult, evaluate_rank_full, summarize
from ..utils import atomic_write_json

ID_KEYS = ("q_pids", "g_pids", "q_camids", "g_camids")
DISTMAT_KEYS = ("distmat", *ID_KEYS)
FEATURE_KEYS = ("query_features", "gallery_features", *ID_KEYS)
PATH_KEYS = ("q_paths", "g_paths")
LOCAL_KEYS = ("query_local", "gallery_local")  # AlignedReID local features (N, stripes, dim), optional


def evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    """Load a distance matrix, features or checkpoint; print R1/R5/R10/mAP/mINP; write JSON + plots to --out."""
    _check_local_weight(args)
    source, inputs = _load_inputs(args)
    if getattr(args, "pair_checkpoint", None) is not None:
        inputs["distmat"] = _pair_reranked(inputs, source, args)
        source += f", top-{args.pair_top_k} re-ranked by {args.pair_checkpoint} (pair weight {args.pair_weight:g})"
    try:
        result = evaluate_rank_full(inputs["distmat"], *(inputs[k] for k in ID_KEYS), max_rank=args.max_rank,
                                    use_metric_cuhk03=args.protocol == "cuhk03", ap=args.ap)
    except MetricInputError as exc:
        raise DataError(f"{source}: {exc}") from exc
    report = _report(result, source, args)
    print(_table(result, report))
    if getattr(args, "out", None) is not None:
        _write_outputs(Path(args.out), report, result, inputs)
    return report


def _pair_reranked(inputs: dict[str, np.ndarray], source: str, args: argparse.Namespace) -> np.ndarray:
    """`distmat` with each query's top-k re-ordered by a pair network (IDLA, IDLA-NCC, MLS) on the images."""
    from ..checkpoint import model_from_checkpoint
    from ..data.store import load_image_tensor
    from ..metrics.pair_ranking import pair_network_scorer, rerank_top_k
    from ..models.pair.idla import PairNetwork
    from ..utils import resolve_device

    where = f"--pair-checkpoint {args.pair_checkpoint}"
    missing = [k for k in PATH_KEYS if k not in inputs]
    if missing:
        raise ReIDError(f"{where}: the pair network needs the images, but {source} has no {', '.join(missing)} "
                        "(use --checkpoint, or --features written by `reidkit extract`)")
    model, payload = model_from_checkpoint(args.pair_checkpoint)
    if not isinstance(model, PairNetwork):
        raise ReIDError(f"{where}: holds a {payload['model_name']!r} model, not a pair network (idla, idla_ncc, mls)")
    model.to(resolve_device(args.device)).eval()
    query, gallery = (load_image_tensor([str(p) for p in inputs[key]], model.input_size,
                                        show_progress=not args.quiet, desc=f"decoding {name} images")
                      for key, name in (("q_paths", "query"), ("g_paths", "gallery")))
    scorer = pair_network_scorer(model, query, gallery, symmetric=args.pair_tta, flip=args.pair_tta)
    try:
        return rerank_top_k(inputs["distmat"], scorer, k=args.pair_top_k, pair_weight=args.pair_weight)
    except MetricInputError as exc:
        raise ReIDError(f"{where}: {exc}") from exc


def _report(result: RankResult, source: str, args: argparse.Namespace) -> dict[str, Any]:
    report = summarize(result.cmc, result.mAP, result.mINP, num_valid_queries=result.num_valid_queries,
                       num_skipped_queries=result.num_skipped_queries)
    details = result.to_dict()
    report.update(num_queries=result.num_queries, skipped_queries=details["skipped_queries"],
                  protocol=result.protocol, ap=result.ap, max_rank=int(result.cmc.size), source=source,
                  metric=None if getattr(args, "distmat", None) else args.metric,
                  local_weight=getattr(args, "local_weight", 0.0), cmc=details["cmc"])
    return report


def _check_local_weight(args: argparse.Namespace) -> None:
    weight = getattr(args, "local_weight", 0.0)
    if weight < 0:
        raise ReIDError(f"--local-weight {weight}: must be >= 0 (0 = global distance only)")
    if weight == 0:
        return
    if getattr(args, "distmat", None) is not None:
        raise ReIDError("--local-weight needs --features or --checkpoint: a distance matrix has no local features")
    if getattr(args, "rerank", "none") != "none":
        raise ReIDError(f"--local-weight cannot be combined with --rerank {args.rerank}: re-ranking works on the "
                        "global features only")


def _table(result: RankResult, report: dict[str, Any]) -> str:
    header = (f"{result.protocol} protocol, {result.ap} AP: {result.num_queries} queries, "
              f"{result.num_valid_queries} evaluated, {result.num_skipped_queries} skipped "
              "(no valid match in the gallery)")
    names = ("R1", "R5", "R10", "mAP", "mINP")
    values = (report["rank1"], report["rank5"], report["rank10"], report["mAP"], report["mINP"])
    return "\n".join([header, "".join(f"{n:>8s}" for n in names), "".join(f"{v:8.2f}" for v in values)])


def _write_outputs(out: Path, report: dict[str, Any], result: RankResult, inputs: dict[str, np.ndarray]) -> None:
    atomic_write_json(report, out)
    plot_cmc(result.cmc, out.parent / "cmc.png", title=f"CMC ({result.protocol} protocol)")
    written = [out, out.parent / "cmc.png"]
    if all(k in inputs for k in PATH_KEYS):
        grid_path = out.parent / "ranked_list.png"
        try:
            ranked_list_grid([str(p) for p in inputs["q_paths"]], [str(p) for p in inputs["g_paths"]],
                             inputs["distmat"], *(inputs[k] for k in ID_KEYS), grid_path)
            written.append(grid_path)
        except ReIDError as exc:  # images moved or on another machine: the metrics are still valid
            print(f"note: no ranked-list grid: {exc}")
    print("wrote " + ", ".join(str(p) for p in written))


def _load_inputs(args: argparse.Namespace) -> tuple[str, dict[str, np.ndarray]]:
    """(source description, arrays with distmat + ids, optionally q_paths/g_paths) from the chosen source."""
    if getattr(args, "distmat", None) is not None:
        return str(args.distmat), _load_npz(Path(args.distmat), DISTMAT_KEYS)
    if getattr(args, "features", None) is not None:
        arrays = _load_npz(Path(args.features), FEATURE_KEYS)
        source = str(args.features)
    elif getattr(args, "checkpoint", None) is not None:
        if getattr(args, "data", None) is None:
            raise ReIDError(f"--checkpoint {args.checkpoint}: also give --data (the dataset root to evaluate on)")
        from ..inference.extractor import extract_split_features

        local_weight = getattr(args, "local_weight", 0.0)
        arrays = extract_split_features(args.checkpoint, args.data, device=args.device,
                                        show_progress=not args.quiet, local=local_weight > 0)
        source = f"{args.checkpoint} on {args.data}"
    else:
        raise ReIDError("evaluate: give one of --distmat, --features or --checkpoint")
    return source, _with_distances(arrays, source, args.metric, getattr(args, "rerank", "none"),
                                   getattr(args, "local_weight", 0.0))


def _with_distances(arrays: dict[str, Any], source: str, metric: str, rerank_method: str = "none",
                    local_weight: float = 0.0) -> dict[str, np.ndarray]:
    """Query-gallery distances (the `metric` distance, re-ranked, or + local_weight * AlignedReID local) + ids."""
    missing = [k for k in FEATURE_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)}")
    try:
        if rerank_method != "none":  # re-ranking defines its own distance (k-reciprocal: euclidean features)
            from ..rerank.methods import rerank

            distmat = rerank(arrays["query_features"], arrays["gallery_features"], rerank_method)
        else:
            distmat = compute_distance_matrix(arrays["query_features"], arrays["gallery_features"], metric=metric)
            if local_weight > 0:
                distmat = distmat + local_weight * _local_distances(arrays, source)
    except MetricInputError as exc:
        raise DataError(f"{source}: {exc}") from exc
    result = {k: np.asarray(arrays[k]) for k in (*ID_KEYS, *PATH_KEYS) if k in arrays}
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
