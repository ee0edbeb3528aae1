"""CUHK03 from the official release: ``cuhk-03.mat`` plus the new-protocol (767/700) split file.

``cuhk-03.mat`` is a MATLAB v7.3 (HDF5) file. Its ``detected`` and ``labeled`` entries are cells of five
camera pairs; each pair is a persons x 10 cell of HxWx3 uint8 images (columns 1-5 from the pair's first camera,
6-10 from its second); empty cells mean the person has fewer images. The images are written once as PNG files
named ``{pair}_{person:03d}_{view}_{image:02d}.png`` (all 1-based), the names the new-protocol split file
(``cuhk03_new_protocol_config_{detected,labeled}.mat``: train_idx, query_idx, gallery_idx, labels, filelist,
camId; 1-based indices) refers to. camid is the 0-based view (camId - 1); pids are the split file's labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

from ..errors import DataError
from ..utils import atomic_path, progress
from .market import finish_dataset
from .records import SPLITS, Record, ReIDDataset

SPLIT_KEYS = ("train_idx", "query_idx", "gallery_idx", "labels", "filelist")
IMAGES_PER_PERSON = 10  # 5 per camera of the pair


@dataclass(frozen=True)
class ExtractResult:
    names: frozenset[str]  # every image file name the .mat holds
    num_written: int
    num_empty_cells: int


def cuhk03_image_name(pair: int, person: int, image: int) -> str:
    """File name for 0-based (pair, person, image column), matching the split file's filelist."""
    view = 1 if image < IMAGES_PER_PERSON // 2 else 2
    return f"{pair + 1}_{person + 1:03d}_{view}_{image + 1:02d}.png"


def _open_mat(mat_path: Path) -> h5py.File:
    if not mat_path.is_file():
        raise DataError(f"missing file {mat_path}: CUHK03 needs the official cuhk-03.mat")
    try:
        return h5py.File(mat_path, "r")
    except OSError as exc:
        raise DataError(f"cannot read {mat_path}: not a MATLAB v7.3 (HDF5) file ({exc})") from None


def _pair_cells(mat: h5py.File, mat_path: Path, image_type: str) -> list[np.ndarray]:
    """One (persons x 10) array of object references per camera pair."""
    if image_type not in mat:
        raise DataError(f"{mat_path}: missing key {image_type!r} (keys: {', '.join(sorted(mat.keys()))})")
    pairs = []
    for pair_ref in np.ravel(mat[image_type][()]):
        cells = mat[pair_ref][()]
        if cells.dtype != object or cells.ndim != 2 or cells.shape[0] != IMAGES_PER_PERSON:
            raise DataError(f"{mat_path}: {image_type} pair {len(pairs) + 1} is not a persons x 10 cell array "
                            f"(shape {cells.shape[::-1]})")
        pairs.append(cells.T)  # MATLAB is column-major: h5py sees the transpose
    if not pairs:
        raise DataError(f"{mat_path}: {image_type!r} holds no camera pairs")
    return pairs


def _cell_image(mat: h5py.File, ref: h5py.Reference, where: str) -> np.ndarray | None:
    """The HxWx3 uint8 image of one cell, or None for an empty cell."""
    data = mat[ref]
    if data.attrs.get("MATLAB_empty", 0) or data.ndim != 3:
        return None
    image = data[()].T  # stored as 3 x W x H
    if image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"{where}: expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    return image


def extract_cuhk03_images(mat_path: str | os.PathLike, out_dir: str | os.PathLike, detected: bool = True,
                          show_progress: bool = False) -> ExtractResult:
    """Write every image of `cuhk-03.mat` as PNG into `out_dir`, skipping files already there.

    Each PNG is written atomically, so an interrupted run leaves only complete files and resuming is safe.
    """
    mat_path, out_dir = Path(mat_path), Path(out_dir)
    image_type = "detected" if detected else "labeled"
    out_dir.mkdir(parents=True, exist_ok=True)
    cached = set(os.listdir(out_dir))  # one listing instead of a stat per image
    names, written, empty = set(), 0, 0
    with _open_mat(mat_path) as mat:
        for pair, cells in enumerate(_pair_cells(mat, mat_path, image_type)):
            for person, image_col in progress(np.ndindex(cells.shape), total=cells.size, enabled=show_progress,
                                              desc=f"cuhk03 {image_type} pair {pair + 1}"):
                name = cuhk03_image_name(pair, person, image_col)
                if name in cached:
                    names.add(name)
                    continue
                where = f"{mat_path} {image_type} pair {pair + 1} person {person + 1} image {image_col + 1}"
                image = _cell_image(mat, cells[person, image_col], where)
                if image is None:
                    empty += 1
                    continue
                with atomic_path(out_dir / name) as tmp:
                    Image.fromarray(image).save(tmp, format="PNG", compress_level=1)  # a cache: speed over size
                names.add(name)
                written += 1
    return ExtractResult(frozenset(names), written, empty)


