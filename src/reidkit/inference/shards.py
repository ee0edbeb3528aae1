"""Feature extraction of a dataset's splits into one .npz, whole or as shard i of n, and the merge of the parts.

    >>> extract_dataset("best.pt", "market/", "feats.npz")                      # one process
    >>> extract_dataset("best.pt", "market/", "feats.npz", shard=(0, 2))        # writes feats.part-0-of-2.npz
    >>> merge_feature_parts(["feats.part-0-of-2.npz", "feats.part-1-of-2.npz"], "feats.npz")

A shard is a deterministic slice of each split: the split's items sorted by path, cut into n contiguous ranges
(np.array_split), so independent jobs or torchrun ranks agree on who embeds what without talking to each other.
Each part records in a JSON manifest (key "manifest" of the .npz) the shard spec, the model fingerprint and
settings, and per split the total item count, a digest of the split's sorted paths and the row positions it holds.
The merge puts every row back at its position in the split, so the merged file has the single-process layout
and order; it refuses (naming files and items) a missing or repeated shard, parts of another n, of another model,
settings or dataset, and items held twice or by nobody.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ReIDError
from ..utils import atomic_path

PART_FORMAT = "reidkit-features-part-1"
SPLITS = (("query", "q"), ("gallery", "g"), ("train", "t"))
_SHARD = re.compile(r"^(\d+)/(\d+)$")


# ------------------------------------------------------------------------------------------------ shard specs

def parse_shard(text: str | None, environ: dict[str, str] | None = None) -> tuple[int, int] | None:
    """"i/n" (0 <= i < n) -> (i, n); "auto" -> (RANK, WORLD_SIZE) as torchrun sets them (None when unset:
    one process embeds everything); None -> None. ConfigError for anything else."""
    if text is None:
        return None
    if text == "auto":
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        text = f"{env['RANK']}/{env['WORLD_SIZE']}"
    match = _SHARD.match(text.strip())
    if not match:
        raise ConfigError(f"--shard {text!r}: expected i/n (shard i of n, counting from 0) or auto")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: needs n >= 1 and 0 <= i < n")
    return index, count


def part_path(out: str | os.PathLike, index: int, count: int) -> Path:
    """feats.npz -> feats.part-0-of-2.npz"""
    out = Path(out)
    return out.with_name(f"{out.stem}.part-{index}-of-{count}{out.suffix or '.npz'}")


def shard_positions(paths: Sequence[str], index: int, count: int) -> np.ndarray:
    """Row positions (into `paths`, ascending) that shard `index` of `count` embeds: a contiguous range of the
    path-sorted order (stable sort, so repeated paths are split deterministically too)."""
    order = np.argsort(np.asarray(paths, dtype=object).astype(str), kind="stable")
    return np.sort(np.array_split(order, count)[index])


def _paths_digest(paths: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ extraction

def extract_dataset(checkpoint: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                    device: str = "auto", flip: bool = False, batch_size: int = 128,
                    splits: Sequence[str] | None = None, shard: tuple[int, int] | None = None,
                    show_progress: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """Embed the `splits` of a dataset (None: every split it has) into `out`, or with `shard` = (i, n) only shard i
    into `part_path(out, i, n)`; returns (file written, arrays). Keys: {split}_features, {q,g,t}_pids / _camids /
    _paths and, for a model with the AlignedReID local branch, {split}_local; a part adds "manifest"."""
    from ..data import load_dataset
    from ..data.images import load_image_tensor
    from ..data.records import split_arrays
    from .backends import file_digest
    from .extractor import Extractor

    dataset = load_dataset(data)
    ext = Extractor(checkpoint, device=device, flip=flip, batch_size=batch_size)
    arrays: dict[str, np.ndarray] = {}
    held: dict[str, Any] = {}
    chosen = [(s, k, getattr(dataset, s)) for s, k in SPLITS if splits is None or s in splits]
    for split, key, records in chosen:
        if not records:
            continue
        paths, pids, camids = split_arrays(records)
        rows = np.arange(len(paths)) if shard is None else shard_positions(paths, *shard)
        mine = [paths[i] for i in rows]
        images = load_image_tensor(mine, ext.input_size, ext.resize, show_progress, desc=f"loading {split}")
        if ext.has_local:
            arrays[f"{split}_features"], arrays[f"{split}_local"] = ext.embed_uint8(images, show_progress, local=True)
        else:
            arrays[f"{split}_features"] = ext.embed_uint8(images, show_progress)
        arrays[f"{key}_pids"], arrays[f"{key}_camids"], arrays[f"{key}_paths"] = pids[rows], camids[rows], \
            np.asarray(mine, dtype=str).reshape(len(rows))
        held[split] = {"total": len(paths), "paths_sha256": _paths_digest(paths), "rows": rows.tolist()}
    target = Path(out)
    if shard is not None:
        target = part_path(out, *shard)
        manifest = {"format": PART_FORMAT, "shard": list(shard),
                    "model": {"path": str(Path(checkpoint).resolve()), "sha256": file_digest([Path(checkpoint)]),
                              "dim": ext.dim, "local": ext.has_local},
                    "settings": {"flip": flip, "resize": ext.resize, "input_size": list(ext.input_size)},
                    "data": str(Path(data).resolve()), "splits": held}
        arrays["manifest"] = np.array(json.dumps(manifest))
    _save_npz(target, arrays)
    return target, arrays


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


# ------------------------------------------------------------------------------------------------ merge

def _read_part(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        manifest = json.loads(str(arrays.pop("manifest")))
    except FileNotFoundError:
        raise ReIDError(f"feature part {path}: missing") from None
    except KeyError:
        raise ReIDError(f"feature part {path}: no manifest (not written by `extract --shard`)") from None
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError, EOFError: a truncated or foreign file
        raise ReIDError(f"feature part {path}: damaged ({exc.__class__.__name__}: {exc})") from None
    if manifest.get("format") != PART_FORMAT:
        raise ReIDError(f"feature part {path}: format {manifest.get('format')!r}, expected {PART_FORMAT!r}")
    return manifest, arrays


def _check_parts(parts: list[tuple[Path, dict[str, Any]]]) -> int:
    """Same n, every shard once, same model / settings / data; returns n."""
    first_path, first = parts[0]
    count = first["shard"][1]
    by_index: dict[int, Path] = {}
    for path, manifest in parts:
        index, n = manifest["shard"]
        if n != count:
            raise ReIDError(f"feature part {path} is shard {index} of {n}, but {first_path} is of {count}: parts of "
                            "different splits cannot be merged")
        if index in by_index:
            raise ReIDError(f"shard {index} of {count} given twice: {by_index[index]} and {path}")
        by_index[index] = path
        for key, what in (("model", "model"), ("settings", "settings (flip / resize / input size)"),
                          ("data", "dataset")):
            if manifest[key] != first[key]:
                raise ReIDError(f"feature part {path} differs from {first_path} in its {what}: {manifest[key]} vs "
                                f"{first[key]}")
        if {s: v["paths_sha256"] for s, v in manifest["splits"].items()} != \
                {s: v["paths_sha256"] for s, v in first["splits"].items()}:
            raise ReIDError(f"feature part {path} holds other splits or items than {first_path} (another dataset "
                            "version or --splits?)")
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        expected = ", ".join(part_path(_stem_of(first_path), i, count).name for i in missing)
        raise ReIDError(f"missing shard(s) {', '.join(map(str, missing))} of {count} (expected {expected}); "
                        f"given: {', '.join(str(p) for p, _ in parts)}")
    return count


def _stem_of(part: Path) -> Path:
    """feats.part-0-of-2.npz -> feats.npz"""
    return part.with_name(re.sub(r"\.part-\d+-of-\d+", "", part.name))


def merge_feature_parts(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, np.ndarray]:
    """Merge the parts of a sharded extraction into `out` in the single-process layout and row order."""
    if not parts:
        raise ReIDError("merge-features: no parts given")
    read = [(Path(p), *_read_part(Path(p))) for p in parts]
    _check_parts([(p, m) for p, m, _ in read])
    first = read[0][1]
    merged: dict[str, np.ndarray] = {}
    for split, key in SPLITS:
        if split not in first["splits"]:
            continue
        total = first["splits"][split]["total"]
        owner = np.full(total, -1, np.int64)
        for n, (path, manifest, _) in enumerate(read):
            rows = np.asarray(manifest["splits"][split]["rows"], np.int64)
            taken = rows[owner[rows] >= 0]
            if taken.size:
                other = read[int(owner[taken[0]])][0]
                raise ReIDError(f"{split} item at row {taken[0]} is held by both {other} and {path} "
                                f"({taken.size} item(s) twice)")
            owner[rows] = n
        if (owner < 0).any():
            lost = np.flatnonzero(owner < 0)
            raise ReIDError(f"{split}: {lost.size} of {total} item(s) are in no part (first at row {lost[0]}); the "
                            "parts were written by different versions of the split rule")
        for name in (f"{split}_features", f"{split}_local", f"{key}_pids", f"{key}_camids", f"{key}_paths"):
            if name not in read[0][2]:
                continue
            sample = read[0][2][name]
            full = np.empty((total, *sample.shape[1:]), dtype=np.result_type(*(a[name].dtype for *_, a in read)))
            for _, manifest, arrays in read:
                full[np.asarray(manifest["splits"][split]["rows"], np.int64)] = arrays[name]
            merged[name] = full
    _save_npz(Path(out), merged)
    return merged
