"""Verbs for video ground truth: `reidkit synth-video` (synthetic multi-camera videos with exact MOT ground truth)
and `reidkit evaluate-tracks` (HOTA / IDF1 / MOTA per camera and cross-camera IDF1)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError, ReIDError
from .options import add_quiet  # noqa: F401  (synth-video)


def _not_ready(args: argparse.Namespace) -> None:
    raise ReIDError(f"`reidkit {args.command}` is not available yet in this build")


def add_synth_video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_not_ready)


# ---------------------------------------------------------------------------------------------- evaluate-tracks

def evaluate_tracks_command(args: argparse.Namespace) -> None:
    from ..metrics.tracking import evaluate_multicamera, evaluate_tracks, format_tracking_table
    from ..utils import atomic_write_json
    from ..video.mot import ground_truth_file, read_gt, read_gt_dir, read_mot, read_run

    if (args.gt is None) == (args.gt_dir is None):
        raise ConfigError("evaluate-tracks: give either --gt (one sequence) or --gt-dir (a multi-camera folder)")
    if args.gt is not None:
        gt_path = ground_truth_file(args.gt)
        pred_path = args.pred / "tracks.txt" if args.pred.is_dir() else args.pred
        metrics = evaluate_tracks(read_gt(gt_path), read_mot(pred_path), threshold=args.iou,
                                  names=(str(gt_path), str(pred_path)))
        name = gt_path.parent.parent.name if gt_path.parent.name == "gt" else gt_path.stem
        report = {"gt": str(gt_path), "pred": str(pred_path), "iou": args.iou, "metrics": metrics}
        table = format_tracking_table({name: metrics})
    else:
        gt, pred = read_gt_dir(args.gt_dir), read_run(args.pred)
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
                     "(ratios in percent). One sequence: --gt SEQ/gt/gt.txt --pred RUN/SEQ/tracks.txt. Several "
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


