"""Datasets as lists of records per split, loaders for the common layouts, and image reading."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .cuhk03 import load_cuhk03
from .images import read_image, verify_images
from .manifest import load_manifest, write_manifest
from .market import is_market_root, load_image_folder, load_market, parse_market_name
from .records import SPLITS, QueryGalleryReport, Record, ReIDDataset, check_query_gallery, relabel, split_arrays
from .split import carve_validation, carve_validation_records


def load_dataset(path: str | os.PathLike, verify: bool = False) -> ReIDDataset:
    """Load by what `path` is: a manifest (.csv/.json), a Market-layout root, or one folder of images (train)."""
    path = Path(path)
    if path.is_file():
        return load_manifest(path, verify=verify)
    if not path.exists():
        raise DataError(f"missing dataset {path}: no such file or folder")
    if is_market_root(path):
        return load_market(path, verify=verify)
    return load_image_folder(path, verify=verify)


__all__ = [
    "SPLITS", "QueryGalleryReport", "Record", "ReIDDataset", "carve_validation", "carve_validation_records",
    "check_query_gallery", "load_cuhk03", "load_dataset", "load_image_folder", "load_manifest", "load_market",
    "parse_market_name", "read_image", "relabel", "split_arrays", "verify_images", "write_manifest",
]
