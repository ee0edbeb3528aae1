"""MOTChallenge files: tracker output, ground truth, public detections (text) and seqinfo.ini.

One row per box, comma separated, frame numbers 1-based:
- tracks / detections: `frame,id,x,y,w,h,conf,-1,-1,-1` (detections have id -1);
- MOT16/17 ground truth (9 columns): `frame,id,x,y,w,h,consider,class,visibility`; only rows with consider == 1
  and class == 1 (pedestrian) are people to track (`read_gt` keeps those; MOTChallenge's own evaluation does the
  same);
- MOT15 ground truth (10 columns): `frame,id,x,y,w,h,consider,-1,-1,-1` (no class column).

`MotTable` holds the rows as arrays sorted by (frame, id); `frame` stays 1-based like the file. Files are written
atomically (a reader sees the old file or the complete new one); `MotWriter` streams rows of a long or live run.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..utils import atomic_path, atomic_write_text


@dataclass
class MotTable:
    """Boxes of a sequence: frame (1-based) and id per row, boxes (x, y, w, h) in pixels, score, visibility."""

    frames: np.ndarray                       # (N,) int64, 1-based
    ids: np.ndarray                          # (N,) int64 (-1 for anonymous detections)
    boxes: np.ndarray                        # (N, 4) float64 x, y, w, h
    scores: np.ndarray                       # (N,) float64 (conf column; 1 for ground truth)
    visibility: np.ndarray = field(default=None)  # (N,) float64 in [0, 1]; 1 where the file has none

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames, np.int64).reshape(-1)
        self.ids = np.asarray(self.ids, np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        n = len(self.frames)
        self.visibility = np.ones(n) if self.visibility is None else np.asarray(self.visibility, np.float64)
        if not all(len(a) == n for a in (self.ids, self.boxes, self.scores, self.visibility)):
            raise ValueError("MotTable: all columns need the same length")

    def __len__(self) -> int:
        return len(self.frames)

    @classmethod
    def empty(cls) -> MotTable:
        return cls(np.zeros(0), np.zeros(0), np.zeros((0, 4)), np.zeros(0))

    @property
    def xyxy(self) -> np.ndarray:
        """(N, 4) x1, y1, x2, y2."""
        return np.concatenate([self.boxes[:, :2], self.boxes[:, :2] + self.boxes[:, 2:]], axis=1)

    def select(self, mask: np.ndarray) -> MotTable:
        return MotTable(self.frames[mask], self.ids[mask], self.boxes[mask], self.scores[mask], self.visibility[mask])

    def sorted(self) -> MotTable:
        return self.select(np.lexsort((self.ids, self.frames)))

    def at(self, frame: int) -> MotTable:
        """Rows of one 1-based frame."""
        return self.select(self.frames == frame)

    def by_frame(self) -> dict[int, np.ndarray]:
        """1-based frame -> row indices, for serving a frame at a time."""
        order = np.argsort(self.frames, kind="stable")
        frames = self.frames[order]
        starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]]) if len(frames) else np.zeros(0, int)
        return {int(frames[s]): rows for s, rows in zip(starts, np.split(order, starts[1:]))}

    @property
    def num_frames(self) -> int:
        """The last frame number (0 if empty)."""
        return int(self.frames.max()) if len(self) else 0


def _parse(path: Path) -> tuple[np.ndarray, int, np.ndarray]:
    """All rows as float64 (N, C), the column count and each row's line number; DataError naming the file and
    line for a malformed row."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read MOT file {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from exc
    rows: list[list[float]] = []
    lines: list[int] = []
    width = None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(",") if "," in line else line.split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise DataError(f"{path}, line {number}: not a number in {line!r}") from None
        if len(values) < 6:
            raise DataError(f"{path}, line {number}: expected at least 6 columns (frame,id,x,y,w,h), got "
                            f"{len(values)} in {line!r}")
        if width is not None and len(values) != width:
            raise DataError(f"{path}, line {number}: {len(values)} columns where earlier lines have {width}")
        width = len(values)
        if not np.isfinite(values[:6]).all() or values[0] < 1 or values[0] != int(values[0]):
            raise DataError(f"{path}, line {number}: frame must be an integer >= 1 and the box finite, got {line!r}")
        if values[4] < 0 or values[5] < 0:
            raise DataError(f"{path}, line {number}: negative box width/height in {line!r}")
        rows.append(values)
        lines.append(number)
    return (np.array(rows, np.float64) if rows else np.zeros((0, 6))), (width or 0), np.array(lines, np.int64)


