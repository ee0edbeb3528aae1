"""Multi-object tracking metrics: HOTA / DetA / AssA, IDF1 / IDP / IDR, MOTA / MOTP / IDSW / FP / FN per sequence,
and the cross-camera IDF1 of a multi-camera run.

The metrics themselves are TrackEval's (`trackeval.metrics.HOTA`, `CLEAR`, `Identity`: the MOTChallenge reference
implementation); this module only prepares their input: per timestep, the ground-truth and tracker ids (remapped to
0..n-1) and the IoU between their boxes. Ground truth is taken as given (filter MOT17's consider/class columns before,
e.g. with `reidkit.data.mot.read_gt`).

Cross-camera IDF1 (Ristani et al., "Performance Measures and a Data Set for Multi-Target, Multi-Camera Tracking",
2016): all cameras form one sequence whose timesteps are the (camera, frame) pairs and whose ids are global, and the
identity measures are computed over it at once. A person split into different ids in two cameras, or two people merged
under one id across cameras, costs identity true positives even when every single camera is tracked perfectly.

Tables are duck-typed (`TrackTable`): anything with `frames` (1-based ints), `ids` (ints) and `boxes` (x, y, w, h)
arrays of one length, such as `reidkit.data.mot.MotTable`. Ratios are returned as percentages, counts as ints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from ..errors import MetricInputError

RATIOS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "IDF1", "IDP", "IDR", "MOTA", "MOTP",
          "Recall", "Precision")
COUNTS = ("IDSW", "FP", "FN", "TP", "IDTP", "IDFP", "IDFN", "MT", "PT", "ML", "Frag", "gt_dets", "pred_dets",
          "gt_ids", "pred_ids", "frames")
IDENTITY_FIELDS = ("IDF1", "IDP", "IDR", "IDTP", "IDFP", "IDFN")


class TrackTable(Protocol):
    frames: np.ndarray  # (N,) 1-based frame numbers
    ids: np.ndarray     # (N,) identity per box
    boxes: np.ndarray   # (N, 4) x, y, w, h


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of x1, y1, x2, y2 boxes (0 where the union is empty)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _columns(table: TrackTable, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        frames = np.asarray(table.frames, np.int64).reshape(-1)
        ids = np.asarray(table.ids, np.int64).reshape(-1)
        boxes = np.asarray(table.boxes, np.float64).reshape(-1, 4)
    except (AttributeError, TypeError, ValueError) as exc:
        raise MetricInputError(f"{what}: expected frames, ids and (N, 4) boxes arrays ({exc})") from exc
    if not len(frames) == len(ids) == len(boxes):
        raise MetricInputError(f"{what}: frames, ids and boxes differ in length ({len(frames)}, {len(ids)}, "
                               f"{len(boxes)})")
    if len(frames) and (frames.min() < 1 or not np.isfinite(boxes).all()):
        raise MetricInputError(f"{what}: frames must be >= 1 (1-based) and boxes finite")
    return frames, ids, boxes


def _duplicates(frames: np.ndarray, ids: np.ndarray, what: str) -> None:
    """One id may hold one box per timestep (TrackEval's assumption); name the first offender."""
    if len(frames) < 2:
        return
    pairs = np.stack([frames, ids], axis=1)
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    if (counts > 1).any():
        frame, ident = unique[np.argmax(counts > 1)]
        raise MetricInputError(f"{what}: id {ident} has {counts.max()} boxes in timestep {frame}; an id may have "
                               "one box per frame")


def trackeval_data(gt: list[tuple[np.ndarray, np.ndarray]], pred: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """TrackEval's per-sequence input from per-timestep (ids, xyxy boxes) of ground truth and tracker.

    Ids are remapped to 0..n-1 over the whole sequence (what TrackEval's datasets do); similarity is box IoU."""
    gt_all = np.concatenate([ids for ids, _ in gt]) if gt else np.zeros(0, np.int64)
    pred_all = np.concatenate([ids for ids, _ in pred]) if pred else np.zeros(0, np.int64)
    gt_unique, pred_unique = np.unique(gt_all), np.unique(pred_all)
    return {
        "num_timesteps": len(gt),
        "num_gt_ids": len(gt_unique),
        "num_tracker_ids": len(pred_unique),
        "num_gt_dets": int(len(gt_all)),
        "num_tracker_dets": int(len(pred_all)),
        "gt_ids": [np.searchsorted(gt_unique, ids) for ids, _ in gt],
        "tracker_ids": [np.searchsorted(pred_unique, ids) for ids, _ in pred],
        "similarity_scores": [box_iou(g, p) for (_, g), (_, p) in zip(gt, pred)],
    }


def _timesteps(table: TrackTable, num_frames: int, what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    frames, ids, boxes = _columns(table, what)
    _duplicates(frames, ids, what)
    order = np.argsort(frames, kind="stable")
    frames, ids, boxes = frames[order], ids[order], _xyxy(boxes[order])
    bounds = np.searchsorted(frames, np.arange(1, num_frames + 2))
    return [(ids[bounds[t]:bounds[t + 1]], boxes[bounds[t]:bounds[t + 1]]) for t in range(num_frames)]


def _metrics(threshold: float) -> tuple:
    from trackeval.metrics import CLEAR, HOTA, Identity

    config = {"THRESHOLD": threshold, "PRINT_CONFIG": False}
    return HOTA(), CLEAR(config), Identity(config)


def _summary(hota: dict, clear: dict, identity: dict, data: dict) -> dict[str, Any]:
    """TrackEval's raw results -> named percentages and counts (HOTA fields averaged over its alpha thresholds)."""
    out: dict[str, Any] = {name: 100.0 * float(np.mean(hota[name])) for name in
                           ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA")}
    out |= {name: 100.0 * float(identity[name]) for name in ("IDF1", "IDP", "IDR")}
    out |= {"MOTA": 100.0 * float(clear["MOTA"]), "MOTP": 100.0 * float(clear["MOTP"]),
            "Recall": 100.0 * float(clear["CLR_Re"]), "Precision": 100.0 * float(clear["CLR_Pr"])}
    out |= {"IDSW": int(clear["IDSW"]), "FP": int(clear["CLR_FP"]), "FN": int(clear["CLR_FN"]),
            "TP": int(clear["CLR_TP"]), "IDTP": int(identity["IDTP"]), "IDFP": int(identity["IDFP"]),
            "IDFN": int(identity["IDFN"]), "MT": int(clear["MT"]), "PT": int(clear["PT"]), "ML": int(clear["ML"]),
            "Frag": int(clear["Frag"])}
    out |= {"gt_dets": data["num_gt_dets"], "pred_dets": data["num_tracker_dets"], "gt_ids": data["num_gt_ids"],
            "pred_ids": data["num_tracker_ids"], "frames": data["num_timesteps"]}
    return out


def _evaluate_data(data: dict, threshold: float) -> tuple[dict[str, Any], tuple[dict, dict, dict]]:
    hota, clear, identity = _metrics(threshold)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = (hota.eval_sequence(data), clear.eval_sequence(data), identity.eval_sequence(data))
    return _summary(*raw, data), raw


def evaluate_tracks(gt: TrackTable, pred: TrackTable, *, threshold: float = 0.5, num_frames: int | None = None,
                    names: tuple[str, str] = ("ground truth", "tracks")) -> dict[str, Any]:
    """Metrics of one sequence (camera): HOTA, DetA, AssA, ..., IDF1, IDP, IDR, MOTA, MOTP (percent) and IDSW, FP,
    FN, TP, IDTP/IDFP/IDFN, MT/PT/ML, Frag (counts). `threshold` is the IoU a match needs for CLEAR and Identity
    (HOTA integrates over 0.05..0.95). `num_frames` defaults to the last frame either table mentions; `names`
    (e.g. the file paths) name the two tables in error messages."""
    if not 0.0 < threshold <= 1.0:
        raise MetricInputError(f"threshold: IoU must be in (0, 1], got {threshold}")
    last = max([int(np.max(t.frames)) for t in (gt, pred) if len(t.frames)] or [0])
    num_frames = last if num_frames is None else max(int(num_frames), last)
    data = trackeval_data(_timesteps(gt, num_frames, names[0]), _timesteps(pred, num_frames, names[1]))
    return _evaluate_data(data, threshold)[0]


def drop_distractor_matches(pred: TrackTable, gt_all: TrackTable, distractor: np.ndarray,
                            threshold: float = 0.5) -> np.ndarray:
    """Boolean mask of the `pred` rows to keep under MOTChallenge's preprocessing (MOT16/17, as TrackEval's
    MotChallenge2DBox does it): per frame, tracker boxes are matched one-to-one (Hungarian on IoU, pairs below
    `threshold` not allowed) to EVERY ground-truth row `gt_all` (any class, considered or not); a tracker box matched
    to a row whose `distractor` flag is set (static person, reflection, person on a vehicle, distractor) is dropped
    rather than counted as a false positive."""
    from scipy.optimize import linear_sum_assignment

    p_frames, _, p_boxes = _columns(pred, "tracks")
    g_frames, _, g_boxes = _columns(gt_all, "ground truth")
    distractor = np.asarray(distractor, bool).reshape(-1)
    keep = np.ones(len(p_frames), bool)
    for frame in np.intersect1d(p_frames, g_frames[distractor]):
        p_rows, g_rows = np.flatnonzero(p_frames == frame), np.flatnonzero(g_frames == frame)
        iou = box_iou(_xyxy(g_boxes[g_rows]), _xyxy(p_boxes[p_rows]))
        iou[iou < threshold - np.finfo(float).eps] = 0.0
        rows, cols = linear_sum_assignment(-iou)
        matched = iou[rows, cols] > np.finfo(float).eps
        keep[p_rows[cols[matched]][distractor[g_rows[rows[matched]]]]] = False
    return keep


def evaluate_multicamera(gt: Mapping[str, TrackTable], pred: Mapping[str, TrackTable], *, threshold: float = 0.5,
                         num_frames: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Per-camera metrics, their combination over cameras, and the cross-camera identity measures.

    `gt` and `pred` map camera name -> table with GLOBAL ids (the same person has the same id in every camera). A
    camera with no predictions counts all its people as missed; one without ground truth all its boxes as false.
    Returns {"cameras": {camera: metrics}, "combined": metrics over all cameras (TrackEval's combine_sequences:
    each camera its own sequence, ids per camera), "cross_camera": {IDF1, IDP, IDR, IDTP, IDFP, IDFN} with
    (camera, frame) timesteps and global ids}."""
    from trackeval.metrics import CLEAR, HOTA, Identity  # noqa: F401  (fail early if TrackEval is missing)

    cameras = sorted(set(gt) | set(pred))
    if not cameras:
        raise MetricInputError("evaluate_multicamera: no cameras given")
    empty = _Empty()
    per_camera, raws, gt_steps, pred_steps = {}, [], [], []
    for camera in cameras:
        g, p = gt.get(camera, empty), pred.get(camera, empty)
        last = max([int(np.max(t.frames)) for t in (g, p) if len(t.frames)] or [0])
        frames = max(last, int((num_frames or {}).get(camera, 0)))
        g_steps = _timesteps(g, frames, f"ground truth of camera {camera}")
        p_steps = _timesteps(p, frames, f"tracks of camera {camera}")
        per_camera[camera], raw = _evaluate_data(trackeval_data(g_steps, p_steps), threshold)
        raws.append(raw)
        gt_steps += g_steps
        pred_steps += p_steps
    hota, clear, identity = _metrics(threshold)
    with np.errstate(divide="ignore", invalid="ignore"):
        combined_raw = [metric.combine_sequences({c: raw[k] for c, raw in zip(cameras, raws)})
                        for k, metric in enumerate((hota, clear, identity))]
        cross = Identity({"THRESHOLD": threshold, "PRINT_CONFIG": False}).eval_sequence(
            trackeval_data(gt_steps, pred_steps))
    totals = {"num_gt_dets": sum(v["gt_dets"] for v in per_camera.values()),
              "num_tracker_dets": sum(v["pred_dets"] for v in per_camera.values()),
              "num_gt_ids": len(np.unique(np.concatenate([ids for ids, _ in gt_steps] or [np.zeros(0)]))),
              "num_tracker_ids": len(np.unique(np.concatenate([ids for ids, _ in pred_steps] or [np.zeros(0)]))),
              "num_timesteps": len(gt_steps)}
    cross_camera = {name: (100.0 * float(cross[name]) if name in ("IDF1", "IDP", "IDR") else int(cross[name]))
                    for name in IDENTITY_FIELDS}
    return {"cameras": per_camera, "combined": _summary(*combined_raw, totals), "cross_camera": cross_camera}


class _Empty:
    frames = np.zeros(0, np.int64)
    ids = np.zeros(0, np.int64)
    boxes = np.zeros((0, 4))


TABLE_COLUMNS = ("HOTA", "DetA", "AssA", "IDF1", "IDP", "IDR", "MOTA", "MOTP", "IDSW", "FP", "FN", "gt_ids",
                 "pred_ids")


def format_tracking_table(rows: Mapping[str, Mapping[str, Any]], cross_camera: Mapping[str, Any] | None = None) -> str:
    """A plain-text table: one row per sequence/camera (ratios in percent with one decimal, counts as integers),
    then the cross-camera identity measures if given."""
    name_width = max([len("camera")] + [len(name) for name in rows])
    header = f"{'camera':<{name_width}}  " + "  ".join(f"{c:>8}" for c in TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    for name, result in rows.items():
        cells = [f"{result[c]:8.1f}" if c in RATIOS else f"{int(result[c]):8d}" for c in TABLE_COLUMNS]
        lines.append(f"{name:<{name_width}}  " + "  ".join(cells))
    if cross_camera is not None:
        c = cross_camera
        lines.append(f"cross-camera (global ids over all cameras): IDF1 {c['IDF1']:.1f}  IDP {c['IDP']:.1f}  "
                     f"IDR {c['IDR']:.1f}  (IDTP {c['IDTP']}, IDFP {c['IDFP']}, IDFN {c['IDFN']})")
    return "\n".join(lines)
