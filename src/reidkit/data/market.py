"""Market-1501 folder layout loader (also DukeMTMC-reID and CUHK03-NP as distributed).

Layout: ``root/bounding_box_train`` (train), ``root/query``, ``root/bounding_box_test`` (gallery).
File names start with ``PID_cCAM``: ``0002_c1s1_000451_03.jpg`` (Market), ``0001_c2_f0046182.jpg`` (Duke),
``0001_c1_00.jpg`` (CUHK03-NP).

Conventions (as torchreid):
- camid is 0-based: camera ``c1`` becomes camid 0.
- pid -1 is junk: dropped, and the count is recorded in ``dataset.notes``.
- pid 0 (``0000``) is a distractor: kept (it belongs in the gallery).
- frame: the ``FFFFFF`` of Market's ``cCsS_FFFFFF`` or Duke's ``_fFFFFFFF``, else None.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, is_image_name, raise_if_bad_images
from .records import SPLITS, Record, ReIDDataset, check_query_gallery

logger = logging.getLogger(__name__)

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_NAME_RE = re.compile(r"^([-\d]+)_c(\d+)")
_FRAME_RE = re.compile(r"^[-\d]+_c\d+s\d+_(\d+)|_f(\d+)")


@dataclass
class FolderScan:
    """What one folder held: usable records, junk images dropped, non-image entries ignored."""

    folder: Path
    records: list[Record] = field(default_factory=list)
    num_junk: int = 0
    ignored: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        notes = []
        if self.num_junk:
            notes.append(f"{self.folder}: dropped {self.num_junk} junk image(s) (pid -1)")
        if self.ignored:
            shown = ", ".join(self.ignored[:5]) + (" ..." if len(self.ignored) > 5 else "")
            notes.append(f"{self.folder}: ignored {len(self.ignored)} non-image entr(y/ies): {shown}")
        return notes


def parse_market_name(name: str) -> tuple[int, int, int | None]:
    """(pid, 0-based camid, frame or None) from a Market-style file name; DataError if it does not parse."""
    match = _NAME_RE.match(name)
    if match is None:
        raise DataError(f"cannot parse image name {name}: expected 'PID_cCAM...' like 0002_c1s1_000451_03.jpg")
    try:
        pid = int(match.group(1))
    except ValueError:
        raise DataError(f"cannot parse image name {name}: person id {match.group(1)!r} is not an integer") from None
    cam = int(match.group(2))
    if pid < -1:
        raise DataError(f"cannot parse image name {name}: person id {pid} is negative (only -1 = junk is allowed)")
    if cam < 1:
        raise DataError(f"cannot parse image name {name}: camera numbers start at 1, got c{cam}")
    frame_match = _FRAME_RE.search(name)
    frame = int(next(g for g in frame_match.groups() if g is not None)) if frame_match else None
    return pid, cam - 1, frame


def scan_image_folder(folder: str | os.PathLike) -> FolderScan:
    """Records of every image directly in `folder` (sorted by name); junk counted, other entries listed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"missing folder {folder}: " + ("it is a file" if folder.exists() else "it does not exist"))
    scan = FolderScan(folder)
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir() or not is_image_name(entry.name):
            scan.ignored.append(entry.name)
            continue
        pid, camid, frame = parse_market_name(entry.name)
        if pid == -1:
            scan.num_junk += 1
        else:
            scan.records.append(Record(os.path.join(folder, entry.name), pid, camid, frame))
    if scan.ignored:  # subfolders and other formats are never read: say so, an image in one would be lost silently
        num_dirs = sum((folder / name).is_dir() for name in scan.ignored)
        formats = "/".join(sorted(IMAGE_EXTENSIONS))
        logger.warning("%s: skipped %d entr(y/ies) the loader does not read (%d subfolder(s), %d file(s) not in %s)",
                       folder, len(scan.ignored), num_dirs, len(scan.ignored) - num_dirs, formats)
    return scan


def _require_images(scan: FolderScan) -> None:
    if not scan.records:
        detail = f" (only {scan.num_junk} junk images)" if scan.num_junk else ""
        hint = ""
        if (scan.folder / MARKET_FOLDERS["train"]).is_dir():
            hint = f"; did you mean {scan.folder / MARKET_FOLDERS['train']}?"
        raise DataError(f"empty split: folder {scan.folder} contains no usable images{detail}{hint}")


def finish_dataset(dataset: ReIDDataset, notes: list[str]) -> ReIDDataset:
    """Attach loader notes plus the distractor and unmatched-query checks, and log them."""
    distractors = sum(r.pid == 0 for r in dataset.gallery)
    if distractors:
        notes.append(f"gallery keeps {distractors} distractor image(s) (pid 0)")
    report = check_query_gallery(dataset)
    query_names = {os.path.basename(r.path) for r in dataset.query}
    shared = sorted(query_names & {os.path.basename(r.path) for r in dataset.gallery})
    if shared:  # the same shot on both sides: a free rank-1 under protocols that do not filter its camera
        message = (f"{len(shared)} image name(s) appear in both query and gallery (e.g. {', '.join(shared[:3])}): "
                   "the same shot on both sides inflates rank-1 under protocols that keep same-camera matches")
        logger.warning("%s: %s", dataset.name, message)
        notes.append(message)
    for note in notes:
        logger.info("%s: %s", dataset.name, note)
    if report.num_unmatched:
        logger.warning("%s: %s", dataset.name, report.message)
        notes.append(report.message)
    dataset.notes.extend(notes)
    return dataset


def load_image_folder(folder: str | os.PathLike, verify: bool = False) -> ReIDDataset:
    """A single folder of Market-named images as a train-only dataset (the input of `reidkit split`)."""
    scan = scan_image_folder(folder)
    _require_images(scan)
    if verify:
        raise_if_bad_images(scan.records, str(scan.folder))
    return finish_dataset(ReIDDataset(train=scan.records, name=Path(folder).name), scan.notes())


def load_market(root: str | os.PathLike, verify: bool = False) -> ReIDDataset:
    """Load a Market-1501-layout root; `verify` decodes every image.

    Query and gallery come together (either folder alone is an error); a root holding only the training folder
    (e.g. a CUHK03-NP training release) loads as train only, and one holding only query + gallery as an
    evaluation set. Every folder present must hold images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"missing folder {root}: dataset root does not exist")
    has_eval = any((root / MARKET_FOLDERS[split]).exists() for split in ("query", "gallery"))
    wanted = [split for split in SPLITS if split != "train" or (root / MARKET_FOLDERS["train"]).exists()]
    wanted = [split for split in wanted if split == "train" or has_eval]
    scans = {split: scan_image_folder(root / MARKET_FOLDERS[split]) for split in wanted}
    notes: list[str] = []
    for scan in scans.values():
        _require_images(scan)
        notes.extend(scan.notes())
    dataset = ReIDDataset(**{split: scans[split].records for split in scans}, name=root.name)
    if verify:
        raise_if_bad_images(dataset.train + dataset.query + dataset.gallery, str(root))
    return finish_dataset(dataset, notes)


def is_market_root(path: str | os.PathLike) -> bool:
    return any((Path(path) / sub).is_dir() for sub in MARKET_FOLDERS.values())
