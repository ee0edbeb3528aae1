"""The one image decoder: files, PIL images or arrays -> RGB -> resized uint8, with errors naming the image.

Every path that turns images into pixels goes through here (training store, `Extractor`, the ONNX/OpenVINO
backends, the gallery index, export verification), so resizing and colour conversion cannot drift apart.
Array inputs follow one stated rule (`image_array`): HxWx3 RGB, uint8 as is; integer arrays must hold 0..255;
float arrays must hold 0..1 and are scaled by 255 and rounded (never truncated to zeros).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from ..errors import DataError, ReIDError
from ..utils import progress
from .records import Record
from .transforms import resize_image

ImageLike = str | os.PathLike | Image.Image | np.ndarray

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})

# PIL only warns between MAX_IMAGE_PIXELS and twice that, then decodes hundreds of MB; read_image refuses the
# whole range itself (naming the file), so the bare warning would only repeat it without the file name.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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
            _refuse_bomb(img)
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {os.fspath(path)}: {_describe(exc)}") from exc


def _refuse_bomb(img: Image.Image) -> None:
    """Refuse an image declaring more pixels than PIL's limit before decoding it (a decompression bomb)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = img.size
    if limit is not None and width * height > limit:
        raise ValueError(f"declares {width}x{height} = {width * height} pixels, above the limit of {limit} "
                         f"(PIL.Image.MAX_IMAGE_PIXELS): refused as a possible decompression bomb")


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


# ------------------------------------------------------------------------------------------- in-memory images

def _array_to_pil(array: np.ndarray, where: str) -> Image.Image:
    """HxWx3 RGB array -> PIL image under the module's stated rule; ReIDError naming `where` otherwise."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise ReIDError(f"{where}: expected an HxWx3 RGB array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(array))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min(initial=0.0) < 0.0 or array.max(initial=0.0) > 1.0:
            raise ReIDError(f"{where}: float arrays must hold values in [0, 1] (scaled by 255); got {array.dtype} "
                            f"in [{np.nanmin(array):g}, {np.nanmax(array):g}] -- pass uint8 0..255 instead")
        return Image.fromarray(np.rint(array * 255.0).astype(np.uint8))
    if np.issubdtype(array.dtype, np.integer):
        if array.min(initial=0) < 0 or array.max(initial=0) > 255:
            raise ReIDError(f"{where}: integer arrays must hold 0..255; got {array.dtype} in "
                            f"[{array.min()}, {array.max()}]")
        return Image.fromarray(array.astype(np.uint8))
    raise ReIDError(f"{where}: unsupported array dtype {array.dtype} (expected uint8 RGB)")


def image_array(item: ImageLike, size: tuple[int, int], mode: str = "stretch", where: str = "image") -> np.ndarray:
    """A path, PIL image or HxWx3 array -> uint8 (H, W, 3) RGB at `size` (resize `mode`: stretch / pad).

    Unreadable files raise DataError naming the file; a wrong type, shape or value range raises ReIDError
    naming `where`.
    """
    if isinstance(item, (str, os.PathLike)):
        img = read_image(item)
    elif isinstance(item, Image.Image):
        img = item.convert("RGB")
    elif isinstance(item, np.ndarray):
        img = _array_to_pil(item, where)
    else:
        raise ReIDError(f"{where}: expected a path, PIL image or HxWx3 uint8 array, got {type(item).__name__}")
    return resize_image(img, size, mode)


def decode_images(items: Sequence[ImageLike], size: tuple[int, int], mode: str = "stretch", workers: int = 4,
                  show_progress: bool = False, desc: str = "decoding images"
                  ) -> tuple[torch.Tensor, np.ndarray, list[tuple[str, str]]]:
    """Decode and resize images; unreadable files are skipped, not fatal (bad arrays are: a caller's bug).

    Returns (uint8 RGB (M, 3, H, W) of the readable images in order, boolean mask of readable inputs,
    [(path, reason)] of the unreadable ones). Decoding releases the GIL, so a thread pool overlaps files.
    """
    out = np.empty((len(items), size[0], size[1], 3), dtype=np.uint8)
    ok = np.ones(len(items), dtype=bool)
    reasons: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            out[i] = image_array(items[i], size, mode, where=f"images[{i}]")
        except DataError as exc:
            ok[i] = False
            reasons[i] = str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in progress(pool.map(work, range(len(items))), total=len(items), desc=desc, enabled=show_progress,
                          leave=False):
            pass
    bad = [(os.fspath(items[i]), reasons[i]) for i in sorted(reasons)]
    return torch.from_numpy(out[ok]).permute(0, 3, 1, 2).contiguous(), ok, bad


def load_image_tensor(items: Sequence[ImageLike], size: tuple[int, int], mode: str = "stretch",
                      show_progress: bool = False, desc: str = "decoding images", workers: int = 4) -> torch.Tensor:
    """uint8 tensor (N, 3, H, W) in `items` order; one DataError listing every unreadable file."""
    pixels, _, bad = decode_images(items, size, mode, workers, show_progress, desc)
    if bad:
        shown = "\n  ".join(reason for _, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(f"{len(bad)} unreadable image(s):\n  {shown}{more}")
    return pixels
