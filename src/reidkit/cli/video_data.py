"""Verbs for video ground truth: `reidkit synth-video` (synthetic multi-camera videos with exact MOT ground truth)
and `reidkit evaluate-tracks` (HOTA / IDF1 / MOTA per camera and cross-camera IDF1)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from .options import add_quiet, positive_int


def _size(text: str) -> tuple[int, int]:
    """argparse type: WIDTHxHEIGHT."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x360") from None
    if width < 64 or height < 64:
        raise argparse.ArgumentTypeError(f"{text}: at least 64x64")
    return width, height


def _read_pids(args: argparse.Namespace) -> list[int] | None:
    if args.pids is None and args.ids is None:
        return None
    if args.ids is not None:
        try:
            text = args.ids.read_text()
            pids = json.loads(text) if args.ids.suffix == ".json" else [int(v) for v in text.replace(",", " ").split()]
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--ids {args.ids}: cannot read identities ({exc}); expected one id per line or a "
                              "JSON list") from None
    else:
        try:
            pids = [int(v) for v in args.pids.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(f"--pids {args.pids!r}: expected comma-separated integers") from None
    if not pids:
        raise ConfigError("--ids/--pids: no identities given")
    return sorted(set(int(p) for p in pids))


def synth_video_command(args: argparse.Namespace) -> None:
    from ..data.synth_video import SynthVideoConfig, generate_synth_video

    pids = _read_pids(args)
    if (pids is not None or args.val_ids is not None) and args.crops is None:
        raise ConfigError("--ids/--pids/--val-ids choose identities of --crops; give --crops too")
    cfg = SynthVideoConfig(cameras=args.cameras, people=args.people, seconds=args.seconds, fps=args.fps,
                           width=args.size[0], height=args.size[1], seed=args.seed,
                           crops=None if args.crops is None else str(args.crops), pids=pids,
                           val_ids=args.val_ids, mp4=args.mp4)
    root = generate_synth_video(args.out, cfg, overwrite=args.overwrite, show_progress=not args.quiet)
    print(f"wrote {cfg.cameras} camera(s) x {cfg.num_frames} frames ({cfg.seconds:g} s at {cfg.fps:g} fps) with "
          f"{cfg.people} people to {root}")
    print(f"evaluate a run with: reidkit evaluate-tracks --gt-dir {root} --pred RUN")


def add_synth_video_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Composite people walking through N non-overlapping cameras into synchronised videos with exact "
                     "ground truth: OUT/<camera>/img1/*.jpg + seqinfo.ini + gt/gt.txt (MOTChallenge, GLOBAL ids: the "
                     "same person has the same id in every camera), OUT/identities.json, OUT/manifest.json. Default "
                     "people: reidkit's synthetic pedestrians; --crops uses real crops, camera k showing each "
                     "identity's crops from source camera ((k-1) % number_of_source_cameras)+1.")
    p.add_argument("--out", required=True, type=Path, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--cameras", type=positive_int, default=3, help="number of cameras")
    p.add_argument("--people", type=positive_int, default=40, help="number of identities walking through")
    p.add_argument("--seconds", type=float, default=120.0, help="video length in seconds")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second")
    p.add_argument("--size", type=_size, default="640x360", metavar="WxH", help="frame size, e.g. 640x360")
    p.add_argument("--crops", type=Path,
                   help="Market-layout folder of real person crops (a flat folder: all identities; a Market root, "
                        "e.g. a `reidkit split` carve: its query + gallery identities)")
    p.add_argument("--ids", type=Path, help="file of source identities to use from --crops (one per line or JSON list)")
    p.add_argument("--pids", help="comma-separated source identities to use from --crops")
    p.add_argument("--val-ids", type=positive_int,
                   help="use only the N validation identities of the seed-0 carve of --crops (what `reidkit split "
                        "--val-ids N` holds out; e.g. 150 for the CUHK03-NP runs)")
    p.add_argument("--mp4", action="store_true", help="also write OUT/videos/<camera>.mp4 (H.264)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same videos)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_quiet(p)
    p.set_defaults(func=synth_video_command)


# ---------------------------------------------------------------------------------------------- evaluate-tracks

def evaluate_tracks_command(args: argparse.Namespace) -> None:
    from ..data.mot import ground_truth_file, read_gt_dir, read_mot, read_run
    from ..metrics.tracking import evaluate_multicamera, evaluate_tracks, format_tracking_table
    from ..utils import atomic_write_json
    from ..video.mot import evaluation_pair

    if (args.gt is None) == (args.gt_dir is None):
        raise ConfigError("evaluate-tracks: give either --gt (one sequence) or --gt-dir (a multi-camera folder)")
    if args.gt is not None:
        gt_path = ground_truth_file(args.gt)
        pred_path = args.pred / "tracks.txt" if args.pred.is_dir() else args.pred
        gt, pred = evaluation_pair(gt_path, read_mot(pred_path))
        metrics = evaluate_tracks(gt, pred, threshold=args.iou,
                                  names=(str(gt_path), str(pred_path)))
        name = gt_path.parent.parent.name if gt_path.parent.name == "gt" else gt_path.stem
        report = {"gt": str(gt_path), "pred": str(pred_path), "iou": args.iou, "metrics": metrics}
        table = format_tracking_table({name: metrics})
    else:
        gt, pred = read_gt_dir(args.gt_dir), read_run(args.pred)
        for camera in sorted(set(gt) & set(pred)):  # MOT16/17 ground truth: drop tracks on distractors
            gt[camera], pred[camera] = evaluation_pair(Path(args.gt_dir) / camera / "gt" / "gt.txt", pred[camera])
        for camera in sorted(set(pred) - set(gt)):
            print(f"warning: camera {camera} of {args.pred} has no ground truth in {args.gt_dir}: all its boxes count "
                  "as false positives", file=sys.stderr)
        for camera in sorted(set(gt) - set(pred)):
            print(f"warning: camera {camera} has no tracks.txt in {args.pred}: all its people count as missed",
                  file=sys.stderr)
        result = evaluate_multicamera(gt, pred, threshold=args.iou)
        report = {"gt_dir": str(args.gt_dir), "pred": str(args.pred), "iou": args.iou} | result
        table = format_tracking_table(result["cameras"] | {"all cameras": result["combined"]},
                                      result["cross_camera"])
    if args.out is not None:
        atomic_write_json(report, args.out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table)
        if args.out is not None:
            print(f"wrote {args.out}")


def add_evaluate_tracks_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Tracking metrics with TrackEval: HOTA, DetA, AssA, IDF1, IDP, IDR, MOTA, MOTP, IDSW, FP, FN "
                     "(ratios in percent), MOTChallenge's way: MOT16/17 ground truth keeps considered pedestrians and "
                     "tracker boxes on distractors (static people, reflections, ...) are not counted. One sequence: "
                     "--gt SEQ/gt/gt.txt --pred RUN/SEQ/tracks.txt. Several "
                     "cameras with global ids: --gt-dir DIR (DIR/<camera>/gt/gt.txt, e.g. a synth-video output) "
                     "--pred RUN (RUN/<camera>/tracks.txt): one row per camera, all cameras combined, and the "
                     "cross-camera IDF1 (Ristani et al. 2016) over every (camera, frame) with global ids.")
    p.add_argument("--gt", type=Path, help="ground truth of one sequence: MOT gt.txt or a sequence folder with gt/")
    p.add_argument("--gt-dir", type=Path, help="multi-camera ground truth: a folder of <camera>/gt/gt.txt")
    p.add_argument("--pred", type=Path, required=True,
                   help="tracker output: a MOT tracks.txt (or a folder holding one) with --gt; a run folder of "
                        "<camera>/tracks.txt with --gt-dir")
    p.add_argument("--iou", type=float, default=0.5, help="IoU a box needs to match (CLEAR and identity measures)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--out", type=Path, help="also write the metrics as JSON to this file")
    p.set_defaults(func=evaluate_tracks_command)


