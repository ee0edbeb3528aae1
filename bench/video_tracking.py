"""Single-camera tracker benchmark on real annotated video: TUD-Campus (71 frames, 640x480, 8 people) and the
MOT17-mini clips (4-8 frames each, a held-out smoke test: the tracker defaults were tuned on TUD-Campus).

Detections: the default detector (vendored OpenVINO pedestrian-detection-adas-0002) and the public det.txt.
Appearance: reidkit embeddings of every detection crop (runs/emb_val/best.pt, the Intel OSNet 0277 IR,
runs/recipe60/best.pt when present). Trackers: reidkit.video.tracker.Tracker with and without appearance,
Roboflow's maintained `trackers` package (ByteTrack, OC-SORT, BoT-SORT with camera-motion compensation; at their
defaults and at our score thresholds) on the same detections, and the greedy IoU reference. Metrics: TrackEval
through reidkit.metrics.tracking (HOTA, IDF1, MOTA), motmetrics (IDF1, MOTA) as a cross-check.
Detections and embeddings are cached under bench/out/video_tracking/ so tracker settings can be iterated quickly.

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/video_tracking.py [--sweep]
  -> docs/benchmarks/video_tracking.json and docs/benchmarks/video_tracking.md
"""

from __future__ import annotations

import argparse
import configparser
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import TYPE_CHECKING

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = REPO.parent / "shared"
MOT = SHARED / "datasets" / "mot"
TUD = MOT / "TUD-Campus"
CACHE = REPO / "bench" / "out" / "video_tracking"
OUT = REPO / "docs" / "benchmarks"
ADAS = REPO / "src" / "reidkit" / "video" / "models" / "pedestrian-detection-adas-0002" / \
    "pedestrian-detection-adas-0002.xml"
EMBEDDERS = {
    "emb_val": REPO / "runs" / "emb_val" / "best.pt",
    "osnet0277": SHARED / "models" / "openvino" / "person-reidentification-retail-0277" /
    "person-reidentification-retail-0277.xml",
    "recipe60": REPO / "runs" / "recipe60" / "best.pt",
}
MIN_DET_SCORE = 0.05  # cache everything above this; the tracker's thresholds decide the rest


if TYPE_CHECKING:
    from collections.abc import Callable

    from reidkit.data.mot import MotTable

# ----------------------------------------------------------------------------------------- sequences

def sequence(folder: Path) -> dict:
    """Frames (sorted img1 files), fps, and ground truth (reidkit's read_gt: MOT17 rows with consider == 1 and
    class == 1) restricted to the frames that exist (the MOT17-mini clips keep the full gt.txt but only their first
    few images)."""
    from reidkit.data.mot import read_gt
    ini = configparser.ConfigParser()
    ini.read(folder / "seqinfo.ini")
    frames = sorted((folder / "img1").glob("*.jpg"))
    gt = read_gt(folder / "gt" / "gt.txt")
    gt = gt.select(gt.frames <= len(frames))
    return {"name": folder.name, "folder": folder, "frames": frames, "gt": gt,
            "fps": float(ini["Sequence"].get("frameRate", 25))}


def read_rgb(path: Path) -> np.ndarray:
    from reidkit.data.images import read_image
    return np.asarray(read_image(path))


# ----------------------------------------------------------------------------------------- detections

def detections(seq: dict, kind: str) -> list[np.ndarray]:
    """Boxes per frame ((N, 5) x1 y1 x2 y2 score in [0, 1]) from reidkit's detectors, cached:
    "adas" = build_detector("default") with a low threshold (the tracker's thresholds decide), "public" =
    det.txt as `reidkit track --detector SEQ/det/det.txt` reads it (scores divided by the file's maximum)."""
    path = CACHE / f"{seq['name']}_{kind}.npz"
    if path.is_file():
        data = np.load(path)
        return [data[f"f{i}"] for i in range(len(seq["frames"]))]
    from reidkit.video.detect import build_detector
    if kind == "adas":
        detector = build_detector("default", threshold=MIN_DET_SCORE, threads=2)
        out = [detector.detect([read_rgb(f)])[0] for f in seq["frames"]]
    else:
        detector = build_detector(seq["folder"] / "det" / "det.txt")
        sizes = [read_rgb(f) for f in seq["frames"][:1]]
        out = [detector.detect([sizes[0]], frame_indices=[i])[0] for i in range(len(seq["frames"]))]
    out = [np.asarray(d, np.float32).reshape(-1, 5) for d in out]
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"f{i}": d for i, d in enumerate(out)})
    return out


