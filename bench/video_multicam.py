"""Multi-camera benchmark: cross-camera IDF1 of `reidkit track` on composited CUHK03-NP videos of VALIDATION ids.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/video_multicam.py [--work bench/out/video_multicam]

1. The 150 validation identities of the seed-0 carve of ../shared/datasets/cuhk03np-detected/bounding_box_train
   (`reidkit split --val-ids 150`; the embedding runs/emb_val/best.pt never saw them) are shuffled (seed 7) and
   split: 50 for a CALIBRATION video (40 of them appear), the other 100 for the EVALUATION video (`--people` of
   them appear).
   Both are `reidkit synth-video --crops` videos (3 cameras, camera k shows the identity's CUHK03 camera-k crops,
   so matching across cameras faces real appearance change), 10 fps, 640x360.
2. Detections: the default detector (vendored adas-0002) is run once on each video (every
   `--detect-every` frames; the tracker predicts in between) and stored as det/det.txt, so each model reuses them
   (tracked with the tracker settings of the live detector, not those for rescaled public-detection scores);
   "ground truth" rows feed the ground-truth boxes instead (tracking and association only).
3. Each (model, boxes) pair is tracked once with association switched off (threshold 0: one id per tracklet);
   association is then applied to the tracklets -- without and with stitching within cameras (the tracklets'
   first / last boxes from the run's tracks), cosine or k-reciprocal re-ranked distances, with cannot-link --
   with the threshold calibrated on the calibration video (the same model and the same boxes: detector rows
   detect on the calibration video too; tracklets get their majority ground-truth id by IoU >= 0.5), and scored
   on the evaluation video with TrackEval (`metrics.tracking.evaluate_multicamera`: cross-camera IDF1 of Ristani
   et al. over all cameras, and per-camera HOTA / IDF1 / MOTA combined).
   "no association" = every tracklet its own identity.

Writes the "multicamera" section of docs/benchmarks/video.json and docs/benchmarks/video.md's table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from reidkit.data.mot import MotTable, read_gt, read_mot, write_mot
from reidkit.data.synth_video import SynthVideoConfig, generate_synth_video
from reidkit.metrics.tracking import box_iou, evaluate_multicamera
from reidkit.utils import atomic_write_json
from reidkit.video.association import (
    AssociationConfig,
    TrackletSet,
    associate,
    calibrate_threshold,
)
from reidkit.video.association import stitch as stitch_chains
from reidkit.video.pipeline import TrackOptions, seen_intervals, track
from reidkit.video.tracker import TrackerConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CUHK = SHARED / "datasets" / "cuhk03np-detected" / "bounding_box_train"
MODELS = {"reidkit emb_val (EfficientNet-Lite0, val R1 37.0)": ROOT / "runs" / "emb_val" / "best.pt",
          "Intel OSNet-AIN 0277 (off the shelf)":
              SHARED / "models/openvino/person-reidentification-retail-0277/person-reidentification-retail-0277.xml",
          # issue 25 lever 1: 0277's weights imported into PyTorch, fine-tuned on the 617 other training ids
          # (configs/cuhk03np_osnet_x1.yaml, a short schedule: docs/benchmarks/video.md says which)
          "reidkit OSNet-AIN x1.0 from 0277, short fine-tune": ROOT / "runs" / "osnet_x1_ft" / "best.pt",
          # issue 26's PL-Net row: configs/plnet_cuhk03np_cpu.yaml, 57 min on the 617 other training ids
          "reidkit PL-Net (EfficientNet-Lite0, 57-min recipe)": ROOT / "runs" / "plnet_cuhk03np" / "best.pt",
          # issue 25's best recipe: configs/cuhk03np_best.yaml (0277 start, 10 epochs) on the 617 other training ids
          "reidkit OSNet-AIN x1.0 from 0277, best recipe": ROOT / "runs" / "best" / "best.pt"}
OUT_JSON = ROOT / "docs" / "benchmarks" / "video.json"
RERANK = {"k1": 10, "k2": 3, "lambda_value": 0.3}  # tracklet sets are small: k1 below the usual 20
FPS = 10.0  # of the composited videos (make_videos)
STITCH_SECONDS = 1.0  # the stitched rows (stitching is off by default in `track`: these rows are why)


def model_label(name: str, model: Path) -> str:
    """The name, plus the validation rank-1 of a reidkit run (its summary.json) so rows say how strong it is."""
    summary = model.parent / "summary.json"
    if model.suffix != ".pt" or not summary.is_file() or "val R1" in name:
        return name
    rank1 = json.loads(summary.read_text())["best"]["rank1"]
    return f"{name[:-1]}, val R1 {rank1:.1f})" if name.endswith(")") else f"{name} (val R1 {rank1:.1f})"


def validation_ids() -> list[int]:
    from reidkit.data.market import scan_image_folder
    from reidkit.data.split import carve_validation_records

    records = scan_image_folder(CUHK).records
    carved = carve_validation_records(records, 150, seed=0)
    return sorted({r.pid for r in carved.query})


def make_videos(work: Path, people: int, seconds: float) -> dict[str, Path]:
    ids = np.random.default_rng(7).permutation(validation_ids()).tolist()
    plans = {"calibration": (ids[:50], 40, 90.0, 2), "evaluation": (ids[50:], people, seconds, 1)}
    out = {}
    for name, (pids, count, secs, seed) in plans.items():
        root = work / name
        if not (root / "identities.json").is_file():
            cfg = SynthVideoConfig(cameras=3, people=count, seconds=secs, fps=FPS, crops=str(CUHK),
                                   pids=[int(p) for p in pids], seed=seed)
            generate_synth_video(root, cfg, overwrite=True, show_progress=True)
        out[name] = root
    return out


def cameras_of(video: Path) -> list[Path]:
    return sorted(p for p in video.iterdir() if (p / "img1").is_dir())


def detect_once(video: Path, every: int, batch: int = 8) -> None:
    """det/det.txt per camera with the default detector on every `every`-th frame (skipped when present)."""
    from reidkit.video.detect import build_detector
    from reidkit.video.sources import open_source

    detector = build_detector("default", batch_size=batch)
    for seq in cameras_of(video):
        target = seq / "det" / "det.txt"
        if target.is_file():
            continue
        rows = []
        with open_source(seq) as source:
            frames = []
            for frame in source:
                if frame.index % every:
                    continue
                frames.append(frame)
                if len(frames) == batch:
                    rows += _detections(detector, frames)
                    frames = []
            rows += _detections(detector, frames)
        table = MotTable(*[np.array(c) for c in zip(*rows)]) if rows else MotTable.empty()
        target.parent.mkdir(exist_ok=True)
        write_mot(target, table)
        print(f"detected {seq.name}: {len(table)} boxes", flush=True)


def _detections(detector, frames) -> list[tuple]:
    if not frames:
        return []
    out = []
    for frame, dets in zip(frames, detector.detect([f.image for f in frames])):
        for x1, y1, x2, y2, s in dets:
            out.append((frame.index + 1, -1, (x1, y1, x2 - x1, y2 - y1), s))
    return out


class GroundTruthBoxes:
    """Detections = the ground-truth boxes of one camera (score 1)."""

    def __init__(self, seq: Path):
        self.gt = read_gt(seq / "gt" / "gt.txt")
        self.rows = self.gt.by_frame()

    def detect(self, images, frame_indices=None):
        out = []
        for index in frame_indices:
            sel = self.rows.get(index + 1, np.zeros(0, np.int64))
            xyxy = self.gt.xyxy[sel]
            out.append(np.column_stack([xyxy, np.ones(len(sel))]).astype(np.float32))
        return out


def track_unassociated(video: Path, model: Path, boxes: str, out: Path, every: int = 1,
                       tracker: TrackerConfig | None = None) -> dict:
    """One id per tracklet (threshold 0); returns timings."""
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    seqs = cameras_of(video)
    detector = [GroundTruthBoxes(s) for s in seqs] if boxes == "gt" else "public"
    started = time.perf_counter()
    result = track([str(s) for s in seqs], out, model=str(model), detector=detector, overwrite=True,
                   detect_every=every,
                   options=TrackOptions(association=AssociationConfig(threshold=0.0, stitch_seconds=0.0),
                                        video=False, crops=False, detect_every=every,
                                        tracker=tracker or TrackerConfig()),
                   show_progress=False)
    summary = result.to_json()
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(summary, out / "summary.json")
    return summary


def run_tracklets(run: Path) -> tuple[TrackletSet, np.ndarray, dict[str, MotTable]]:
    """Tracklets of an unassociated run: features from the gallery, spans from identities.json, and each camera's
    tracks with every row's id replaced by its tracklet number (1..T). Threshold 0 nearly always gives one id per
    tracklet, but two tracklets with identical features (the same crop pasted twice) could share one: rows are
    told apart by camera and frame range (tracklets of one id never overlap in one camera: cannot-link)."""
    from reidkit.search.index import GalleryIndex

    doc = json.loads((run / "identities.json").read_text())
    index = GalleryIndex.load(run / "gallery")
    entries = {(camera, int(t["track"])): (int(gid), t) for gid, e in doc["identities"].items()
               for camera, ts in e["cameras"].items() for t in ts}
    keys = list(zip(index.metadata.sources.tolist(), index.metadata.tracks.tolist()))
    spans = np.array([(entries[k][1]["start"], entries[k][1]["end"]) for k in keys])
    lengths = [entries[k][1]["boxes"] for k in keys]
    tables = {}
    for camera in (c["name"] for c in doc["cameras"]):
        table = read_mot(run / camera / "tracks.txt")
        numbers = np.zeros(len(table), np.int64)
        for n, key in enumerate(keys, 1):
            if key[0] != camera:
                continue
            gid, entry = entries[key]
            numbers[(table.ids == gid) & (table.frames >= entry["first_frame"])
                    & (table.frames <= entry["last_frame"])] = n
        table.ids = numbers
        tables[camera] = table.select(numbers > 0)
    first, last = np.zeros((len(keys), 4)), np.zeros((len(keys), 4))  # what stitching compares
    intervals: list = [None] * len(keys)   # what cannot-link compares (as `track` computes them)
    for table in tables.values():
        order = np.lexsort((table.frames, table.ids))
        ids = table.ids[order]
        starts = np.r_[True, ids[1:] != ids[:-1]]
        ends = np.r_[ids[1:] != ids[:-1], True]
        first[ids[starts] - 1] = table.xyxy[order[starts]]
        last[ids[ends] - 1] = table.xyxy[order[ends]]
        for n, frames in zip(ids[starts], np.split(table.frames[order], np.flatnonzero(starts)[1:])):
            intervals[n - 1] = seen_intervals(frames, spans[n - 1, 0], FPS, tolerance=3)
    tracklets = TrackletSet.from_arrays(index.features, index.metadata.camids, spans[:, 0], spans[:, 1], lengths,
                                        first, last, intervals)
    return tracklets, np.arange(1, len(keys) + 1), tables


def tracklet_truth(gids: np.ndarray, tables: dict[str, MotTable], video: Path) -> np.ndarray:
    """Majority ground-truth id of each tracklet's boxes (IoU >= 0.5, best match per box); a tracklet matching
    nobody gets a unique negative id (a false track)."""
    votes: dict[int, dict[int, int]] = {}
    for camera, pred in tables.items():
        gt = read_gt(video / camera / "gt" / "gt.txt")
        gt_rows = gt.by_frame()
        for frame, rows in pred.by_frame().items():
            g = gt_rows.get(frame)
            if g is None:
                continue
            iou = box_iou(pred.xyxy[rows], gt.xyxy[g])
            best = iou.argmax(axis=1)
            for r, b in zip(rows, best):
                if iou[list(rows).index(r), b] >= 0.5:
                    per = votes.setdefault(int(pred.ids[r]), {})
                    per[int(gt.ids[g[b]])] = per.get(int(gt.ids[g[b]]), 0) + 1
    return np.array([max(votes[g], key=votes[g].get) if g in votes else -g for g in gids.tolist()])


def score(labels: np.ndarray, gids: np.ndarray, tables: dict[str, MotTable], video: Path) -> dict:
    mapping = dict(zip(gids.tolist(), labels.tolist()))
    pred = {}
    for camera, table in tables.items():
        t = table.select(np.ones(len(table), bool))
        t.ids = np.array([mapping[int(i)] for i in table.ids], np.int64)
        pred[camera] = t
    gt = {camera: read_gt(video / camera / "gt" / "gt.txt") for camera in tables}
    result = evaluate_multicamera(gt, pred)
    combined = result["combined"]
    return {"cross_camera_IDF1": round(result["cross_camera"]["IDF1"], 1), "IDF1": round(combined["IDF1"], 1),
            "HOTA": round(combined["HOTA"], 1), "MOTA": round(combined["MOTA"], 1),
            "identities": int(len(np.unique(labels))), "true_identities": combined.get("gt_ids")}


def tracker_label(gate_iou: float) -> str:
    return "appearance gate always (before 2026-12-07)" if gate_iou >= 1.0 else f"gate below IoU {gate_iou:g}"


def evaluate_model(videos: dict[str, Path], model_name: str, model: Path, boxes: str, work: Path,
                   every: int, gate_iou: float = 1.0) -> list[dict]:
    """Thresholds come from the calibration video tracked the same way (same model, boxes and detection stride)."""
    # cached runs are per model: the OpenVINO model is "osnet", runs/emb_val "emb" (the names of the first runs),
    # any other checkpoint its run folder's name
    tag = "osnet" if model.suffix == ".xml" else {"emb_val": "emb"}.get(model.parent.name, model.parent.name)
    ev_every = every if boxes == "detector" else 1
    suffix = f"{tag}_{boxes}" + ("" if ev_every == 1 else f"_every{ev_every}") + \
        ("" if gate_iou >= 1.0 else f"_gate{gate_iou:g}")
    tracker = TrackerConfig(appearance_gate_iou=gate_iou)
    cal_run = work / "runs" / f"calibration_{suffix}"
    track_unassociated(videos["calibration"], model, boxes, cal_run, ev_every, tracker)
    cal_tracklets, cal_gids, cal_tables = run_tracklets(cal_run)
    cal_truth = tracklet_truth(cal_gids, cal_tables, videos["calibration"])
    ev_run = work / "runs" / f"evaluation_{suffix}"
    timing = track_unassociated(videos["evaluation"], model, boxes, ev_run, ev_every, tracker)
    ev_tracklets, ev_gids, ev_tables = run_tracklets(ev_run)
    label = "ground truth" if boxes == "gt" else f"adas-0002 every {ev_every} frames" if ev_every > 1 else "adas-0002"
    rows = [{"model": model_name, "boxes": label, "tracker": tracker_label(gate_iou),
             "association": "none (one id per tracklet)", "threshold": None,
             **score(np.arange(1, len(ev_gids) + 1), ev_gids, ev_tables, videos["evaluation"])}]
    for stitch, rerank in itertools.product((0.0, STITCH_SECONDS), (False, True)):
        cfg = AssociationConfig(rerank=rerank, stitch_seconds=stitch, **(RERANK if rerank else {}))
        threshold, curve = calibrate_threshold(cal_tracklets, cal_truth, cfg)
        labels = associate(ev_tracklets, dataclasses.replace(cfg, threshold=threshold))
        name = ("k-reciprocal" if rerank else "cosine") + " + cannot-link"
        rows.append({"model": model_name, "boxes": label, "tracker": tracker_label(gate_iou),
                     "association": f"stitching ({stitch:g} s) + {name}" if stitch else name,
                     "threshold": round(threshold, 4),
                     "calibration_tracklet_IDF1": round(max(v for _, v in curve), 1),
                     "chains": len(stitch_chains(ev_tracklets, cfg)[0]),
                     **score(labels, ev_gids, ev_tables, videos["evaluation"])})
    for row in rows:
        row["tracklets"] = len(ev_gids)
        row["track_seconds"] = timing.get("wall_seconds")
        print(json.dumps(row), flush=True)
    return rows


ASSOCIATIONS = ("none (one id per tracklet)", "cosine + cannot-link", "k-reciprocal + cannot-link",
                f"stitching ({STITCH_SECONDS:g} s) + cosine + cannot-link",
                f"stitching ({STITCH_SECONDS:g} s) + k-reciprocal + cannot-link")


def markdown(rows: list[dict], meta: dict) -> str:
    """One line per (model, boxes): cross-camera IDF1 of each association, then the per-camera figures and the
    identity count of the cosine row."""
    lines = ["| model | boxes | tracker | tracklets | none | cosine | k-reciprocal | stitching + cosine | stitching + "
             "k-reciprocal | per-camera IDF1 / HOTA / MOTA (cosine) | ids (true) (cosine) | threshold (cosine) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str, str], dict[str, dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["boxes"], r.get("tracker", tracker_label(1.0))), {})[r["association"]] = r
    for (model, boxes, tracker), by in groups.items():
        cells = [f"**{by[a]['cross_camera_IDF1']}**" if a in by else "-" for a in ASSOCIATIONS]
        c = by.get(ASSOCIATIONS[1], next(iter(by.values())))
        lines.append(f"| {model} | {boxes} | {tracker} | {c.get('tracklets', '-')} | " + " | ".join(cells) +
                     f" | {c['IDF1']} / {c['HOTA']} / {c['MOTA']} | {c['identities']} ({c['true_identities']}) | "
                     f"{c['threshold'] if c['threshold'] is not None else '-'} |")
    return "\n".join(lines) + f"\n\n{meta['videos']}\n"


def report() -> str:
    """docs/benchmarks/video.md from every section of docs/benchmarks/video.json."""
    data = json.loads(OUT_JSON.read_text())
    parts = ["# Video benchmarks (`reidkit track`)", "",
             "Generated by `bench/video_multicam.py --report` from `video.json` (written by `bench/video_multicam.py` "
             "and `bench/video_speed.py`). 2 CPU cores shared with other jobs: the load average is recorded with "
             "each section.", ""]
    mc = data.get("multicamera")
    if mc:
        parts += ["## Multi-camera: cross-camera IDF1 on validation identities", "",
                  "CUHK03-NP crops of the 150 validation identities (seed-0 carve; the reidkit model never saw them) "
                  "composited into synchronised camera videos by `reidkit synth-video --crops`. Thresholds are "
                  "calibrated on a separate video of 40 other validation identities (same model and boxes), then "
                  "applied to the evaluation video. TrackEval: cross-camera IDF1 (Ristani et al.) over all cameras "
                  "at once; per-camera IDF1 / HOTA / MOTA combined over the cameras.", "",
                  markdown(mc["rows"], mc), f"Load average at start: {mc.get('load_avg_1min_at_start')}.", "",
                  *[f"- {note}" for note in mc.get("notes", [])], ""]
    speed = data.get("speed")
    if speed:
        parts += ["## Speed (2 threads)", "",
                  "frames/s end to end = frames / wall time of `track` (outputs included, annotated video excluded); "
                  "ms per frame by stage.", "",
                  "| source | re-id model | detect every | frames/s | decode | detect | embed | track | associate "
                  "| write | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in speed["rows"]:
            ms = r["ms_per_frame"]
            tag = " (with annotated.mp4)" if r.get("with_annotated_video") else ""
            parts.append(f"| {r['source']}{tag} | {r['model']} | {r['detect_every']} | **{r['fps_end_to_end']}** | "
                         + " | ".join(f"{ms[k]:.1f}" for k in ("decode", "detect", "embed", "track", "associate",
                                                                 "write")) + f" | {r['load_avg_1min']} |")
        parts.append("")
    for key, title in (("memory", "OpenVINO OSNet 0288"), ("memory_torch", "PyTorch checkpoint runs/emb_val")):
        mem = data.get(key)
        if not mem:
            continue
        parts += [f"## Memory over a long stream: {title}", "",
                  f"Synthetic live-like stream (one camera, 320x180, 10 fps, frames rendered on the fly), online "
                  f"association, detection every {mem['detect_every']} frames, re-id model {mem.get('model', '0288')}: "
                  f"{mem['frames']} frames ({mem['stream_minutes']:g} min of stream time), {mem['tracklets']} "
                  f"tracklets. Load average {mem['load_avg_1min']}.", "",
                  "| stream time (min) | RSS (MB) | peak RSS (MB) | wall (s) |", "|---|---|---|---|"]
        for smp in mem["samples"]:
            if smp["stream_minutes"] not in (0.0, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 29.0) \
                    and not smp.get("after_outputs"):
                continue
            tag = " (after final outputs)" if smp.get("after_outputs") else ""
            parts.append(f"| {smp['stream_minutes']}{tag} | {smp['rss_mb']} | {smp['peak_rss_mb']} | "
                         f"{smp['wall_s']} |")
        parts += ["", *[f"- {note}" for note in mem.get("notes", [])], ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "video_multicam")
    parser.add_argument("--people", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--boxes", nargs="+", default=["gt", "detector"], choices=["gt", "detector"])
    parser.add_argument("--models", nargs="+", default=list(range(len(MODELS))), type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--detect-every", type=int, default=3, help="detector rows: detect every N-th frame")
    parser.add_argument("--stage", choices=["videos", "all"], default="all")
    parser.add_argument("--gate-iou", type=float, default=1.0,
                        help="tracker: appearance_gate_iou (1 = the appearance gate always applies)")
    parser.add_argument("--report", action="store_true", help="only write docs/benchmarks/video.md from video.json")
    args = parser.parse_args()
    if args.report:
        from reidkit.utils import atomic_write_text

        atomic_write_text(report() + "\n", OUT_JSON.with_suffix(".md"))
        return
    torch.set_num_threads(args.threads)
    videos = make_videos(args.work, args.people, args.seconds)
    if "detector" in args.boxes:
        for video in videos.values():
            detect_once(video, args.detect_every)
    if args.stage == "videos":
        return
    load = os.getloadavg()[0]
    rows = []
    names = list(MODELS)
    for m in args.models:
        for boxes in args.boxes:
            rows += evaluate_model(videos, model_label(names[m], MODELS[names[m]]), MODELS[names[m]], boxes,
                                   args.work, args.detect_every, args.gate_iou)
    meta = {"videos": f"Evaluation video: {args.people} validation identities, 3 cameras x {args.seconds:g} s at "
                      "10 fps (640x360); calibration video: 40 other validation identities, 3 x 90 s.",
            "load_avg_1min_at_start": round(load, 2)}
    data = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
    def key(row: dict) -> tuple:
        return row["model"], row["boxes"], row.get("tracker", tracker_label(1.0))

    measured = {key(row) for row in rows}  # rows not measured in this run are kept
    old = data.get("multicamera", {})
    kept = [row for row in old.get("rows", []) if key(row) not in measured]
    data["multicamera"] = {**old, "rows": kept + rows, **meta}
    atomic_write_json(data, OUT_JSON)
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