def read_mot(path: str | os.PathLike) -> MotTable:
    """Tracks or detections (`frame,id,x,y,w,h[,conf,...]`); conf defaults to 1 when the column is absent."""
    path = Path(path)
    data, width, _ = _parse(path)
    scores = data[:, 6] if width >= 7 else np.ones(len(data))
    return MotTable(data[:, 0], data[:, 1], data[:, 2:6], scores).sorted()


def read_gt(path: str | os.PathLike, *, people_only: bool = True) -> MotTable:
    """Ground truth. 9 columns (MOT16/17: consider, class, visibility): with `people_only`, rows with consider == 1
    and class == 1; 10 columns (MOT15): rows with consider (column 7) != 0; 6-7 columns: every row."""
    path = Path(path)
    data, width, lines = _parse(path)
    visibility = np.ones(len(data))
    keep = np.ones(len(data), bool)
    if width == 9:
        visibility = np.clip(data[:, 8], 0.0, 1.0)
        if people_only:
            keep = (data[:, 6] == 1) & (data[:, 7] == 1)
    elif width >= 7 and people_only:
        keep = data[:, 6] != 0
    ids = data[:, 1]
    if (ids[keep] < 0).any():
        line = int(lines[np.flatnonzero(keep & (ids < 0))[0]])
        raise DataError(f"{path}, line {line}: a ground-truth person needs an id >= 0")
    table = MotTable(data[:, 0], ids, data[:, 2:6], np.ones(len(data)), visibility)
    return table.select(keep).sorted()


DISTRACTOR_CLASSES = (2, 7, 8, 12)  # MOT16/17: person on vehicle, static person, distractor, reflection


def read_gt_distractors(path: str | os.PathLike) -> tuple[MotTable, np.ndarray] | None:
    """Every ground-truth row of a MOT16/17 file (9 columns) and whether its class is a distractor class, for the
    MOTChallenge preprocessing (a tracker box matched to a distractor is not counted; see
    `reidkit.metrics.tracking.drop_distractor_matches`). None for files without a class column (MOT15, synth-video
    output has class 1 only and gets the same result either way)."""
    path = Path(path)
    data, width, _ = _parse(path)
    if width != 9:
        return None
    table = MotTable(data[:, 0], data[:, 1], data[:, 2:6], np.ones(len(data)), np.clip(data[:, 8], 0.0, 1.0))
    order = np.lexsort((table.ids, table.frames))
    return table.select(order), np.isin(data[order, 7].astype(int), DISTRACTOR_CLASSES)


def format_rows(table: MotTable, *, gt: bool = False) -> str:
    """Lines of `table`: `frame,id,x,y,w,h,conf,-1,-1,-1`, or with `gt` the MOT17 `frame,id,x,y,w,h,1,1,vis`."""
    if not len(table):
        return ""
    f, i = table.frames, table.ids
    x, y, w, h = table.boxes.T
    if gt:
        rows = zip(f, i, x, y, w, h, table.visibility)
        return "".join(f"{a},{b},{c:.2f},{d:.2f},{e:.2f},{g:.2f},1,1,{v:.3f}\n" for a, b, c, d, e, g, v in rows)
    rows = zip(f, i, x, y, w, h, table.scores)
    return "".join(f"{a},{b},{c:.2f},{d:.2f},{e:.2f},{g:.2f},{s:.4f},-1,-1,-1\n" for a, b, c, d, e, g, s in rows)