# ----------------------------------------------------------------------------------------- appearance

def embed_sequence(seq: dict, dets: list[np.ndarray], det_name: str, embedder: str) -> list[np.ndarray] | None:
    """Embedding of every detection crop, cached; None when the model file is absent."""
    path = CACHE / f"{seq['name']}_{det_name}_{embedder}.npz"
    if path.is_file():
        data = np.load(path)
        return [data[f"f{i}"] for i in range(len(dets))]
    model = EMBEDDERS[embedder]
    if not model.is_file():
        return None
    import torch
    torch.set_num_threads(2)
    from reidkit.inference import build_extractor
    extractor = build_extractor(model, threads=2) if model.suffix == ".xml" else build_extractor(model, device="cpu")
    out = []
    for frame, boxes in zip(seq["frames"], dets):
        image = read_rgb(frame)
        crops = [crop(image, b) for b in boxes[:, :4]]
        out.append(np.asarray(extractor.embed(crops), np.float32) if crops else np.zeros((0, 1), np.float32))
    dim = max(f.shape[1] for f in out)
    out = [f if len(f) else np.zeros((0, dim), np.float32) for f in out]
    np.savez(path, **{f"f{i}": f for i, f in enumerate(out)})
    return out


def crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x1, y1, x2, y2 = np.round(box).astype(int)
    x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
    x2, y2 = max(min(x2, w), x1 + 1), max(min(y2, h), y1 + 1)
    return np.ascontiguousarray(image[y1:y2, x1:x2])


# ----------------------------------------------------------------------------------------- trackers

def run_tracker(config, dets: list[np.ndarray], feats: list[np.ndarray] | None) -> tuple[MotTable, float]:
    """reidkit's Tracker over a sequence: the boxes `update` outputs per frame (what `reidkit track` writes to
    tracks.txt) as a MotTable, and the tracker's own time per frame in ms (no detection, no embedding)."""
    from reidkit.video.tracker import Tracker
    tracker, rows, spent = Tracker(config), [], 0.0
    for i, boxes in enumerate(dets):
        t0 = time.process_time()  # CPU time: the machine is shared, wall time would count other processes
        out = tracker.update(i, boxes, None if feats is None else feats[i])
        spent += time.process_time() - t0
        rows.extend((i + 1, int(r[4]), r[0], r[1], r[2] - r[0], r[3] - r[1]) for r in out)
    tracker.finish()
    return table(rows), 1000.0 * spent / max(len(dets), 1)


def greedy_iou(dets: list[np.ndarray], score: float = 0.5, iou_min: float = 0.3) -> tuple[MotTable, float]:
    """The reference baseline: confident boxes linked greedily to the previous frame's boxes by IoU (a track ends
    at its first miss)."""
    from reidkit.metrics.tracking import box_iou
    rows, prev, prev_ids, next_id, spent = [], np.zeros((0, 4)), [], 1, 0.0
    for i, boxes in enumerate(dets):
        t0 = time.process_time()
        boxes = boxes[boxes[:, 4] >= score, :4]
        iou = box_iou(prev, boxes)
        ids = [0] * len(boxes)
        for flat in np.argsort(-iou, axis=None):
            r, c = np.unravel_index(flat, iou.shape)
            if iou[r, c] < iou_min:
                break
            if ids[c] == 0 and prev_ids[r] > 0:
                ids[c], prev_ids[r] = prev_ids[r], 0
        for c in range(len(ids)):
            if ids[c] == 0:
                ids[c], next_id = next_id, next_id + 1
        prev, prev_ids = boxes, list(ids)
        spent += time.process_time() - t0
        rows.extend((i + 1, k, b[0], b[1], b[2] - b[0], b[3] - b[1]) for k, b in zip(ids, boxes))
    return table(rows), 1000.0 * spent / max(len(dets), 1)


