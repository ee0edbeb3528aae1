"""What `reidkit track` leaves in its output folder, and the writers that produce it.

    OUT/run.json                      what was run (sources, model, detector, options); written first: marks the
                                      folder as a track run (so --overwrite only ever deletes a track run)
    OUT/<camera>/tracks.txt           MOTChallenge `frame,id,x,y,w,h,conf,-1,-1,-1`, frames 1-based, ids = GLOBAL ids
    OUT/<camera>/annotated.mp4        boxes, global ids and short trails (H.264 through PyAV; cv2 draws)
    OUT/identities.json               global id -> per-camera tracklets (time spans, frames, best crop)
    OUT/crops/{gid:04d}_c{cam}_t{track:05d}_f{frame:06d}.jpg
                                      the best crop of every tracklet, a Market-style name (`parse_market_name`
                                      reads pid = global id, camid = camera index - 1, frame; `_t` = the camera's
                                      track) so a run's crops load as a dataset of tracklets
    OUT/gallery/                      a reidkit.search GalleryIndex: one row per tracklet (its feature; metadata
                                      pid = global id, camid, track, frame, time, source = camera, path = crop)
    OUT/contact_sheet.png             each global identity's best crop per camera
    OUT/timeline.png                  who is seen by which camera when
    OUT/summary.json                  counts per camera, time per stage, whether the run was interrupted

Every file is written atomically (reidkit.utils), so an interrupted run leaves each file whole or absent.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, ReIDError
from ..utils import atomic_path, atomic_write_json

IDENTITIES_FORMAT = "reidkit-identities-1"
RUN_MARKER = "run.json"
CROP_HEIGHT = 256  # best crops are stored at most this tall (Market crops are 128; OSNet reads 256)


@dataclass
class TrackletRecord:
    """One finished tracklet, as kept in memory for association and the outputs (no per-frame data)."""

    camera: str
    cam_index: int          # 0-based position of the camera among the run's sources
    track: int              # the camera tracker's id
    start: float            # seconds
    end: float
    first_frame: int        # 0-based
    last_frame: int
    boxes: int              # rows in tracks.txt
    feature: np.ndarray     # (D,) L2-normalised, quality-weighted mean of its detections' embeddings
    best_frame: int = -1    # 0-based frame of the best crop (-1: none)
    best_time: float = float("nan")
    best_box: tuple[float, float, float, float] | None = None
    best_score: float = 0.0
    crop: str | None = None  # path relative to OUT
    gid: int = 0            # global identity (0 = not yet associated)
    frame_file: str | None = None  # frame image name for frame-folder sources
    first_box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 of the first and last rows:
    last_box: tuple[float, float, float, float] | None = None   # what stitching within a camera compares
    intervals: np.ndarray | None = None  # (K, 2) seconds: the runs of frames it was seen in (cannot-link)

    def crop_name(self, gid: int) -> str:
        return f"crops/{gid:04d}_c{self.cam_index + 1}_t{self.track:05d}_f{max(self.best_frame, 0) + 1:06d}.jpg"

    def to_json(self) -> dict[str, Any]:
        return {"track": self.track, "start": round(self.start, 3), "end": round(self.end, 3),
                "first_frame": self.first_frame + 1, "last_frame": self.last_frame + 1, "boxes": self.boxes,
                "best_frame": self.best_frame + 1 if self.best_frame >= 0 else None,
                "best_frame_file": self.frame_file,
                "best_box": None if self.best_box is None else [round(float(v), 1) for v in self.best_box],
                "best_score": round(float(self.best_score), 4), "crop": self.crop}


# --------------------------------------------------------------------------------------------- the folder

def prepare_output(out: str | os.PathLike, overwrite: bool) -> Path:
    """`out` ready to write: created, or emptied when it is an earlier track run and `overwrite`. A non-empty
    folder is refused (ReIDError naming it) unless overwrite -- and even then unless it holds run.json."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReIDError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ReIDError(f"--out {out}: folder exists and is not empty; choose another or pass --overwrite")
        if not (out / RUN_MARKER).is_file():
            raise ReIDError(f"--out {out}: not a reidkit track run (no {RUN_MARKER}); refusing to delete it even "
                            "with --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_crop(image: np.ndarray, path: Path) -> None:
    """JPEG of an RGB crop, at most CROP_HEIGHT tall, written atomically (encoded in memory first)."""
    import cv2

    h, w = image.shape[:2]
    if h > CROP_HEIGHT:
        image = cv2.resize(image, (max(1, round(w * CROP_HEIGHT / h)), CROP_HEIGHT), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise DataError(f"{path}: JPEG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


# ------------------------------------------------------------------------------------------- identities

def identities_document(records: Sequence[TrackletRecord], cameras: Sequence[dict[str, Any]], complete: bool,
                        association: dict[str, Any]) -> dict[str, Any]:
    """The identities.json content: global id -> cameras -> tracklets (sorted by start)."""
    identities: dict[str, Any] = {}
    for rec in sorted(records, key=lambda r: (r.gid, r.start, r.cam_index)):
        if rec.gid <= 0:
            continue
        entry = identities.setdefault(str(rec.gid), {"first_seen": rec.start, "last_seen": rec.end,
                                                     "boxes": 0, "cameras": {}})
        entry["first_seen"] = round(min(entry["first_seen"], rec.start), 3)
        entry["last_seen"] = round(max(entry["last_seen"], rec.end), 3)
        entry["boxes"] += rec.boxes
        entry["cameras"].setdefault(rec.camera, []).append(rec.to_json())
    return {"format": IDENTITIES_FORMAT, "complete": complete, "cameras": list(cameras),
            "association": association, "num_identities": len(identities),
            "num_tracklets": sum(r.gid > 0 for r in records), "identities": identities}


def write_identities(path: Path, document: dict[str, Any]) -> None:
    atomic_write_json(document, path)


def load_identities(run: str | os.PathLike) -> dict[str, Any]:
    path = Path(run) / "identities.json"
    if not path.is_file():
        raise ReIDError(f"--in {run}: no identities.json (not a `reidkit track` output folder, or it was "
                        "interrupted before anything was written)")
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReIDError(f"{path}: unreadable ({exc})") from None
    if document.get("format") != IDENTITIES_FORMAT:
        raise ReIDError(f"{path}: format {document.get('format')!r}, expected {IDENTITIES_FORMAT}")
    return document


# ------------------------------------------------------------------------------------------------ colours

def identity_colour(gid: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour per global id (golden-ratio hues)."""
    hue = (gid * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(255 * r), int(255 * g), int(255 * b)


# ---------------------------------------------------------------------------------------- contact sheet

def best_crops(records: Sequence[TrackletRecord]) -> dict[tuple[int, int], TrackletRecord]:
    """(gid, camera index) -> the tracklet whose crop is best (highest score, then most boxes)."""
    best: dict[tuple[int, int], TrackletRecord] = {}
    for rec in records:
        if rec.gid <= 0 or rec.crop is None:
            continue
        key = (rec.gid, rec.cam_index)
        if key not in best or (rec.best_score, rec.boxes) > (best[key].best_score, best[key].boxes):
            best[key] = rec
    return best


def contact_sheet(out: Path, records: Sequence[TrackletRecord], cameras: Sequence[str], path: Path,
                  cell: tuple[int, int] = (96, 48), max_identities: int = 200) -> Path | None:
    """PNG: one row per global identity (most boxes first, at most `max_identities`), one column per camera,
    the identity's best crop there (grey when that camera never saw it). None when there is nobody."""
    from PIL import Image, ImageDraw

    from ..data.images import read_image

    best = best_crops(records)
    if not best:
        return None
    boxes: dict[int, int] = {}
    for rec in records:
        if rec.gid > 0:
            boxes[rec.gid] = boxes.get(rec.gid, 0) + rec.boxes
    gids = sorted(boxes, key=lambda g: (-boxes[g], g))[:max_identities]
    ch, cw = cell
    label_w, head_h, pad = 56, 20, 4
    per_column = 8  # identities per column of blocks: a long list wraps into several columns
    block_w = label_w + len(cameras) * (cw + pad) + pad
    blocks = (len(gids) + per_column - 1) // per_column
    rows = min(len(gids), per_column)
    sheet = Image.new("RGB", (blocks * (block_w + 2 * pad), head_h + rows * (ch + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for b in range(blocks):
        for c, name in enumerate(cameras):
            draw.text((b * (block_w + 2 * pad) + label_w + c * (cw + pad) + pad, 4), name[:10], fill=(0, 0, 0))
    for n, gid in enumerate(gids):
        x0 = (n // per_column) * (block_w + 2 * pad)
        y = head_h + (n % per_column) * (ch + pad) + pad
        draw.rectangle([x0 + 4, y + ch // 2 - 16, x0 + 14, y + ch // 2 - 6], fill=identity_colour(gid))
        draw.text((x0 + 4, y + ch // 2 - 4), f"id {gid}", fill=(0, 0, 0))
        for c in range(len(cameras)):
            x = x0 + label_w + c * (cw + pad) + pad
            rec = best.get((gid, c))
            if rec is None:
                draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(225, 225, 225))
                continue
            try:
                crop = read_image(out / rec.crop).resize((cw, ch))
            except ReIDError:
                draw.rectangle([x, y, x + cw - 1, y + ch - 1], fill=(180, 180, 180))
                continue
            sheet.paste(crop, (x, y))
            draw.rectangle([x - 1, y - 1, x + cw, y + ch], outline=identity_colour(gid), width=2)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------- timeline

def timeline(records: Sequence[TrackletRecord], cameras: Sequence[str], path: Path,
             max_identities: int = 60) -> Path | None:
    """PNG: one row per global identity (most boxes first), a bar per tracklet over its time span, coloured by
    camera. None when there is nobody."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in records if r.gid > 0]
    if not shown:
        return None
    boxes: dict[int, int] = {}
    for rec in shown:
        boxes[rec.gid] = boxes.get(rec.gid, 0) + rec.boxes
    gids = sorted(boxes, key=lambda g: (-boxes[g], g))[:max_identities]
    row = {g: i for i, g in enumerate(gids)}
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.22 * len(gids)))
    for rec in shown:
        if rec.gid in row:
            ax.barh(row[rec.gid], max(rec.end - rec.start, 0.05), left=rec.start, height=0.7,
                    color=colours(rec.cam_index % 10))
    ax.set_yticks(range(len(gids)), [f"id {g}" for g in gids], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time (s)")
    title = "Who is seen by which camera when"
    ax.set_title(title if len(boxes) <= max_identities else f"{title} (top {max_identities} of {len(boxes)} ids)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(len(cameras))]
    ax.legend(handles, cameras, loc="upper right", fontsize=7, ncol=min(len(cameras), 6))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ annotated video

class AnnotatedVideoWriter:
    """H.264 mp4 (PyAV) of frames with boxes, global ids and trails; written to a temporary name and renamed on
    `close()`, so an interrupted video is either whole or absent. Sizes are cropped to even numbers (yuv420p)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], trail: int = 25):
        import av

        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.name}.partial.mp4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = size[0] - size[0] % 2, size[1] - size[1] % 2
        self._container = av.open(str(self._tmp), mode="w")
        stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "26"}
        self._stream = stream
        self._trails: dict[int, deque] = {}
        self._trail = trail
        self._frame_no = 0

    def write(self, image: np.ndarray, boxes: np.ndarray, ids: np.ndarray) -> None:
        """`image` RGB uint8; `boxes` (N, 4) x, y, w, h; `ids` (N,) global ids."""
        import av
        import cv2

        canvas = np.array(image[:self.height, :self.width], order="C")  # a writable copy to draw on
        if canvas.shape[:2] != (self.height, self.width):  # a frame of another size (frame folders)
            canvas = cv2.resize(canvas, (self.width, self.height))
        self._frame_no += 1
        for (x, y, w, h), gid in zip(boxes, ids):
            trail = self._trails.setdefault(int(gid), deque(maxlen=self._trail))
            trail.append((self._frame_no, int(x + w / 2), int(y + h)))
        thick = max(1, round(self.height / 360))
        present = {int(g) for g in ids}
        for gid, trail in list(self._trails.items()):
            if gid not in present:  # trails only behind people in this frame
                if trail[-1][0] < self._frame_no - self._trail:
                    del self._trails[gid]
                continue
            recent = np.array([p for p in trail if p[0] >= self._frame_no - self._trail], np.int32).reshape(-1, 3)
            if not len(recent):
                del self._trails[gid]
                continue
            # a person who left and came back (same global id) gets a new trail, not a line across the frame
            pieces = np.split(recent[:, 1:], np.flatnonzero(np.diff(recent[:, 0]) > 3) + 1)
            lines = [np.ascontiguousarray(p).reshape(-1, 1, 2) for p in pieces if len(p) > 1]
            cv2.polylines(canvas, lines, False, identity_colour(gid), thick)
        for (x, y, w, h), gid in zip(boxes, ids):
            colour = identity_colour(int(gid))
            p1, p2 = (int(x), int(y)), (int(x + w), int(y + h))
            cv2.rectangle(canvas, p1, p2, colour, thick + 1)
            label = f"{int(gid)}"
            scale = 0.5 * thick
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            cv2.rectangle(canvas, (p1[0], p1[1] - th - 6), (p1[0] + tw + 4, p1[1]), colour, -1)
            cv2.putText(canvas, label, (p1[0] + 2, p1[1] - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick)
        frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.last_frame = canvas

    def close(self, keep: bool = True) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
        if keep and self._frame_no:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
