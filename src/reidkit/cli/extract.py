"""What `reidkit extract` and `reidkit merge-features` do: parse, call inference.shards, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_batch_size, add_data, add_device, add_flip, add_model, add_quiet


def _extract_command(args: argparse.Namespace) -> None:
    from ..inference.shards import extract_dataset, parse_shard

    shard = parse_shard(args.shard)
    out, arrays = extract_dataset(args.model, args.data, args.out, device=args.device, flip=args.flip,
                                  batch_size=args.batch_size, show_progress=not args.quiet, splits=args.splits,
                                  shard=shard)
    counts = ", ".join(f"{k.split('_')[0]} {len(v)}" for k, v in arrays.items() if k.endswith("_features"))
    dims = {v.shape[1] for k, v in arrays.items() if k.endswith("_features")}
    local = " + local features" if any(k.endswith("_local") for k in arrays) else ""
    which = "" if shard is None else f" (shard {shard[0]} of {shard[1]})"
    print(f"wrote {out}{which}: {counts} embeddings of dim {', '.join(map(str, dims))}{local}")


def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_data(p)
    p.add_argument("--out", type=Path, required=True, help="output .npz (features + ids + paths)")
    p.add_argument("--splits", nargs="+", choices=("query", "gallery", "train"), metavar="SPLIT",
                   help="splits to embed: query, gallery, train (default: every split the dataset has; "
                        "`evaluate --features` needs query and gallery)")
    p.add_argument("--shard", metavar="I/N",
                   help="embed only shard I of N (from 0) of each split and write OUT.part-I-of-N.npz; 'auto': "
                        "RANK/WORLD_SIZE under torchrun. Combine the parts with `reidkit merge-features` "
                        "(default: everything, one file)")
    add_device(p)
    add_batch_size(p, default=128)
    add_flip(p)
    add_quiet(p)
    p.set_defaults(func=_extract_command)


def _merge_command(args: argparse.Namespace) -> None:
    from ..inference.shards import merge_feature_parts

    merged = merge_feature_parts(args.parts, args.out)
    counts = ", ".join(f"{k.split('_')[0]} {len(v)}" for k, v in merged.items() if k.endswith("_features"))
    print(f"merged {len(args.parts)} part(s) into {args.out}: {counts}")


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("parts", nargs="+", type=Path, metavar="PART",
                   help="the OUT.part-I-of-N.npz files of one sharded extraction, all N of them")
    p.add_argument("--out", type=Path, required=True, help="merged .npz, as one `reidkit extract` would write it")
    p.set_defaults(func=_merge_command)
