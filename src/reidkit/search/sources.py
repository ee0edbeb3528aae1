"""What to index: records from a manifest, a Market-layout root, a folder of images, or single image files."""

from __future__ import annotations

import os
from pathlib import Path

from ..data import load_dataset, parse_market_name
from ..data.images import is_image_name
from ..data.market import is_market_root
from ..data.records import SPLITS, Record
from ..errors import DataError, ReIDError

SOURCE_SPLITS = ("auto", "all", *SPLITS)


def _pick_splits(dataset, split: str, source: Path) -> list[Record]:
    if split == "all":
        return dataset.train + dataset.query + dataset.gallery
    if split == "auto":  # a gallery index wants the gallery; a train-only source has only train
        return dataset.gallery or dataset.train + dataset.query
    records = getattr(dataset, split)
    if not records:
        raise DataError(f"{source}: split {split!r} is empty")
    return records


def _market_record(path: str) -> Record | str | None:
    """Record when the file name follows the Market convention, the bare path otherwise, None for junk (-1)."""
    try:
        pid, camid, frame = parse_market_name(os.path.basename(path))
    except DataError:
        return path
    return None if pid == -1 else Record(path, pid, camid, frame)


def scan_folder(folder: Path) -> list[Record | str]:
    """Every image below `folder` (recursive, sorted); Market-style names give pid/camera/frame."""
    paths = sorted(os.path.join(dirpath, name) for dirpath, _, names in os.walk(folder)
                   for name in names if is_image_name(name))
    if not paths:
        raise DataError(f"{folder}: no images found (looked for .jpg/.jpeg/.png/.bmp, recursively)")
    items = [_market_record(p) for p in paths]
    return [it for it in items if it is not None]


def collect_items(source: str | os.PathLike, split: str = "auto") -> list[Record | str]:
    """Items to index from `source`.

    - a manifest (.csv/.json) or a Market root (bounding_box_train/, query/, bounding_box_test/): records of
      `split` ("auto" = gallery if there is one, else train+query; "all"; or train/query/gallery);
    - an image file: that image (metadata from its name if Market-style);
    - any other folder: all images below it, with metadata from Market-style names where they parse.
    """
    if split not in SOURCE_SPLITS:
        raise ReIDError(f"split={split!r}: expected one of {', '.join(SOURCE_SPLITS)}")
    path = Path(source)
    if not path.exists():
        raise DataError(f"images {path}: no such file or folder")
    if path.is_file() and is_image_name(path.name):
        item = _market_record(str(path))
        return [item if item is not None else str(path)]
    if path.is_file() or is_market_root(path):
        return _pick_splits(load_dataset(path), split, path)
    return scan_folder(path)