def table(rows: list[tuple]) -> MotTable:
    from reidkit.data.mot import MotTable
    data = np.asarray(rows, np.float64).reshape(-1, 6)
    return MotTable(data[:, 0], data[:, 1], data[:, 2:6], np.ones(len(data)))


def maintained_trackers(kind: str, fps: float) -> list[tuple[str, Callable[[], object], float, bool]]:
    """Roboflow's `trackers` package (the maintained successor of supervision's ByteTrack) as (row name, factory,
    score floor, wants the frame): each tracker at its own defaults (fed every cached box, like ours), and with
    our score thresholds (TrackerConfig's high_score -> high_conf_det_threshold, new_track_score ->
    track_activation_threshold, min_hits -> minimum_consecutive_frames; boxes below low_score dropped first,
    as our tracker ignores them). IoU gates and the lost-track buffer stay at their defaults. BoT-SORT here has no
    appearance model (trackers 2.6 ships none); it gets the frame for its camera-motion compensation."""
    from trackers import BoTSORTTracker, ByteTrackTracker, OCSORTTracker
    cfg = configs(kind)["appearance"]
    ours = {"high_conf_det_threshold": cfg.high_score, "minimum_consecutive_frames": cfg.min_hits,
            "frame_rate": fps}
    start = {"track_activation_threshold": cfg.new_track_score}
    tag = f"trackers {version('trackers')}"
    out = []
    for name, cls, extra, frame in (("ByteTrack", ByteTrackTracker, start, False),
                                    ("OC-SORT", OCSORTTracker, {}, False),
                                    ("BoT-SORT + CMC", BoTSORTTracker, start, True)):
        out.append((f"{name} ({tag}, its defaults)", partial(cls, frame_rate=fps), 0.0, frame))
        out.append((f"{name} ({tag}, our score thresholds)", partial(cls, **ours, **extra), cfg.low_score, frame))
    return out


def run_maintained(factory: Callable[[], object], dets: list[np.ndarray], floor: float,
                   frames: list[Path] | None) -> tuple[MotTable, float]:
    """A `trackers` tracker over a sequence: update(sv.Detections) per frame; the boxes it gives an id (not -1) as
    a MotTable, and its CPU ms per frame (update only; BoT-SORT's includes camera-motion compensation)."""
    import cv2
    import supervision as sv
    tracker, rows, spent = factory(), [], 0.0
    for i, boxes in enumerate(dets):
        boxes = boxes[boxes[:, 4] >= floor]
        found = sv.Detections(xyxy=boxes[:, :4].astype(np.float32), confidence=boxes[:, 4].astype(np.float32),
                              class_id=np.zeros(len(boxes), int))
        image = None if frames is None else cv2.imread(str(frames[i]))  # BGR, as BoT-SORT's CMC expects
        t0 = time.process_time()
        out = tracker.update(found, image) if frames is not None else tracker.update(found)
        spent += time.process_time() - t0
        keep = out.tracker_id >= 0
        rows.extend((i + 1, int(k), b[0], b[1], b[2] - b[0], b[3] - b[1])
                    for k, b in zip(out.tracker_id[keep], out.xyxy[keep]))
    return table(rows), 1000.0 * spent / max(len(dets), 1)


# ----------------------------------------------------------------------------------------- metrics

def evaluate(gt: MotTable, pred: MotTable, num_frames: int) -> dict:
    """TrackEval through reidkit.metrics.tracking (HOTA, IDF1, MOTA, IDSW, ...) and motmetrics' IDF1 / MOTA as an
    independent cross-check."""
    from reidkit.metrics.tracking import evaluate_tracks
    res = evaluate_tracks(gt, pred, num_frames=num_frames)
    out = {k: round(float(res[k]), 1) for k in ("HOTA", "IDF1", "MOTA", "Recall", "Precision")}
    out |= {k: int(res[k]) for k in ("IDSW", "FP", "FN", "pred_ids", "gt_ids")}
    out |= motmetrics_idf1_mota(gt, pred, num_frames)
    return out