def write_mot(path: str | os.PathLike, table: MotTable, *, gt: bool = False) -> None:
    """Write `table` (sorted by frame, id) atomically; see `format_rows` for the columns."""
    atomic_write_text(format_rows(table.sorted(), gt=gt), path)


class MotWriter:
    """Stream rows of a long or live run to `path`: rows go to a hidden `.<name>.partial` file, flushed after every
    `add`, so a crash leaves complete lines; `close()` (also on an exception inside `with`) renames it onto `path`,
    so what was tracked up to an interruption (Ctrl-C) is kept as a valid file."""

    def __init__(self, path: str | os.PathLike, *, gt: bool = False) -> None:
        self.path, self.gt = Path(path), gt
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(f".{self.path.name}.partial")
        self._fh = open(self._partial, "w")  # noqa: SIM115 (held open across add() calls, closed by close())
        self.rows = 0

    def add(self, table: MotTable) -> None:
        self._fh.write(format_rows(table, gt=self.gt))  # whole lines in one write
        self._fh.flush()
        self.rows += len(table)

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        with atomic_path(self.path) as tmp:
            os.replace(self._partial, tmp)

    def __enter__(self) -> MotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ground_truth_file(path: str | os.PathLike) -> Path:
    """`path` itself if a file, else the MOTChallenge SEQ/gt/gt.txt under a sequence folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "gt" / "gt.txt").is_file():
            raise DataError(f"{path}: a folder without gt/gt.txt (give the ground-truth file or a MOT sequence)")
        return path / "gt" / "gt.txt"
    if not path.is_file():
        raise DataError(f"{path}: no such ground-truth file")
    return path


def read_gt_dir(gt_dir: str | os.PathLike) -> dict[str, MotTable]:
    """camera -> ground truth, for every <camera>/gt/gt.txt under `gt_dir` (a `reidkit synth-video` output or a
    folder of MOTChallenge sequences)."""
    root = Path(gt_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such ground-truth folder")
    found = {p.parent.parent.name: read_gt(p) for p in sorted(root.glob("*/gt/gt.txt"))}
    if not found:
        raise DataError(f"{root}: no <camera>/gt/gt.txt inside")
    return found


def read_run(run_dir: str | os.PathLike, name: str = "tracks.txt") -> dict[str, MotTable]:
    """camera -> tracks, for every <camera>/tracks.txt of a `reidkit track` run folder."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such run folder")
    found = {p.parent.name: read_mot(p) for p in sorted(root.glob(f"*/{name}"))}
    if not found:
        raise DataError(f"{root}: no <camera>/{name} inside (is it a `reidkit track` output folder?)")
    return found


@dataclass(frozen=True)
class SeqInfo:
    """The [Sequence] section of a MOTChallenge seqinfo.ini."""

    name: str
    fps: float
    length: int | None = None
    width: int | None = None
    height: int | None = None
    im_dir: str = "img1"
    im_ext: str = ".jpg"


def read_seqinfo(path: str | os.PathLike) -> SeqInfo:
    """Parse a seqinfo.ini; DataError naming the file when it is unreadable or lacks name/frameRate."""
    parser = configparser.ConfigParser()
    try:
        with open(path) as fh:
            parser.read_file(fh)
        section = parser["Sequence"]
        return SeqInfo(name=section.get("name", Path(path).parent.name), fps=float(section["frameRate"]),
                       length=section.getint("seqLength"), width=section.getint("imWidth"),
                       height=section.getint("imHeight"), im_dir=section.get("imDir", "img1"),
                       im_ext=section.get("imExt", ".jpg"))
    except (OSError, configparser.Error, KeyError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def write_seqinfo(path: str | os.PathLike, info: SeqInfo) -> None:
    lines = ["[Sequence]", f"name={info.name}", f"imDir={info.im_dir}", f"frameRate={info.fps:g}"]
    lines += [f"{key}={value}" for key, value in (("seqLength", info.length), ("imWidth", info.width),
                                                   ("imHeight", info.height)) if value is not None]
    lines.append(f"imExt={info.im_ext}")
    atomic_write_text("\n".join(lines) + "\n", path)
