"""Carve a validation query/gallery out of a training set by identity (CUHK03-NP style).

Validation identities are drawn at random (deterministic by seed) among identities that can be scored:
at least two cameras with at least two images each. Then each validation identity gives one random image per
camera to the query set and the rest to the gallery, so every query keeps a gallery match in another camera.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..utils import progress
from .manifest import write_manifest
from .market import MARKET_FOLDERS, load_image_folder
from .records import SPLITS, Record, ReIDDataset, check_query_gallery, split_arrays


def _scorable_ids(pids: np.ndarray, camids: np.ndarray) -> np.ndarray:
    """Sorted pids with >= 2 cameras holding >= 2 images each (queries then keep a cross-camera match)."""
    pairs, counts = np.unique(np.stack([pids, camids], axis=1), axis=0, return_counts=True)
    rich_pairs = pairs[counts >= 2]
    ids, num_rich_cams = np.unique(rich_pairs[:, 0], return_counts=True)
    return ids[num_rich_cams >= 2]


def _pick_val_ids(pids: np.ndarray, camids: np.ndarray, num_val_ids: int, rng: np.random.Generator) -> np.ndarray:
    identities = np.unique(pids[pids != 0])  # pid 0 = distractors, not an identity
    if not 0 < num_val_ids < len(identities):
        raise ConfigError(f"num_val_ids={num_val_ids}: must be between 1 and {len(identities) - 1} "
                          f"(the training set has {len(identities)} identities; some must stay for training)")
    candidates = _scorable_ids(pids[pids != 0], camids[pids != 0])
    if len(candidates) < num_val_ids:
        raise DataError(f"num_val_ids={num_val_ids}: only {len(candidates)} of {len(identities)} identities have "
                        f"two cameras with at least two images each, which validation needs")
    return np.sort(rng.choice(candidates, size=num_val_ids, replace=False))


def _select(records: list[Record], mask: np.ndarray) -> list[Record]:
    return [records[i] for i in np.flatnonzero(mask)]


def carve_validation_records(records: list[Record], num_val_ids: int, seed: int = 0) -> ReIDDataset:
    """Split `records` into train (remaining ids) and a validation query/gallery, deterministically by seed.

    The result depends only on the set of records and the seed, not on their order.
    """
    records = sorted(records, key=lambda r: r.path)
    _, pids, camids = split_arrays(records)
    rng = np.random.default_rng(seed)
    val_ids = _pick_val_ids(pids, camids, num_val_ids, rng)
    is_val = np.isin(pids, val_ids)
    # One random image per (pid, camera): shuffle the validation images, keep the first of each pair.
    val_idx = rng.permutation(np.flatnonzero(is_val))
    _, first = np.unique(np.stack([pids[val_idx], camids[val_idx]], axis=1), axis=0, return_index=True)
    is_query = np.zeros(len(records), dtype=bool)
    is_query[val_idx[first]] = True
    return ReIDDataset(train=_select(records, ~is_val), query=_select(records, is_query),
                       gallery=_select(records, is_val & ~is_query), name="carved-validation")


def _write_market_layout(dataset: ReIDDataset, out: Path, show_progress: bool) -> None:
    """Copy into a hidden temp folder beside `out`, then rename: a partial run never looks complete."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output folder {out} already exists and is not empty; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for split in SPLITS:
            folder = tmp / MARKET_FOLDERS[split]
            folder.mkdir()
            for record in progress(getattr(dataset, split), desc=f"copying {split}", enabled=show_progress):
                shutil.copy2(record.path, folder / os.path.basename(record.path))
        os.replace(tmp, out)
    except OSError as exc:  # disk full, ...: name the folder being written, not its hidden temporary one
        names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
        if names and not any(name.startswith(str(tmp)) for name in names):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def carve_validation(train_dir: str | os.PathLike, out: str | os.PathLike, num_val_ids: int, seed: int = 0,
                     fmt: str = "market", show_progress: bool = False) -> str:
    """Carve validation ids out of a folder of Market-named images and write a Market layout or a manifest.

    fmt="market": `out` becomes a folder with bounding_box_train/, query/, bounding_box_test/ (copies).
    fmt="manifest": `out` is a CSV manifest (absolute paths to the original images).
    Returns a human-readable summary of the counts.
    """
    if fmt not in ("market", "manifest"):
        raise ConfigError(f"fmt={fmt!r}: must be 'market' or 'manifest'")
    source = load_image_folder(train_dir)
    dataset = carve_validation_records(source.train, num_val_ids, seed)
    dataset.name = f"{source.name} split (seed {seed}, {num_val_ids} validation ids)"
    dataset.notes.extend(source.notes)
    report = check_query_gallery(dataset)
    if report.num_unmatched:  # cannot happen by construction; keep the promise that nothing goes unreported
        dataset.notes.append(report.message)
    out = Path(out)
    if fmt == "market":
        _write_market_layout(dataset, out, show_progress)
    else:
        write_manifest(dataset, out)
    return f"{dataset.summary()}\nwrote {fmt} to {out}"