def motmetrics_idf1_mota(gt: MotTable, pred: MotTable, num_frames: int) -> dict:
    import motmetrics as mm

    from reidkit.metrics.tracking import box_iou
    acc = mm.MOTAccumulator(auto_id=True)
    for frame in range(1, num_frames + 1):
        g, p = gt.frames == frame, pred.frames == frame
        iou = box_iou(gt.xyxy[g], pred.xyxy[p])
        acc.update(gt.ids[g].tolist(), pred.ids[p].tolist(), np.where(iou >= 0.5, 1.0 - iou, np.nan))
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "mota"], name="seq")
    return {"mm_IDF1": round(100 * float(summary["idf1"].iloc[0]), 1),
            "mm_MOTA": round(100 * float(summary["mota"].iloc[0]), 1)}


# ----------------------------------------------------------------------------------------- the benchmark

def offline(config, dets, feats) -> MotTable:
    """The tracklets `finish` returns (they include each track's tentative first frames)."""
    from reidkit.video.tracker import Tracker
    tracker = Tracker(config)
    for i, boxes in enumerate(dets):
        tracker.update(i, boxes, None if feats is None else feats[i])
    return table([(f + 1, t.track_id, *b[:2], b[2] - b[0], b[3] - b[1]) for t in tracker.finish()
                  for f, b in zip(t.frames, t.boxes)])


def configs(kind: str) -> dict:
    """Tracker settings per detection source. The defaults (TrackerConfig()) are for the default detector;
    det.txt scores (ACF / FRCNN divided by the file's maximum) need lower thresholds on TUD-Campus."""
    from reidkit.video.tracker import TrackerConfig
    base = TrackerConfig() if kind == "adas" else TrackerConfig.for_public_detections()
    return {"no appearance (ByteTrack-style)": replace(base, appearance_weight=0.0, memory_seconds=0.0),
            "appearance": base}


def public_settings() -> dict:
    """TrackerConfig.for_public_detections()'s thresholds (tuned on TUD-Campus's det.txt)."""
    from reidkit.video.tracker import TrackerConfig
    cfg = TrackerConfig.for_public_detections()
    return {k: getattr(cfg, k) for k in ("high_score", "new_track_score", "low_score", "min_hits")}


def greedy_score(kind: str) -> float:
    """The baseline's detection threshold: 0.5 for adas-0002 (the reference measurement), the tuned high_score
    for det.txt (its rescaled ACF scores are mostly below 0.5)."""
    return 0.5 if kind == "adas" else public_settings()["high_score"]


def bench_sequence(seq: dict, embedders: list[str], repeat: int = 3) -> list[dict]:
    n = len(seq["frames"])
    rows = []
    for kind in ("adas", "public"):
        dets = detections(seq, kind)
        pred, ms = greedy_iou(dets, greedy_score(kind))
        rows.append({"detections": kind, "tracker": "greedy IoU (reference)", "appearance": "-",
                     "ms_per_frame": round(ms, 3), **evaluate(seq["gt"], pred, n)})
        for name, cfg in configs(kind).items():
            for emb in (embedders if name == "appearance" else [None]):
                feats = None if emb is None else embed_sequence(seq, dets, kind, emb)
                if emb is not None and feats is None:
                    continue
                runs = [run_tracker(cfg, dets, feats) for _ in range(repeat)]
                pred = runs[0][0]
                row = {"detections": kind, "tracker": f"reidkit ({name})", "appearance": emb or "-",
                       "ms_per_frame": round(float(np.median([r[1] for r in runs])), 3),
                       **evaluate(seq["gt"], pred, n)}
                row["offline_tracklets"] = {k: v for k, v in evaluate(seq["gt"], offline(cfg, dets, feats), n).items()
                                            if k in ("HOTA", "IDF1", "MOTA", "IDSW")}
                rows.append(row)
        for name, factory, floor, wants_frame in maintained_trackers(kind, seq["fps"]):
            frames = seq["frames"] if wants_frame else None
            runs = [run_maintained(factory, dets, floor, frames) for _ in range(repeat)]
            rows.append({"detections": kind, "tracker": name, "appearance": "-",
                         "ms_per_frame": round(float(np.median([r[1] for r in runs])), 3),
                         **evaluate(seq["gt"], runs[0][0], n)})
    return rows


