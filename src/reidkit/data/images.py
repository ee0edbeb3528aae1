"""Reading images with errors that name the file, and finding every bad image of a dataset at once."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from ..errors import DataError
from ..utils import progress
from .records import Record

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return str(exc) or type(exc).__name__


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode `path` fully and return it as RGB; DataError("cannot read image <path>: <reason>") otherwise.

    The pixels are decoded here (not lazily) so a truncated or corrupt file fails now, with its name,
    rather than later inside a data-loader worker.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {os.fspath(path)}: {_describe(exc)}") from exc


def _problem(path: str) -> str | None:
    try:
        read_image(path)
    except DataError as exc:
        return _describe(exc.__cause__) if exc.__cause__ else str(exc)
    return None


def verify_images(records: Iterable[Record | str | os.PathLike], show_progress: bool = False,
                  num_workers: int | None = None) -> list[tuple[str, str]]:
    """Decode every image and return all failures as (path, reason), in input order; [] if all are fine.

    Decoding releases the GIL, so a small thread pool overlaps file reads and decoding.
    """
    paths = [r.path if isinstance(r, Record) else os.fspath(r) for r in records]
    workers = num_workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = progress(pool.map(_problem, paths), desc="verifying images", total=len(paths),
                           enabled=show_progress)
        reasons = list(results)
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]


def raise_if_bad_images(records: Iterable[Record], where: str, show_progress: bool = False) -> None:
    """Verify all images and raise one DataError listing every bad one (count plus the first few)."""
    bad = verify_images(records, show_progress=show_progress)
    if bad:
        shown = "; ".join(f"{path}: {reason}" for path, reason in bad[:5])
        more = f"; ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{where}: {len(bad)} unreadable image(s): {shown}{more}")
