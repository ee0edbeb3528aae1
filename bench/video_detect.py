"""Person detectors: speed on real video and detection quality on TUD-Campus.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/video_detect.py [--frames 120] [--hog-frames 20]

Speed: frames/s and detections/s of the default detector (pedestrian-detection-adas-0002 through OpenVINO) at batch
1 and 4, and of OpenCV's HOG, at 1 and 2 threads, on ../shared/videos/people-detection.264 (768x432, first
--frames frames) and ../shared/datasets/mot/TUD-Campus (640x480, 71 frames). Frames are decoded once beforehand (the
decode rate is reported on its own), so the figures are the detector's alone: resize, inference, post-processing.
Quality on TUD-Campus (71 frames, 359 ground-truth boxes): precision / recall / F1 at IoU 0.5 (one-to-one matching
per frame, Hungarian) at each detector's default threshold, and average precision (VOC-style, all-point) over the
scores, for adas-0002, HOG and the public ACF detections of det/det.txt.

Also times `reidkit synth-video` (3 cameras x 120 s x 10 fps at 640x360: 3,600 frames written as JPEG + ground
truth) with synthetic pedestrians and with CUHK03-NP validation crops, on one thread: CPU seconds (the cost on one
core) and wall seconds (inflated when the shared machine is busy).

Writes docs/benchmarks/video_detect.json and .md with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from reidkit.data.mot import read_gt
from reidkit.metrics.tracking import box_iou
from reidkit.utils import atomic_write_json, atomic_write_text
from reidkit.video.detect import build_detector
from reidkit.video.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VIDEO = SHARED / "videos" / "people-detection.264"
TUD = SHARED / "datasets" / "mot" / "TUD-Campus"
OUT_DIR = ROOT / "docs" / "benchmarks"


def decode(spec: Path, limit: int) -> tuple[list, float]:
    start = time.perf_counter()
    with open_source(spec) as source:
        frames = [f for _, f in zip(range(limit), source)]
    return frames, len(frames) / (time.perf_counter() - start)


def speed(name: str, frames: list, threads: int, batch: int) -> dict:
    cv2.setNumThreads(threads)
    detector = build_detector(name, threads=threads, batch_size=batch)
    detector.detect_frames(frames[:batch])  # warm-up: compilation, allocation
    start, cpu = time.perf_counter(), time.process_time()
    boxes = detector.detect_frames(frames)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    count = sum(len(b) for b in boxes)
    return {"frames_s": round(len(frames) / seconds, 2), "detections_s": round(count / seconds, 1),
            "ms_frame": round(1000 * seconds / len(frames), 1), "cpu_ms_frame": round(1000 * cpu / len(frames), 1),
            "detections_frame": round(count / len(frames), 2)}


def match_counts(gt_boxes: np.ndarray, det_boxes: np.ndarray) -> int:
    """True positives of a one-to-one matching at IoU >= 0.5 (Hungarian on IoU)."""
    if not len(gt_boxes) or not len(det_boxes):
        return 0
    iou = box_iou(gt_boxes, det_boxes)
    rows, cols = linear_sum_assignment(-iou)
    return int((iou[rows, cols] >= 0.5).sum())


def average_precision(gt: dict[int, np.ndarray], dets: dict[int, np.ndarray]) -> float:
    """VOC all-point AP at IoU 0.5: detections by descending score, each matched greedily to the best unmatched gt."""
    records = [(float(d[4]), f, d[:4]) for f, ds in dets.items() for d in ds]
    records.sort(key=lambda r: -r[0])
    used = {f: np.zeros(len(g), bool) for f, g in gt.items()}
    total = sum(len(g) for g in gt.values())
    tp = np.zeros(len(records))
    for k, (_, f, box) in enumerate(records):
        g = gt.get(f, np.zeros((0, 4)))
        if not len(g):
            continue
        iou = box_iou(box[None], g)[0]
        iou[used[f]] = -1
        best = int(np.argmax(iou))
        if iou[best] >= 0.5:
            tp[k], used[f][best] = 1, True
    cum_tp = np.cumsum(tp)
    recall = cum_tp / max(total, 1)
    precision = cum_tp / np.arange(1, len(records) + 1)
    envelope = np.maximum.accumulate(np.r_[precision, 0][::-1])[::-1]
    steps = np.diff(np.r_[0, recall])
    return float((steps * envelope[:-1]).sum())


def quality(name: str, frames: list, gt_table, threshold: float | None) -> dict:
    gt = {f.index: gt_table.at(f.index + 1).xyxy for f in frames}
    detector = build_detector(name, threads=2)
    scored = build_detector(name, threads=2, threshold=0.05 if name != "hog" else 0.0)  # the full score range
    dets = dict(zip(gt, (d for d in detector.detect_frames(frames))))
    tp = sum(match_counts(gt[f], dets[f][:, :4]) for f in gt)
    num_dets, num_gt = sum(len(d) for d in dets.values()), sum(len(g) for g in gt.values())
    precision, recall = tp / max(num_dets, 1), tp / max(num_gt, 1)
    all_dets = dict(zip(gt, scored.detect_frames(frames)))
    return {"detector": name if os.sep not in name else "public det.txt (ACF)", "threshold": detector.threshold,
            "detections": num_dets, "gt_boxes": num_gt, "tp": tp, "precision": round(100 * precision, 1),
            "recall": round(100 * recall, 1), "f1": round(200 * precision * recall / max(precision + recall, 1e-9), 1),
            "ap50": round(100 * average_precision(gt, all_dets), 1)}


def synth_speed(crops: Path | None) -> dict:
    import shutil
    import tempfile

    from reidkit.data.synth_video import SynthVideoConfig, generate_synth_video

    cv2.setNumThreads(1)
    cfg = SynthVideoConfig(crops=None if crops is None else str(crops), val_ids=None if crops is None else 150)
    out = Path(tempfile.mkdtemp(prefix="synth-video-bench-"))
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        generate_synth_video(out / "site", cfg, show_progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        boxes = sum(len((out / "site" / c / "gt" / "gt.txt").read_text().splitlines()) for c in cfg.camera_names)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"people": "synthetic pedestrians" if crops is None else "CUHK03-NP validation crops (150 ids)",
            "frames": cfg.cameras * cfg.num_frames, "gt_boxes": boxes, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
            "frames_per_cpu_s": round(cfg.cameras * cfg.num_frames / cpu, 1)}


def markdown(result: dict) -> str:
    lines = ["# Person detectors: speed and quality", "",
             f"Measured {result['date']} on {result['machine']}; load average {result['load_before']:.2f} before, "
             f"{result['load_after']:.2f} after (a shared 2-core machine: other jobs slow these figures down).",
             "Frames are decoded beforehand; figures are the detector alone (resize, inference, NMS). CPU ms/frame "
             "is the process's CPU time (all its threads) per frame: what the work costs, less sensitive to other "
             "jobs than the wall-clock figures.", "",
             "## Speed", "",
             "| detector | batch | source | size | threads | frames/s | ms/frame | CPU ms/frame | detections/s | "
             "detections/frame |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["speed"]:
        lines.append(f"| {r['detector']} | {r['batch']} | {r['source']} | {r['size']} | {r['threads']} | "
                     f"{r['frames_s']} | {r['ms_frame']} | {r['cpu_ms_frame']} | {r['detections_s']} | "
                     f"{r['detections_frame']} |")
    lines += ["", "Decoding alone: " + ", ".join(f"{k} {v:.0f} frames/s" for k, v in result["decode_fps"].items())
              + " (PyAV / the frame-folder reader, one thread).", "",
              "## Quality on TUD-Campus (IoU 0.5)", "",
              "| detector | threshold | detections | precision | recall | F1 | AP50 |", "|---|---|---|---|---|---|---|"]
    for r in result["quality"]:
        lines.append(f"| {r['detector']} | {r['threshold']} | {r['detections']} | {r['precision']} | {r['recall']} | "
                     f"{r['f1']} | {r['ap50']} |")
    if result.get("synth_video"):
        lines += ["", "## synth-video generation (3 cameras x 120 s x 10 fps, 640x360, one thread)", "",
                  "| people | frames | gt boxes | CPU s | wall s | frames per CPU s |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['people']} | {r['frames']} | {r['gt_boxes']} | {r['cpu_s']} | {r['wall_s']} | "
                  f"{r['frames_per_cpu_s']} |" for r in result["synth_video"]]
    lines += ["", f"TUD-Campus: {result['quality'][0]['gt_boxes']} ground-truth boxes in 71 frames. Precision/recall "
              "at each detector's default threshold with one-to-one matching; AP50 over the whole score range "
              "(adas-0002 from 0.05). Public detections are the MOT15 ACF boxes, scores divided by the file's "
              "maximum.", "", "Reproduce: `OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/video_detect.py`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=120, help="frames of people-detection.264 to time")
    parser.add_argument("--hog-frames", type=int, default=20, help="frames per source for HOG (slow)")
    parser.add_argument("--no-synth", action="store_true", help="skip timing synth-video")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    video, video_fps = decode(VIDEO, args.frames)
    tud, tud_fps = decode(TUD, 10_000)
    sources = {"people-detection.264": video, "TUD-Campus": tud}
    rows = []
    for threads in (1, 2):
        for source, frames in sources.items():
            size = f"{frames[0].image.shape[1]}x{frames[0].image.shape[0]}"
            for name, batch, limit in (("default", 1, None), ("default", 4, None), ("hog", 1, args.hog_frames)):
                row = {"detector": "adas-0002" if name == "default" else name, "batch": batch, "source": source,
                       "size": size, "threads": threads, **speed(name, frames[:limit], threads, batch)}
                rows.append(row)
                print(row, flush=True)
    gt = read_gt(TUD / "gt" / "gt.txt")
    qualities = []
    for name in ("default", "hog", str(TUD / "det" / "det.txt")):
        qualities.append(quality(name, tud, gt, None))
        print(qualities[-1], flush=True)
    synth = [] if args.no_synth else [synth_speed(None), synth_speed(SHARED / "datasets" / "cuhk03np-detected" /
                                                                      "bounding_box_train")]
    for row in synth:
        print(row, flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "load_before": load_before, "load_after": os.getloadavg()[0],
              "decode_fps": {"people-detection.264": round(video_fps, 1), "TUD-Campus": round(tud_fps, 1)},
              "speed": rows, "quality": qualities, "synth_video": synth}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    atomic_write_json(result, OUT_DIR / "video_detect.json")
    atomic_write_text(markdown(result), OUT_DIR / "video_detect.md")
    print(markdown(result))


if __name__ == "__main__":
    main()