def ablation(seq: dict, embedder: str) -> list[dict]:
    """Each part of the tracker switched off, and each tuned threshold moved, one at a time (adas-0002 + one
    embedding on TUD-Campus): which parts matter, and how flat the optimum is."""
    from reidkit.video.tracker import TrackerConfig
    dets = detections(seq, "adas")
    feats = embed_sequence(seq, dets, "adas", embedder)
    base = TrackerConfig()
    variants = {"defaults": base,
                "no low-score stage (low_score = high_score)": replace(base, low_score=base.high_score),
                "no re-identification (reid_distance 0)": replace(base, reid_distance=0.0),
                "no appearance in association (weight 0; re-identification on)": replace(base, appearance_weight=0.0),
                "no appearance EMA (feature = first detection)": replace(base, feature_ema=1.0)}
    for name, values in (("high_score", (0.7, 0.9)), ("new_track_score", (0.8, 0.95)), ("min_hits", (2, 4)),
                         ("appearance_weight", (0.3, 0.7)), ("max_appearance_distance", (0.3, 0.7)),
                         ("reid_distance", (0.1, 0.3)), ("max_age", (15, 60)), ("match_iou", (0.1, 0.3))):
        for value in values:
            variants[f"{name} = {value}"] = replace(base, **{name: value})
    rows = []
    for name, cfg in variants.items():
        res = evaluate(seq["gt"], run_tracker(cfg, dets, feats)[0], len(dets))
        rows.append({"variant": name, **{k: res[k] for k in ("HOTA", "IDF1", "MOTA", "IDSW", "FP", "FN")}})
    return rows


def detect_every(seq: dict, embedder: str, steps: tuple[int, ...] = (1, 2, 3, 5)) -> list[dict]:
    """Accuracy when the detector runs on every N-th frame only (`reidkit track --detect-every N`): `update` on
    detected frames, `predict` (the Kalman boxes of live tracks) in between; all frames are scored."""
    from reidkit.video.tracker import Tracker, TrackerConfig
    dets = detections(seq, "adas")
    feats = embed_sequence(seq, dets, "adas", embedder)
    rows = []
    for step in steps:
        tracker, out = Tracker(TrackerConfig(fps=seq["fps"])), []
        for i in range(len(dets)):
            boxes = tracker.update(i, dets[i], feats[i]) if i % step == 0 else tracker.predict(i)
            out.extend((i + 1, int(r[4]), r[0], r[1], r[2] - r[0], r[3] - r[1]) for r in boxes)
        res = evaluate(seq["gt"], table(out), len(dets))
        rows.append({"detect_every": step, **{k: res[k] for k in ("HOTA", "IDF1", "MOTA", "IDSW", "FP", "FN")}})
    return rows


def end_to_end(embedder: str) -> dict:
    """`reidkit track` (default detector, this embedder, cross-camera association on) on TUD-Campus, scored like
    the rows above: the tracker inside the real pipeline."""
    import shutil

    from reidkit.data.mot import read_mot
    out = CACHE / "e2e_tud"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reidkit.cli.main", "track", str(TUD), "--out", str(out), "--model",
                    str(EMBEDDERS[embedder]), "--no-video", "--quiet", "--device", "cpu"], check=True,
                   capture_output=True)
    seconds = time.perf_counter() - t0
    seq = sequence(TUD)
    res = evaluate(seq["gt"], read_mot(out / TUD.name / "tracks.txt"), len(seq["frames"]))
    return {"command": f"reidkit track {TUD.relative_to(REPO.parent)} --model {embedder} --no-video",
            "wall_seconds": round(seconds, 1), **res}


