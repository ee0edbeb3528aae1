"""What `reidkit extract` does: embed a dataset's splits with a model into one .npz."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import load_dataset
from ..data.images import load_image_tensor
from ..data.records import split_arrays
from ..inference.extractor import Extractor
from ..utils import atomic_path
from .options import add_batch_size, add_data, add_device, add_flip, add_model, add_quiet


def run_extract(checkpoint: Path, data: Path, out: Path, device: str = "auto", flip: bool = False,
                show_progress: bool = True, batch_size: int = 128, splits: Sequence[str] | None = None) -> None:
    """Embed the `splits` of a dataset (None: every split it has); the .npz also works as `reidkit evaluate
    --features` input (which needs query and gallery).

    A model with the AlignedReID local branch also writes `{split}_local` (N, stripes, local_dim) arrays, which
    `reidkit evaluate --features X --local-weight W` uses.
    """
    dataset = load_dataset(data)
    ext = Extractor(checkpoint, device=device, flip=flip, batch_size=batch_size)
    arrays: dict[str, np.ndarray] = {}
    all_splits = [("query", "q", dataset.query), ("gallery", "g", dataset.gallery), ("train", "t", dataset.train)]
    for split, key, records in (s for s in all_splits if splits is None or s[0] in splits):
        if not records:
            continue
        paths, pids, camids = split_arrays(records)
        images = load_image_tensor(paths, ext.input_size, ext.resize, show_progress, desc=f"loading {split}")
        if ext.has_local:
            arrays[f"{split}_features"], arrays[f"{split}_local"] = ext.embed_uint8(images, show_progress, local=True)
        else:
            arrays[f"{split}_features"] = ext.embed_uint8(images, show_progress)
        arrays[f"{key}_pids"], arrays[f"{key}_camids"], arrays[f"{key}_paths"] = pids, camids, np.asarray(paths)
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    counts = ", ".join(f"{k.split('_')[0]} {len(v)}" for k, v in arrays.items() if k.endswith("_features"))
    local = f" + local features ({ext.model.local_dim} per stripe)" if ext.has_local else ""
    print(f"wrote {out}: {counts} embeddings of dim {ext.dim}{local}")


# ------------------------------------------------------------------------------------------------- parser

def _extract_command(args: argparse.Namespace) -> None:
    run_extract(args.model, args.data, args.out, device=args.device, flip=args.flip, batch_size=args.batch_size,
                show_progress=not args.quiet, splits=args.splits)


def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_data(p)
    p.add_argument("--out", type=Path, required=True, help="output .npz (features + ids + paths)")
    p.add_argument("--splits", nargs="+", choices=("query", "gallery", "train"), metavar="SPLIT",
                   help="splits to embed: query, gallery, train (default: every split the dataset has; "
                        "`evaluate --features` needs query and gallery)")
    add_device(p)
    add_batch_size(p, default=128)
    add_flip(p)
    add_quiet(p)
    p.set_defaults(func=_extract_command)


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    """Placeholder until sharded extraction lands (issue 27)."""
    p.set_defaults(func=lambda args: (_ for _ in ()).throw(NotImplementedError("merge-features: not built yet")))
