"""The `reidkit` command. Each subcommand is a thin layer over a library function."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ReIDError


def _cmd_synth(args: argparse.Namespace) -> None:
    from ..data.synth import SynthConfig, generate_market_dataset

    cfg = SynthConfig(num_train_ids=args.train_ids, num_test_ids=args.test_ids, num_cameras=args.cameras,
                      images_per_camera=args.images_per_camera, height=args.height, width=args.width,
                      seed=args.seed)
    root = generate_market_dataset(args.out, cfg, show_progress=not args.quiet)
    print(f"wrote synthetic Market-layout dataset to {root}")


def _cmd_split(args: argparse.Namespace) -> None:
    from ..data.split import carve_validation

    summary = carve_validation(args.train_dir, args.out, num_val_ids=args.val_ids, seed=args.seed,
                               fmt=args.format, show_progress=not args.quiet)
    print(summary)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_command

    evaluate_command(args)


def _cmd_train(args: argparse.Namespace) -> None:
    from .train import run_train

    run_train(args.config, args.overrides, data=args.data, out=args.out, resume=args.resume, no_val=args.no_val,
              show_progress=not args.quiet)


def _cmd_extract(args: argparse.Namespace) -> None:
    from .train import run_extract

    run_extract(args.checkpoint, args.data, args.out, device=args.device, flip=args.flip,
                show_progress=not args.quiet)


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, minutes=args.minutes, device=args.device, show_progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reidkit", description="Person re-identification toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic pedestrian dataset (Market-1501 layout)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--train-ids", type=int, default=100)
    p.add_argument("--test-ids", type=int, default=50)
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--images-per-camera", type=int, default=4)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("split", help="carve a validation query/gallery out of a training folder by identity")
    p.add_argument("train_dir", type=Path, help="folder of Market-style images (e.g. bounding_box_train)")
    p.add_argument("--out", required=True, type=Path, help="output folder (Market layout) or manifest file")
    p.add_argument("--val-ids", type=int, default=150, help="number of validation identities")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("market", "manifest"), default="market")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("evaluate", help="rank-k / mAP / mINP from a distance matrix, features or a checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--distmat", type=Path, help=".npz with distmat, q_pids, g_pids, q_camids, g_camids")
    src.add_argument("--features", type=Path, help=".npz with query/gallery features and ids")
    src.add_argument("--checkpoint", type=Path, help="model checkpoint; needs --data")
    p.add_argument("--data", type=Path, help="dataset root (Market layout or manifest) for --checkpoint")
    p.add_argument("--metric", choices=("euclidean", "cosine", "l2"), default="euclidean",
                   help="euclidean = squared L2 (torchreid convention), l2 = true distance, cosine")
    p.add_argument("--protocol", choices=("market", "cuhk03"), default="market",
                   help="market: multi-shot with same-camera filtering; cuhk03: classic single-gallery-shot")
    p.add_argument("--ap", choices=("torchreid", "market-official"), default="torchreid",
                   help="AP definition: torchreid (precision at each hit) or the official Market-1501 trapezoid")
    p.add_argument("--rerank", choices=("none", "k_reciprocal", "aqe", "ssm"), default="none",
                   help="re-rank query-gallery distances (with --features or --checkpoint)")
    p.add_argument("--local-weight", type=float, default=0.0,
                   help="AlignedReID: add W x the local (shortest-path) distance to the --metric distance; needs a "
                        "checkpoint with a local branch or features with query_local/gallery_local (0 = global only; "
                        "--metric l2 --local-weight 1 is the paper's global + local distance)")
    p.add_argument("--pair-checkpoint", type=Path,
                   help="pair network (idla, idla_ncc, mls) that re-orders each query's top-k (needs image paths: "
                        "--checkpoint, or --features from `reidkit extract`)")
    p.add_argument("--pair-top-k", type=int, default=20, help="with --pair-checkpoint: how many to re-order")
    p.add_argument("--pair-weight", type=float, default=1.0,
                   help="with --pair-checkpoint: rank fusion, (1 - W) x embedding rank + W x pair rank (1 = pair only)")
    p.add_argument("--pair-tta", action="store_true",
                   help="with --pair-checkpoint: average both input orders and the mirrored pair")
    p.add_argument("--max-rank", type=int, default=50)
    p.add_argument("--out", type=Path, help="write metrics JSON (and a CMC plot beside it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train", help="train a model from a YAML config (overrides: section.key=value)")
    p.add_argument("--config", type=Path, help="YAML config (e.g. configs/cuhk03np_cpu.yaml)")
    p.add_argument("--data", type=Path, help="dataset root (overrides data.root)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, log, curves")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-val", action="store_true", help="train on all identities (no validation carve-out)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.epochs=10 model.pooling=max")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("extract", help="embed the query/gallery (or all) images of a dataset with a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="dataset root, image folder or manifest")
    p.add_argument("--out", type=Path, required=True, help="output .npz (features + ids + paths)")
    p.add_argument("--device", default="auto")
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("demo", help="synthetic data -> train -> evaluate -> report folder")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=0.0,
                   help="optional training time cap (0 = none; a cap makes results depend on machine speed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)

    from .search import add_search_parsers

    add_search_parsers(sub)  # index build|add|remove|info, search, export
    return parser


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin-wait make torch 3-10x slower whenever another process holds a core (measured on
    # 2-core machines); passive waiting costs next to nothing when the machine is idle. Must precede `import torch`.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ReIDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