def previous_end_to_end() -> dict | None:
    """The end-to-end row of the last run that measured it (docs/benchmarks/video_tracking.json), marked as such."""
    import json
    path = OUT / "video_tracking.json"
    previous = json.loads(path.read_text()).get("tud_campus_end_to_end") if path.is_file() else None
    return None if previous is None else previous | {"from_an_earlier_run": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mot17", action="store_true", help="only TUD-Campus (default: False)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also run `reidkit track` on TUD-Campus and score its tracks.txt (default: False)")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(2)
    from reidkit.video.tracker import TrackerConfig
    embedders = [e for e in EMBEDDERS if e != "recipe60" or (REPO / "runs" / "recipe60" / "summary.json").is_file()]
    load_before = os.getloadavg()[0]
    tud = sequence(TUD)
    result = {"tud_campus": bench_sequence(tud, embedders), "tud_campus_ablation": ablation(tud, "emb_val"),
              "tud_campus_detect_every": detect_every(tud, "emb_val")}
    if args.end_to_end:
        result["tud_campus_end_to_end"] = end_to_end("emb_val")
    elif (previous := previous_end_to_end()) is not None:
        result["tud_campus_end_to_end"] = previous  # kept from the last --end-to-end run (it re-detects: slow)
    if not args.skip_mot17:
        result["mot17_mini"] = mot17_mini(embedders)
    result["environment"] = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                             "load_average_before": round(load_before, 2),
                             "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                             "maintained": f"trackers {version('trackers')}, supervision {version('supervision')}",
                             "tracker_defaults": asdict(TrackerConfig()), "public_config": public_settings(),
                             "embedders": {e: str(EMBEDDERS[e].relative_to(REPO.parent)) for e in embedders}}
    OUT.mkdir(parents=True, exist_ok=True)
    from reidkit.utils import atomic_write_json, atomic_write_text
    atomic_write_json(result, OUT / "video_tracking.json")
    atomic_write_text(markdown(result), OUT / "video_tracking.md")
    print(markdown(result))


def mot17_mini(embedders: list[str]) -> list[dict]:
    """The seven MOT17-mini clips (4-8 frames each) as one combined score per tracker (TrackEval's combination
    over sequences), a smoke test of settings tuned on TUD-Campus."""
    from reidkit.metrics.tracking import evaluate_multicamera
    seqs = [sequence(f) for f in sorted((MOT / "MOT17-mini" / "train").iterdir())]
    out = []
    for kind in ("adas", "public"):
        setups = [("greedy IoU (reference)", None, None)] + \
            [(f"reidkit ({name})", cfg, emb) for name, cfg in configs(kind).items()
             for emb in (embedders if name == "appearance" else [None])]
        for name, cfg, emb in setups:
            gts, preds, offs, nums = {}, {}, {}, {}
            for seq in seqs:
                dets = detections(seq, kind)
                feats = None if emb is None else embed_sequence(seq, dets, kind, emb)
                pred = greedy_iou(dets, greedy_score(kind))[0] if cfg is None else run_tracker(cfg, dets, feats)[0]
                gts[seq["name"]], preds[seq["name"]], nums[seq["name"]] = seq["gt"], pred, len(seq["frames"])
                offs[seq["name"]] = pred if cfg is None else offline(cfg, dets, feats)
            res = evaluate_multicamera(gts, preds, num_frames=nums)["combined"]
            off = evaluate_multicamera(gts, offs, num_frames=nums)["combined"]
            out.append({"detections": kind, "tracker": name, "appearance": emb or "-",
                        **{k: round(float(res[k]), 1) for k in ("HOTA", "IDF1", "MOTA")}, "IDSW": int(res["IDSW"]),
                        "offline_tracklets": {k: round(float(off[k]), 1) for k in ("HOTA", "IDF1", "MOTA")}})
        for i, (name, *_rest) in enumerate(maintained_trackers(kind, 30.0)):
            preds = {}
            for seq in seqs:  # each clip gets the tracker built for its own frame rate
                _, factory, floor, wants_frame = maintained_trackers(kind, seq["fps"])[i]
                preds[seq["name"]] = run_maintained(factory, detections(seq, kind), floor,
                                                    seq["frames"] if wants_frame else None)[0]
            res = evaluate_multicamera(gts, preds, num_frames=nums)["combined"]
            out.append({"detections": kind, "tracker": name, "appearance": "-",
                        **{k: round(float(res[k]), 1) for k in ("HOTA", "IDF1", "MOTA")}, "IDSW": int(res["IDSW"]),
                        "offline_tracklets": None})
    return out


def offline_text(off: dict | None) -> str:
    return f"{off['IDF1']} / {off['MOTA']}" if off else "-"


