"""Verbs for analysis: verify (1:1), calibrate, cluster (N:N), explain. The work is in `reidkit.analysis`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ReIDError
from .options import add_batch_size, add_data, add_device, add_flip, add_model, add_quiet, positive_int


def _unit_interval(text: str) -> float:
    """argparse type: a float strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value}: must be between 0 and 1 (exclusive)")
    return value


# ------------------------------------------------------------------------------------------------ verify

def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image_a", type=Path, metavar="A", help="first person crop")
    parser.add_argument("image_b", type=Path, metavar="B", help="second person crop")
    add_model(parser)
    parser.add_argument("--far", type=_unit_interval, metavar="F",
                        help="decide at the threshold measured for this false accept rate (e.g. 0.01; needs "
                             "`reidkit calibrate`); without it: calibrated P(same) > 0.5")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line (keys probability, same, threshold, score, ...)")
    add_device(parser)
    parser.set_defaults(func=verify_command)


def verify_command(args: argparse.Namespace) -> None:
    from ..analysis import verify

    result = verify(args.image_a, args.image_b, model=args.model, far=args.far, device=args.device)
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    verdict = "SAME person" if result.same else "DIFFERENT persons"
    probability = "n/a (not calibrated)" if result.probability is None else f"{result.probability:.4f}"
    rule = f"FAR {result.far:g}" if result.far is not None else ("P(same) > 0.5" if result.calibrated
                                                                else "default threshold")
    print(f"{verdict}: P(same) {probability}; {result.score_kind} {result.score:.4f} "
          f"{'>' if result.same else '<='} threshold {result.threshold:.4f} ({rule})")
    for note in result.notes:
        print(f"note: {note}")


# ------------------------------------------------------------------------------------------------ calibrate

def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser, help="model to calibrate: a reidkit checkpoint (.pt; the calibration is stored inside it) "
                           "or ONNX / OpenVINO model (stored in <model>.calibration.json beside it)")
    add_data(parser, help="labelled validation images: a `reidkit split` output (its query + gallery = the "
                          "validation identities), a folder of Market-named crops or a manifest")
    # Not --method: that spelling is the hidden alias of --approx in the option vocabulary (cli/options.py).
    parser.add_argument("--calibrator", choices=("platt", "isotonic"), default="platt",
                        help="platt: logistic fit of the score (smooth, extrapolates); isotonic: monotone steps")
    parser.add_argument("--negatives", type=positive_int, default=100_000, metavar="N",
                        help="random different-person pairs on which the FAR thresholds are measured")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair sampling")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder for verification.png (ROC + DET) and calibration.json (default: the picture "
                             "goes next to the model as <model>_verification.png)")
    parser.add_argument("--no-store", action="store_true", help="measure and draw only; leave the model unchanged")
    add_device(parser)
    add_batch_size(parser)
    add_flip(parser)
    add_quiet(parser)
    parser.set_defaults(func=calibrate_command)


def calibrate_command(args: argparse.Namespace) -> None:
    from ..analysis import calibrate

    result = calibrate(args.model, args.data, method=args.calibrator, out=args.out, negatives=args.negatives,
                       seed=args.seed, device=args.device, flip=args.flip, batch_size=args.batch_size,
                       store=not args.no_store, show_progress=not args.quiet)
    record, pairs, metrics = result.record, result.record["pairs"], result.record["metrics"]
    print(f"{args.calibrator} calibration of {record['score']} scores on {pairs['identities']} identities "
          f"({pairs['images']} images): fitted on {pairs['fit_same']} same + {pairs['fit_different']} different "
          f"pairs; FAR thresholds on {pairs['far_same']} same + {pairs['far_different']} different pairs")
    print(f"ROC AUC {metrics['auc']:.4f}; ECE on the fit pairs {metrics['ece_fit_pairs']:.4f}")
    for far, threshold in record["thresholds"].items():
        reliable = "" if float(far) * pairs["far_different"] >= 10 else " (fewer than 10 false accepts: rough)"
        print(f"  FAR {far:>6}: threshold {threshold:.4f}, TAR {metrics[f'tar_at_far_{far}']:.4f}{reliable}")
    if "cluster" in record:
        c = record["cluster"]
        print(f"clustering threshold (Jaccard eps) {c['eps']:.3f}, min_samples {c['min_samples']}, k1 {c['k1']}, "
              f"camera-aware {c['camera_aware']}: B-cubed F {c['bcubed_f']:.3f} on these identities")
    print(f"stored in {result.stored_in}" if result.stored_in else "not stored (--no-store)")
    print(f"ROC / DET curves: {result.picture}")


