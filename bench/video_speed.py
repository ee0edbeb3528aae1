"""Speed of `reidkit track` on 2 CPU cores: seconds per stage and frames/s end to end, detecting every N-th frame.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/video_speed.py [--every 1 2 3 5] [--models 0288 0277]

Sources: ../shared/videos/people-detection.264 (596 frames, 768x432) and ../shared/datasets/mot/TUD-Campus (71
frames, 640x480). Detector: the default (vendored adas-0002, OpenVINO). Re-id models: Intel OSNet x0.25 (0288) and
x1.0 (0277) through OpenVINO. End to end = frames / wall time of `track` without the annotated video (a second
decode + H.264 encode, timed separately as "annotate"). Stages are measured inside the pipeline (decode, detect,
embed, track, associate, write). The load average is recorded: the machine is shared.

Writes the "speed" section of docs/benchmarks/video.json (other sections are kept) and prints a table.

    --memory MINUTES: instead, a live-like synthetic stream (one camera, `SyntheticVideo` frames rendered on the fly,
    320x180 at 10 fps, people coming and going all along) tracked ONLINE with detection every 10th frame (boxes =
    the generator's ground truth: the detector is stateless, the pipeline's memory is what is measured) and the
    small OSNet 0288; resident memory (VmRSS) and its peak (VmHWM) are sampled every minute of stream time.
    Writes the "memory" section.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reidkit.utils import atomic_write_json
from reidkit.video.pipeline import TrackOptions, track

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SOURCES = {"people-detection.264 (768x432)": SHARED / "videos" / "people-detection.264",
           "TUD-Campus (640x480)": SHARED / "datasets" / "mot" / "TUD-Campus"}
MODELS = {k: SHARED / f"models/openvino/person-reidentification-retail-{k}/person-reidentification-retail-{k}.xml"
          for k in ("0288", "0277")}
OUT_JSON = ROOT / "docs" / "benchmarks" / "video.json"


def measure(source: Path, model: Path, every: int, video: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        started = time.perf_counter()
        result = track([str(source)], Path(tmp) / "run", model=str(model), detect_every=every,
                       options=TrackOptions(detect_every=every, video=video), show_progress=False)
        wall = time.perf_counter() - started
    stages = {k: round(v, 3) for k, v in result.timings.items()}
    core = sum(v for k, v in result.timings.items() if k != "write")
    return {"frames": result.frames, "wall_s": round(wall, 2), "fps_end_to_end": round(result.frames / wall, 1),
            "fps_without_outputs": round(result.frames / core, 1) if core else None,
            "seconds_per_stage": stages,
            "ms_per_frame": {k: round(1000 * v / max(result.frames, 1), 2) for k, v in result.timings.items()},
            "tracklets": result.num_tracklets, "identities": result.num_identities, "load_avg_1min": round(load, 2)}


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return round(fields["VmRSS"], 1), round(fields["VmHWM"], 1)


def memory_stream(minutes: float, every: int = 10, model: str | None = None) -> dict:
    """Track a synthetic stream of `minutes` of video time; RSS every minute of stream time."""
    from reidkit.data.synth_video import SyntheticVideo, SynthVideoConfig
    from reidkit.video.sources import Frame, FrameSource

    # One synthetic minute (30 people) replayed back to back: the generator caches every identity's sprites, so a
    # 30-minute plan would grow the GENERATOR by ~1.8 MB per new person (measured: +45 MB/min); looping keeps the
    # source's memory fixed so the curve shows the pipeline's. Each replay brings the people back as new tracklets.
    cfg = SynthVideoConfig(cameras=1, people=30, seconds=60.0, fps=10.0, width=320, height=180, seed=3)
    video = SyntheticVideo(cfg)
    loops = int(np.ceil(minutes))
    samples: list[dict] = []
    boxes: dict[int, np.ndarray] = {}
    started = time.perf_counter()

    class Stream(FrameSource):
        is_live = True

        def _frames(self):
            next_sample = 0.0
            frames = ((loop * cfg.num_frames + i, image, gt) for loop in range(loops)
                      for i, image, gt in video.frames(0))
            for index, image, gt in frames:
                boxes[index] = np.column_stack([gt.xyxy, np.ones(len(gt))]).astype(np.float32)
                t = index / cfg.fps
                if t >= next_sample:
                    rss, peak = _rss_mb()
                    samples.append({"stream_minutes": round(t / 60, 2), "rss_mb": rss, "peak_rss_mb": peak,
                                    "wall_s": round(time.perf_counter() - started, 1)})
                    print(json.dumps(samples[-1]), flush=True)
                    next_sample += 60.0
                yield Frame(index, t, image)

    class GeneratorBoxes:
        def detect(self, images, frame_indices=None):
            found = [boxes.pop(i) for i in frame_indices]
            for index in [i for i in boxes if i < max(frame_indices)]:  # frames between detections
                del boxes[index]
            return found

    stream = Stream("synthetic-stream", "stream", cfg.fps, (cfg.width, cfg.height), None)
    with tempfile.TemporaryDirectory() as tmp:
        result = track([stream], Path(tmp) / "run", model=model or str(MODELS["0288"]), detector=GeneratorBoxes(),
                       options=TrackOptions(detect_every=every, online=True, video=False), detect_every=every,
                       show_progress=False)
        boxes.clear()
        rss, peak = _rss_mb()
        samples.append({"stream_minutes": round(result.frames / cfg.fps / 60, 2), "rss_mb": rss, "peak_rss_mb": peak,
                        "wall_s": round(time.perf_counter() - started, 1), "after_outputs": True})
        return {"stream_minutes": minutes, "model": model or "0288", "frames": result.frames,
                "tracklets": result.num_tracklets,
                "identities": result.num_identities, "detect_every": every, "samples": samples,
                "seconds_per_stage": {k: round(v, 1) for k, v in result.timings.items()},
                "load_avg_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--models", nargs="+", default=["0288", "0277"], choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--annotate", action="store_true", help="also time the annotated video once per source")
    parser.add_argument("--memory", type=float, metavar="MINUTES", help="run the memory stream instead")
    parser.add_argument("--memory-model", help="re-id model of the memory stream (default: OSNet 0288)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory:
        result = memory_stream(args.memory, model=args.memory_model)
        data = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
        data["memory" if not args.memory_model else "memory_torch"] = result
        atomic_write_json(data, OUT_JSON)
        return
    rows = []
    for name, source in SOURCES.items():
        for model in args.models:
            for every in args.every:
                row = {"source": name, "model": model, "detect_every": every,
                       **measure(source, MODELS[model], every, video=False)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        if args.annotate:
            with_video = measure(source, MODELS[args.models[0]], 1, video=True)
            rows.append({"source": name, "model": args.models[0], "detect_every": 1, "with_annotated_video": True,
                         **with_video})
            print(json.dumps(rows[-1]), flush=True)
    data = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
    data["speed"] = {"threads": args.threads, "cpu": os.cpu_count(), "rows": rows,
                     "note": "end to end = frames / wall time of track() with outputs but without annotated.mp4"}
    atomic_write_json(data, OUT_JSON)
    print(f"{'source':32s} {'model':5s} {'N':>2s} {'fps':>6s} " + " ".join(f"{s:>8s}" for s in
                                                                         ("decode", "detect", "embed", "track")))
    for r in rows:
        ms = r["ms_per_frame"]
        print(f"{r['source']:32s} {r['model']:5s} {r['detect_every']:2d} {r['fps_end_to_end']:6.1f} "
              + " ".join(f"{ms[s]:8.2f}" for s in ("decode", "detect", "embed", "track")))


if __name__ == "__main__":
    main()