def maintained_text(tag: str) -> str:
    """How the maintained trackers compare (the numbers quoted are those of the tables above)."""
    return (
        f"Maintained trackers ({tag}: Roboflow's successor of supervision's ByteTrack, which supervision 0.31 no "
        "longer ships), run on exactly the same cached detections and scored the same way; a row holds the boxes "
        "they give an id. `its defaults` = every cached box (score >= 0.05) and the package's defaults (high 0.6, "
        "new track 0.7, 2-3 consecutive frames); `our score thresholds` = TrackerConfig's high_score / "
        "new_track_score / min_hits (for_public_detections() for det.txt), boxes below low_score dropped first, "
        "IoU gates and lost-track buffer at their defaults. BoT-SORT in this package has NO appearance model; it "
        "gets the frames for its camera-motion compensation (sparse optical flow, ~20 CPU ms/frame; TUD-Campus's "
        "camera is static). Honest reading: at their own defaults they are far worse on TUD-Campus (47 of "
        "adas-0002's 60 boxes scoring 0.6-0.8 there overlap no person at IoU 0.5; 273 of det.txt's 310 boxes score "
        "below 0.6 after rescaling), a threshold mismatch rather than a tracker flaw. At our score thresholds the "
        "maintained IoU-only trackers "
        "BEAT our tracker without appearance: ByteTrack on adas-0002 (HOTA / IDF1 43.7 / 65.7 vs 39.0 / 58.8; "
        "ours keeps the better MOTA, 64.3 vs 60.7, and BoT-SORT has 63.5), OC-SORT and BoT-SORT on det.txt (IDF1 "
        "52.4 / 50.6 vs 44.2). So our IoU-only mode is no better than a maintained ByteTrack; what this tracker "
        "adds is the appearance: with either embedding it is ahead of all of them on TUD-Campus (IDF1 72.6 vs at "
        "best 65.7 with adas-0002, 64.4 vs 52.4 with det.txt). On the MOT17-mini clips BoT-SORT at ITS defaults "
        "is the best tracker with adas-0002 (HOTA 35.5 vs 26.9 for ours, still below greedy IoU at 0.5), because "
        "its high threshold is 0.6 rather than our 0.8; at our thresholds it scores exactly like ours. With FRCNN "
        "det.txt BoT-SORT ties ours (64.9 / 67.9 / 48.6 vs 64.8 / 67.7 / 48.6) while ByteTrack and OC-SORT are "
        "~10 HOTA lower: ours and BoT-SORT give the first frame's tracks an id at once, ByteTrack and OC-SORT wait "
        "for their consecutive frames, which costs much on 4-8-frame clips. The `no appearance` rows are this "
        "tracker run ByteTrack-style (IoU only, two-stage, no re-identification memory).")


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# Single-camera tracking (bench/video_tracking.py)", "",
             "TUD-Campus (MOT15 train, 71 frames 640x480, 8 people, 359 boxes): the tracker's defaults were TUNED on "
             "this sequence (the only real annotated sequence longer than a few frames here), so its numbers are "
             "not held-out. Metrics by TrackEval (reidkit.metrics.tracking); motmetrics agrees (`mm_*` in the "
             "JSON). `ms/frame` is the tracker alone (no detection, no embedding), CPU time, median of 3 runs, at load "
             f"average {env['load_average_before']} on {env['cpu_count']} cores ({env['uptime_after']}).", "",
             "Rows are the boxes `update` outputs per frame (what `reidkit track` writes); `offline` = the tracklets "
             "`finish` returns (they also hold each track's tentative first frames).", "",
             "| detections | tracker | appearance | HOTA | IDF1 | MOTA | IDSW | FP | FN | ids (gt 8) "
             "| offline IDF1 / MOTA | ms/frame |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["tud_campus"]:
        lines.append(f"| {r['detections']} | {r['tracker']} | {r['appearance']} | {r['HOTA']} | {r['IDF1']} | "
                     f"{r['MOTA']} | {r['IDSW']} | {r['FP']} | {r['FN']} | {r['pred_ids']} | "
                     f"{offline_text(r.get('offline_tracklets'))} | {r['ms_per_frame']} |")
    if "tud_campus_end_to_end" in result:
        e = result["tud_campus_end_to_end"]
        lines += ["", f"End to end: `{e['command']}` (detector, embedding, this tracker, cross-camera association; "
                  f"{e['wall_seconds']} s wall on the loaded machine"
                  f"{'; measured in an earlier --end-to-end run' if e.get('from_an_earlier_run') else ''}) "
                  f"scores HOTA {e['HOTA']} / IDF1 {e['IDF1']} / "
                  f"MOTA {e['MOTA']} ({e['IDSW']} IDSW, {e['pred_ids']} ids) on its tracks.txt."]
    lines += ["", "Ablation and sensitivity on TUD-Campus (adas-0002 + emb_val): one change at a time from the "
              "defaults.",
              "", "| variant | HOTA | IDF1 | MOTA | IDSW | FP | FN |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['HOTA']} | {r['IDF1']} | {r['MOTA']} | {r['IDSW']} | {r['FP']} | {r['FN']} |"
              for r in result["tud_campus_ablation"]]
    lines += ["", "Detecting every N-th frame on TUD-Campus (adas-0002 + emb_val; `predict` gives the Kalman boxes of "
              "live tracks in the frames between; every frame is scored):", "",
              "| detect every | HOTA | IDF1 | MOTA | IDSW | FP | FN |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['detect_every']} | {r['HOTA']} | {r['IDF1']} | {r['MOTA']} | {r['IDSW']} | {r['FP']} | "
              f"{r['FN']} |" for r in result["tud_campus_detect_every"]]
    if "mot17_mini" in result:
        lines += ["", "MOT17-mini (7 clips of 4-8 frames, FRCNN public detections or adas-0002; gt rows with consider "
                  "== 1 and class == 1), combined over the clips: a held-out smoke test. With min_hits = 3 a track "
                  "is output from its third frame, which costs much on 4-frame clips.", "",
                  "| detections | tracker | appearance | HOTA | IDF1 | MOTA | IDSW | offline IDF1 / MOTA |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['detections']} | {r['tracker']} | {r['appearance']} | {r['HOTA']} | {r['IDF1']} | "
                  f"{r['MOTA']} | {r['IDSW']} | {offline_text(r.get('offline_tracklets'))} |"
                  for r in result["mot17_mini"]]
    lines += ["", "Reading the tables: with the default detector the target (IDF1 >= 70, MOTA >= 60) is met on "
              "TUD-Campus with either embedding, but on thresholds tuned there. Most of the gain over IoU-only "
              "tracking comes from the appearance GATE (a track never takes a box whose crop is far from its "
              "appearance: max_appearance_distance), not from the cost weight (0.3 / 0.5 / 0.7 score alike). "
              "Re-identification of lost / remembered tracks changes nothing on TUD-Campus (nobody leaves and comes "
              "back within 71 frames); it is exercised by the unit tests only. MOTA is bounded by the detector: "
              "adas-0002 finds ~76 % of the people at score 0.5, with many false boxes below 0.8. On the MOT17-mini "
              "clips (1920x1080, small and crowded people) the defaults do NOT transfer to adas-0002: its scores "
              "for small people are low, so high_score 0.8 keeps too few boxes and the greedy baseline at 0.5 does "
              "better; with FRCNN public detections the tracker matches or beats the baseline."]
    lines += ["", "Detections: `adas` = the default detector (vendored OpenVINO pedestrian-detection-adas-0002, "
              f"boxes above {MIN_DET_SCORE} passed to the tracker); `public` = det/det.txt (TUD-Campus: ACF, scores "
              f"divided by the file's maximum; TrackerConfig.for_public_detections(): {public_settings()}). "
              "Appearance: "
              + ", ".join(f"`{k}` = {v}" for k, v in env["embedders"].items()) + ".",
              "", maintained_text(env.get("maintained", "trackers")), ""]
    return "\n".join(lines)


def cache_all() -> None:
    for folder in [TUD, *sorted((MOT / "MOT17-mini" / "train").iterdir())]:
        seq = sequence(folder)
        for kind in ("adas", "public"):
            dets = detections(seq, kind)
            print(seq["name"], kind, len(seq["frames"]), "frames", sum(len(x) for x in dets), "boxes",
                  len(seq["gt"]), "gt rows", flush=True)
            for emb in EMBEDDERS:
                if emb != "recipe60" or (REPO / "runs" / "recipe60" / "summary.json").is_file():  # finished only
                    embed_sequence(seq, dets, kind, emb)


if __name__ == "__main__":
    if "--cache-only" in sys.argv:
        cache_all()
    else:
        main()