# ------------------------------------------------------------------------------------------------ cluster

def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="folder of person crops (searched recursively)")
    add_model(parser, help="embedding model: a reidkit checkpoint (.pt), ONNX (.onnx) or OpenVINO IR (.xml)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder: clusters.csv, sheets/, market/ with --export")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=_unit_interval, metavar="T",
                       help="DBSCAN radius on the k-reciprocal Jaccard distance (default: the value `reidkit "
                            "calibrate` chose on validation identities, else 0.55)")
    group.add_argument("--calibrated", action="store_true",
                       help="require the validated threshold stored by `reidkit calibrate` (error if absent)")
    parser.add_argument("--export", action="store_true",
                        help="also copy the clustered crops to DIR/market/bounding_box_train (pid = cluster + 1)")
    add_device(parser)
    add_batch_size(parser)
    add_quiet(parser)
    parser.set_defaults(func=cluster_command)


def cluster_command(args: argparse.Namespace) -> None:
    from ..analysis import cluster
    from ..analysis.cluster import MAX_PER_SHEET, MAX_SHEETS

    result = cluster(args.folder, model=args.model, out=args.out, threshold=args.threshold,
                     calibrated=args.calibrated, export=args.export, device=args.device,
                     batch_size=args.batch_size, show_progress=not args.quiet)
    p = result.params
    print(f"{len(result.paths)} crops -> {result.num_clusters} clusters, {result.num_unassigned} unassigned")
    print(f"threshold (Jaccard eps) {p.eps:.3f}, min_samples {p.min_samples}, k1 {p.k1}; {result.params_source}")
    print(f"cameras from file names: {'yes (camera-aware)' if result.cameras_known and p.camera_aware else 'no'}")
    if result.unreadable:
        print(f"warning: {len(result.unreadable)} unreadable image(s) skipped, listed in "
              f"{args.out / 'unreadable.txt'}")
    print(f"wrote {result.csv}, {len(result.sheets)} contact sheet(s) in {args.out / 'sheets'} "
          f"(the {MAX_SHEETS} largest clusters, up to {MAX_PER_SHEET} crops each)")
    if result.export is not None:
        print(f"Market-layout copy: {result.export} (train with `reidkit train ... data.root={result.export}`)")


# ------------------------------------------------------------------------------------------------ explain

def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image_a", type=Path, metavar="A", help="first person crop")
    parser.add_argument("image_b", type=Path, metavar="B", help="second person crop")
    add_model(parser, help="a reidkit checkpoint (.pt): embedding model or pair network")
    parser.add_argument("--out", type=Path, required=True, metavar="PNG", help="picture to write")
    add_device(parser)
    parser.set_defaults(func=explain_command)


def explain_command(args: argparse.Namespace) -> None:
    from ..analysis import explain

    if args.out.suffix.lower() != ".png":
        raise ReIDError(f"--out {args.out}: expected a .png file name")
    result = explain(args.image_a, args.image_b, model=args.model, out=args.out, device=args.device)
    probability = "" if result.probability is None else f", P(same) {result.probability:.4f}"
    if result.kind == "embedding":
        dims = ", ".join(f"{d} (+{c:.3f})" for d, c in zip(result.dimensions, result.contributions, strict=True))
        print(f"cosine {result.score:.4f}{probability}; top dimensions: {dims}")
    else:
        print(f"pair log-odds {result.score:.4f}{probability}; Grad-CAM of the same-person logit")
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.picture}")
