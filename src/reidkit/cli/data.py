"""`reidkit synth` and `reidkit split`: make a dataset to train and evaluate on."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_data, add_quiet


def synth_command(args: argparse.Namespace) -> None:
    from ..data.synth import SynthConfig, generate_market_dataset

    cfg = SynthConfig(num_train_ids=args.train_ids, num_test_ids=args.test_ids, num_cameras=args.cameras,
                      images_per_camera=args.images_per_camera, height=args.height, width=args.width,
                      seed=args.seed)
    root = generate_market_dataset(args.out, cfg, show_progress=not args.quiet, attributes=args.attributes)
    extra = f" with attribute labels in {Path(root) / 'attributes.csv'}" if args.attributes else ""
    print(f"wrote synthetic Market-layout dataset to {root}{extra}")


def split_command(args: argparse.Namespace) -> None:
    from ..data.split import carve_validation
    from ..errors import ConfigError

    data = args.data if args.data is not None else args.train_dir
    if data is None:
        raise ConfigError("split: give the folder of training images with --data (e.g. .../bounding_box_train)")
    if args.data is not None and args.train_dir is not None:
        raise ConfigError(f"split: two input folders ({args.data} and {args.train_dir}); give only --data")
    print(carve_validation(data, args.out, num_val_ids=args.val_ids, seed=args.seed, fmt=args.format,
                           show_progress=not args.quiet))


def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (Market layout)")
    p.add_argument("--train-ids", type=int, default=100, help="identities in bounding_box_train")
    p.add_argument("--test-ids", type=int, default=50, help="identities in query + bounding_box_test")
    p.add_argument("--cameras", type=int, default=2, help="cameras per identity")
    p.add_argument("--images-per-camera", type=int, default=4, help="images of each identity per camera")
    p.add_argument("--height", type=int, default=128, help="image height in pixels")
    p.add_argument("--width", type=int, default=64, help="image width in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same images)")
    p.add_argument("--attributes", action="store_true",
                   help="also write attributes.csv: a manifest with the true attribute labels of what is drawn "
                        "(attr_<name> columns, for ACRN: configs/acrn_synth.yaml); the images are unchanged")
    add_quiet(p)
    p.set_defaults(func=synth_command)


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    add_data(p, required=False, help="folder of Market-named training images (e.g. .../bounding_box_train)")
    p.add_argument("train_dir", nargs="?", type=Path, help=argparse.SUPPRESS)  # the old positional spelling
    p.add_argument("--out", required=True, type=Path,
                   help="output: a folder in Market layout (bounding_box_train, query, bounding_box_test) or, "
                        "with --format manifest, a CSV manifest")
    p.add_argument("--val-ids", type=int, default=150, help="identities moved to the validation query/gallery")
    p.add_argument("--seed", type=int, default=0, help="random seed of the identity choice")
    p.add_argument("--format", choices=("market", "manifest"), default="market",
                   help="market: copies of the images in Market layout; manifest: one CSV of the original paths")
    add_quiet(p)
    p.set_defaults(func=split_command)
