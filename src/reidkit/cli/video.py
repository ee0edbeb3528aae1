"""Verbs for video: `track` (detect, track and re-identify people across cameras) and `find` (rank a person's
sightings in a track run). The work is in reidkit.video.pipeline / reidkit.video.find."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import (
    add_batch_size,
    add_device,
    add_model,
    add_quiet,
    add_top,
    non_negative_float,
    non_negative_int,
    positive_int,
)

MODEL_HELP = ("re-identification model: a reidkit checkpoint (.pt), ONNX (.onnx) or OpenVINO IR (.xml), e.g. "
              "Intel's OSNet person-reidentification-retail-0277.xml. Required: reidkit ships no re-id weights "
              "(a model trained by `reidkit train` or `reidkit demo` fits)")


# ---------------------------------------------------------------------------------------------------- track

def _track_command(args: argparse.Namespace) -> None:
    from ..video.association import DEFAULT_RERANK_THRESHOLD, AssociationConfig
    from ..video.pipeline import TrackOptions, track

    rerank = args.rerank == "k_reciprocal"
    stitch = {} if args.stitch_seconds is None else {"stitch_seconds": args.stitch_seconds}
    threshold = args.threshold if args.threshold is not None else (
        DEFAULT_RERANK_THRESHOLD if rerank else AssociationConfig().threshold)
    options = TrackOptions(detect_every=args.detect_every, min_length=args.min_length,
                           association=AssociationConfig(threshold=threshold, rerank=rerank, **stitch),
                           online=True if args.online else None, video=not args.no_video,
                           tracker=_snapshot_tracker() if args.split_cameras_by_prefix else None)
    sources = list(args.sources)
    if args.split_cameras_by_prefix:
        from ..video.pipeline import split_by_camera_prefix

        sources = [src for folder in args.sources for src in split_by_camera_prefix(folder)]
    result = track(sources, args.out, model=args.model, detector=args.detector, detect_every=args.detect_every,
                   options=options, overwrite=args.overwrite, device=args.device, batch_size=args.batch_size,
                   show_progress=not args.quiet, workers=args.workers, scheduler=args.scheduler)
    lines = [f"{'camera':16s} {'frames':>7s} {'detections':>10s} {'tracklets':>9s} {'boxes':>7s}  note"]
    for cam in result.cameras:
        lines.append(f"{cam.name[:16]:16s} {cam.frames:7d} {cam.detections:10d} {cam.tracklets:9d} {cam.boxes:7d}  "
                     f"{cam.note()}")
    fps = result.frames / result.wall_seconds if result.wall_seconds else 0.0
    lines.append(f"{result.num_identities} global identities from {result.num_tracklets} tracklets; "
                 f"{result.frames} frames in {result.wall_seconds:.1f} s ({fps:.1f} frames/s)")
    lines += [f"note: {note}" for note in result.notes]
    lines.append(f"outputs in {result.out}/: <camera>/tracks.txt, <camera>/annotated.mp4, identities.json, crops/, "
                 "gallery/, contact_sheet.png, timeline.png, summary.json")
    sys.stdout.write("\n".join(lines) + "\n")
    if result.interrupted:
        raise KeyboardInterrupt  # exit 130 after the summary: the outputs above are valid but partial


def _snapshot_tracker():
    """Frames far apart (Market-style snapshots): a person is seen once, so one detection confirms a track."""
    from ..video.tracker import TrackerConfig

    return TrackerConfig(min_hits=1)


def add_track_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Detect, track and re-identify people in one or more cameras. Each source is a camera "
                     "(named after the file stem / folder); the same person gets the same global id in every "
                     "camera. Frame times are in seconds, so cameras may have different frame rates.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="video file, frame folder (MOTChallenge SEQ/ with img1/), camera index or stream URL")
    p.add_argument("--out", type=Path, required=True, help="output folder (refused if it exists and is not empty)")
    add_model(p, required=True, help=MODEL_HELP)
    p.add_argument("--detector", default="default",
                   help="default (vendored OpenVINO pedestrian-detection-adas-0002), hog (OpenCV, no model), a "
                        "detector .xml/.onnx, a MOTChallenge det.txt (one source), or public (each sequence's "
                        "det/det.txt)")
    p.add_argument("--detect-every", type=positive_int, default=1, metavar="N",
                   help="run the detector on every N-th frame; the tracker's motion model fills the frames between")
    p.add_argument("--threshold", type=float, metavar="D",
                   help="association threshold: the largest average distance between tracklets merged into one "
                        "identity (default: 0.35 cosine, 0.6 with --rerank k_reciprocal; calibrate it per model, "
                        "see docs/video.md)")
    p.add_argument("--rerank", choices=("none", "k_reciprocal"), default="none",
                   help="re-rank tracklet distances before clustering (offline only)")
    p.add_argument("--stitch-seconds", type=non_negative_float, metavar="S",
                   help="join a tracklet to one of its camera that ended at most S seconds before it started where "
                        "their boxes overlap (IoU >= 0.3), before association (default: 0 = off; docs/video.md)")
    p.add_argument("--min-length", type=positive_int, default=1, metavar="N",
                   help="drop tracklets with fewer boxes (counted in the summary)")
    p.add_argument("--online", action="store_true",
                   help="associate each tracklet as it ends (always on for live sources); otherwise all tracklets "
                        "are clustered at the end")
    p.add_argument("--split-cameras-by-prefix", action="store_true",
                   help="each SOURCE is a folder of Market-1501-style frames (c1s1_001051.jpg): one camera per "
                        "cN prefix, frame numbers (25 fps) give the frame times")
    p.add_argument("--no-video", action="store_true", help="do not write annotated.mp4 (saves a second decode)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier track run in --out")
    p.add_argument("--workers", type=non_negative_int, default=0, metavar="N",
                   help="0 or 1: track every camera in this process; N >= 2: each camera is a task on a local Dask "
                        "cluster of N worker processes (1 thread each, loopback only), its tracklets streamed back "
                        "and associated here (docs/scale.md)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="use an existing Dask cluster instead (tcp://host:port of `dask scheduler`); its workers "
                        "need reidkit, the model and the sources at the same paths")
    add_batch_size(p, default=32)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_track_command)




# ----------------------------------------------------------------------------------------------------- find

def _find_command(args: argparse.Namespace) -> None:
    from ..inference import build_extractor
    from ..search.index import GalleryIndex
    from ..video.find import find, format_table
    from .search import _recorded_model

    run = args.run
    gallery = run / "gallery"
    if args.model is None:
        if not (gallery / "index.json").is_file():
            raise_missing(run)
        spec = _recorded_model(GalleryIndex.load(gallery, with_features=False))
    else:
        spec = args.model
    extractor = build_extractor(spec, batch_size=args.batch_size, device=args.device)
    picture = args.picture or run / "find" / f"{Path(args.query[0]).stem}.png"
    sightings = find(run, [str(q) for q in args.query], extractor, top=args.top, picture=picture)
    if args.json:
        sys.stdout.write(json.dumps({"run": str(run), "queries": [str(q) for q in args.query],
                                     "picture": str(picture), "sightings": [s.to_json() for s in sightings]},
                                    indent=2) + "\n")
        return
    sys.stdout.write(f"{len(sightings)} sighting(s) of the person in {', '.join(map(str, args.query))} in {run}\n"
                     f"{format_table(sightings)}\npicture: {picture}\n")


def raise_missing(run: Path) -> None:
    from ..errors import ReIDError

    raise ReIDError(f"--in {run}: no gallery/index.json (not a `reidkit track` output folder)")


def add_find_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Rank the tracklets (a person's passage through one camera) of a `reidkit track` run by "
                     "similarity to query crops of one person (several crops are averaged).")
    p.add_argument("--query", type=Path, nargs="+", required=True, help="query crop(s) of one person")
    p.add_argument("--in", dest="run", type=Path, required=True, metavar="RUN", help="output folder of reidkit track")
    add_top(p, 10, "tracklets to list")
    add_model(p, required=False, help="model file (.pt, .onnx or .xml); default: the model the run used, if its "
                                      "SHA-256 still matches")
    p.add_argument("--picture", type=Path, metavar="FILE", help="ranked-list picture (default: RUN/find/<query>.png)")
    p.add_argument("--json", action="store_true", help="print the sightings as JSON")
    add_batch_size(p, default=32)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_find_command)