def _filelist_names(filelist: np.ndarray) -> list[str]:
    if filelist.dtype.kind == "U":  # a char matrix: one padded row per file
        return [str(s).strip() for s in filelist.ravel()]
    return [str(np.ravel(cell)[0]).strip() if np.size(cell) else "" for cell in filelist.ravel()]


def read_new_protocol_split(split_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Validated split arrays: 0-based train/query/gallery indices, labels, camids (0-based) and names."""
    split_path = Path(split_path)
    if not split_path.is_file():
        raise DataError(f"missing file {split_path}: CUHK03 needs the new-protocol split .mat")
    try:
        raw = scipy.io.loadmat(split_path)
    except (ValueError, NotImplementedError, OSError) as exc:
        raise DataError(f"cannot read split file {split_path}: {exc}") from None
    missing = [k for k in SPLIT_KEYS if k not in raw]
    if missing:
        raise DataError(f"split file {split_path}: missing key(s) {', '.join(missing)}")
    names = np.asarray(_filelist_names(raw["filelist"]))
    labels = np.ravel(raw["labels"]).astype(np.int64)
    # camId is optional: the view is also the third field of the file name.
    cams = (np.ravel(raw["camId"]) if "camId" in raw else [int(n.split("_")[2]) for n in names])
    camids = np.asarray(cams, dtype=np.int64) - 1
    if not len(names) == len(labels) == len(camids):
        raise DataError(f"split file {split_path}: filelist ({len(names)}), labels ({len(labels)}) and camId "
                        f"({len(camids)}) must have the same length")
    split = {"names": names, "labels": labels, "camids": camids}
    for key in SPLIT_KEYS[:3]:
        idx = np.ravel(raw[key]).astype(np.int64) - 1
        bad = idx[(idx < 0) | (idx >= len(names))]
        if bad.size:
            raise DataError(f"split file {split_path}: {key} has index {int(bad[0]) + 1} outside 1..{len(names)}")
        if idx.size == 0:
            raise DataError(f"empty split: split file {split_path}: {key} is empty")
        split[key] = idx
    return split


def load_cuhk03(mat_path: str | os.PathLike, split_path: str | os.PathLike, detected: bool = True,
                out_dir: str | os.PathLike | None = None, show_progress: bool = False) -> ReIDDataset:
    """CUHK03 new protocol from the official files; images are cached as PNG in `out_dir`.

    `out_dir` defaults to ``images_detected``/``images_labeled`` beside `mat_path`. When every image the
    split needs is already cached, the (large) .mat is not opened again.
    """
    image_type = "detected" if detected else "labeled"
    out_dir = Path(out_dir) if out_dir is not None else Path(mat_path).parent / f"images_{image_type}"
    split = read_new_protocol_split(split_path)
    needed = set(split["names"].tolist())
    notes = []
    if not needed <= (set(os.listdir(out_dir)) if out_dir.is_dir() else set()):
        result = extract_cuhk03_images(mat_path, out_dir, detected=detected, show_progress=show_progress)
        notes.append(f"wrote {result.num_written} PNG image(s) to {out_dir}; {result.num_empty_cells} empty "
                     f"cell(s) in {mat_path} (persons with fewer than {IMAGES_PER_PERSON} images)")
        absent = sorted(needed - result.names)
        if absent:
            raise DataError(f"split file {split_path}: {len(absent)} listed image(s) are not in {mat_path} "
                            f"({image_type}): {', '.join(absent[:5])}")
    paths = np.asarray([str(out_dir / name) for name in split["names"]])
    dataset = ReIDDataset(name=f"cuhk03-{image_type}")
    for part in SPLITS:
        idx = split[f"{part}_idx"]
        setattr(dataset, part, [Record(str(p), int(pid), int(cam))
                                for p, pid, cam in zip(paths[idx], split["labels"][idx], split["camids"][idx])])
    return finish_dataset(dataset, notes)
