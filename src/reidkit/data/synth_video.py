"""Synthetic multi-camera video with exact MOTChallenge ground truth and global identities (`reidkit synth-video`).

People walk through N non-overlapping cameras: each identity makes one to four visits (enter at one side, walk
across on a slanted path, sometimes pause, leave at the other side); successive visits of one person are in
different cameras at different times, some return to a camera they already crossed (re-entry). Person height is
0.3-0.6 of the frame height, growing with the foot row (perspective); people nearer the camera (lower foot row)
are drawn in front of farther ones, so they occlude each other.

Appearance:
- default: the synthetic pedestrians of `reidkit.data.synth`: identity g looks like identity g of that generator in
  every camera (same clothes, hair, bag), seen in several views/poses (switching every ~1.5 s) and through each
  camera's colour cast; each camera's background is its synthetic scene.
- `crops=`: a Market-layout folder of real person crops (e.g. CUHK03-NP); camera k (1-based) shows an identity's
  crops from source camera ((k - 1) % number_of_source_cameras) + 1, so matching across cameras faces real
  appearance change. A crop is pasted as a rectangle with a softened 2-pixel border. A Market root (e.g. a
  `reidkit split` output) contributes its query + gallery identities; `val_ids=N` takes the N validation identities
  of the seed-0 carve of `crops` (the identities the validation-carved training runs never saw); `pids` restricts
  further. The people are drawn from those identities by the seed.

Ground truth is exact: each row's box is the pasted sprite's extent (its alpha > 0) clipped to the frame, and the
visibility column is the fraction of the sprite's coverage that is in the frame and not hidden by people in front.
Rows with visibility below MIN_VISIBILITY are not written (nobody could track them). Ids are GLOBAL: the same
person has the same id in every camera's gt.txt.

Output (`generate_synth_video`): OUT/<camera>/img1/000001.jpg..., OUT/<camera>/seqinfo.ini, OUT/<camera>/gt/gt.txt
(MOT17 columns: frame,id,x,y,w,h,1,1,visibility), optionally OUT/videos/<camera>.mp4, OUT/identities.json (global
id -> visits: camera, time span, frames), OUT/manifest.json (configuration and the source crops used) and
OUT/preview.png (each camera's busiest frame with its ground-truth boxes and ids). Everything
is written in a hidden sibling folder renamed onto OUT at the end; an existing OUT is refused unless overwrite=True.
Randomness is keyed by the seed: the same configuration gives the same videos.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..utils import atomic_write_json, progress
from .mot import MotTable, SeqInfo, write_mot, write_seqinfo
from .synth import SynthConfig, camera_colour, camera_for, identity_for, render_person_sprite, scene_image

GENERATOR = "reidkit.data.synth_video"
VERSION = 1
MIN_VISIBILITY = 0.1
ALPHA_FLOOR = 1 / 64  # coverage below this is dropped from scaled sprites, so the box is where pixels change
VIEWS_PER_CAMERA = 6  # synthetic sprites (views/poses) rendered per identity and camera
VIEW_SECONDS = 1.5  # how long one view/crop is shown before the next
SPRITE_SIZE = (192, 96)  # synthetic sprites are rendered at this (h, w), then scaled per frame
SPRITE_CACHE_IDENTITIES = 64  # identities whose native sprites stay cached per camera (~1.7 MB each)
HORIZON, FLOOR = 0.6, 0.98  # foot rows, as fractions of the frame height, of the farthest and nearest walkers
HEIGHT_RANGE = (0.3, 0.6)  # person height / frame height at those rows
_TAG_SCHEDULE, _TAG_SPRITE, _TAG_CROPS = 11, 12, 13


@dataclass
class SynthVideoConfig:
    cameras: int = 3
    people: int = 40
    seconds: float = 120.0
    fps: float = 10.0
    width: int = 640
    height: int = 360
    seed: int = 0
    crops: str | None = None  # Market-layout folder of real crops (None: synthetic pedestrians)
    pids: list[int] | None = None  # restrict the source identities of `crops`
    val_ids: int | None = None  # use only the validation identities of the seed-0 carve of `crops` (`reidkit split`)
    mp4: bool = False  # also write OUT/videos/<camera>.mp4
    jpeg_quality: int = 90

    def validate(self) -> None:
        if not 1 <= self.cameras <= 99:
            raise ConfigError(f"cameras must be in 1..99, got {self.cameras}")
        if self.people < 1:
            raise ConfigError(f"people must be >= 1, got {self.people}")
        if not self.seconds > 0 or not self.fps > 0:
            raise ConfigError(f"seconds and fps must be positive, got {self.seconds} s at {self.fps} fps")
        if self.width < 64 or self.height < 64:
            raise ConfigError(f"frame size must be at least 64x64, got {self.width}x{self.height}")
        if self.val_ids is not None and (self.crops is None or self.val_ids < 1):
            raise ConfigError(f"val_ids={self.val_ids}: needs crops and a positive number of identities")
        if self.pids is not None and self.crops is None:
            raise ConfigError("pids choose identities of crops; give crops too")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def num_frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def camera_names(self) -> list[str]:
        return [f"cam{k + 1}" for k in range(self.cameras)]


@dataclass(frozen=True)
class Visit:
    """One person's pass through one camera: positions are linear in time between the waypoints."""

    gid: int
    camera: int  # 0-based
    start: float  # seconds
    end: float
    times: tuple[float, ...]  # waypoint times (enter, [pause start, pause end], leave)
    xs: tuple[float, ...]  # foot centre x at the waypoints, as a fraction of the frame width
    ys: tuple[float, ...]  # foot row at the waypoints, as a fraction of the frame height

    def position(self, t: float) -> tuple[float, float]:
        return float(np.interp(t, self.times, self.xs)), float(np.interp(t, self.times, self.ys))


@dataclass
class Cast:
    """Who appears: global id -> source identity (a crop pid, or the synthetic pid) and per camera the sprites."""

    gids: list[int]
    source_pid: dict[int, int]
    crops: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # (gid, camera) -> crop paths


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def plan_visits(cfg: SynthVideoConfig) -> list[Visit]:
    """Every person's visits, deterministic by seed. Visits of one person never overlap in time; consecutive ones
    are in different cameras (with more than one camera), separated by a 2-12 s transit; about one person in six
    comes back to a camera already visited."""
    visits = []
    for gid in range(1, cfg.people + 1):
        rng = _rng(cfg.seed, _TAG_SCHEDULE, gid)
        count = 1 + int(rng.choice(4, p=[0.1, 0.4, 0.35, 0.15]))
        durations = rng.uniform(5.0, 11.0, count)
        gaps = rng.uniform(2.0, 12.0, max(count - 1, 0))
        total = float(durations.sum() + gaps.sum())
        if total > cfg.seconds:  # a short video: fewer, shorter visits
            scale = cfg.seconds / total * 0.95
            durations, gaps, total = durations * scale, gaps * scale, total * scale
        t = float(rng.uniform(-0.3 * durations[0], max(cfg.seconds - total, 0.0) + 0.3 * durations[-1]))
        cameras = _visit_cameras(rng, count, cfg.cameras)
        for k in range(count):
            visits.append(_walk(rng, gid, cameras[k], t, float(durations[k])))
            t += float(durations[k]) + (float(gaps[k]) if k < count - 1 else 0.0)
    return visits


def _visit_cameras(rng: np.random.Generator, count: int, cameras: int) -> list[int]:
    order = [int(rng.integers(cameras))]
    for _ in range(count - 1):
        seen = sorted(set(order) - {order[-1]})
        if seen and rng.random() < 0.2:  # re-entry: back to a camera crossed before
            order.append(int(rng.choice(seen)))
        else:
            others = [c for c in range(cameras) if c != order[-1]] or [order[-1]]
            order.append(int(rng.choice(others)))
    return order


def _walk(rng: np.random.Generator, gid: int, camera: int, start: float, duration: float) -> Visit:
    """Enter beyond one side edge, cross on a slanted path (sometimes pausing), leave beyond the other side."""
    leftwards = rng.random() < 0.5
    x0, x1 = (1.12, -0.12) if leftwards else (-0.12, 1.12)
    y0, y1 = rng.uniform(HORIZON + 0.02, FLOOR, 2)
    end = start + duration
    if rng.random() < 0.3:  # pause somewhere in the middle for a while
        f = rng.uniform(0.3, 0.7)
        pause = rng.uniform(0.15, 0.3) * duration
        walk = duration - pause
        t1, t2 = start + f * walk, start + f * walk + pause
        xm, ym = x0 + f * (x1 - x0), y0 + f * (y1 - y0)
        return Visit(gid, camera, start, end, (start, t1, t2, end), (x0, xm, xm, x1), (y0, ym, ym, y1))
    return Visit(gid, camera, start, end, (start, end), (x0, x1), (y0, y1))


def person_height(foot_row: float, frame_height: int) -> float:
    """Pixels: HEIGHT_RANGE of the frame height, linear in the foot row between HORIZON and FLOOR."""
    f = (foot_row - HORIZON) / (FLOOR - HORIZON)
    return frame_height * (HEIGHT_RANGE[0] + (HEIGHT_RANGE[1] - HEIGHT_RANGE[0]) * float(np.clip(f, 0.0, 1.0)))


# ------------------------------------------------------------------------------------------------------------
# Appearance: sprites (RGB float + alpha), trimmed to their coverage.
# ------------------------------------------------------------------------------------------------------------

def _trim(rgb: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.flatnonzero(alpha.max(axis=1) > 0), np.flatnonzero(alpha.max(axis=0) > 0)
    if not len(rows):
        return rgb[:1, :1], alpha[:1, :1]
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return rgb[window], alpha[window]


def _crop_alpha(height: int, width: int, border: int = 2) -> np.ndarray:
    """Coverage of a pasted crop: 1 inside, ramping over `border` pixels at the edges (never 0 inside the box)."""
    ramp_y = np.minimum(np.arange(height) + 1, np.arange(height)[::-1] + 1) / (border + 1)
    ramp_x = np.minimum(np.arange(width) + 1, np.arange(width)[::-1] + 1) / (border + 1)
    return np.minimum(np.minimum(ramp_y[:, None], ramp_x[None, :]), 1.0).astype(np.float32)


def _load_cast(cfg: SynthVideoConfig) -> Cast:
    if cfg.crops is None:
        gids = list(range(1, cfg.people + 1))
        return Cast(gids, {g: g for g in gids})
    from . import load_dataset

    dataset = load_dataset(cfg.crops)
    if cfg.val_ids is not None:  # the carve `reidkit split --val-ids N` makes (seed 0), without writing it
        from .split import carve_validation_records

        dataset = carve_validation_records(dataset.train + dataset.query + dataset.gallery, cfg.val_ids, seed=0)
    # A Market root (e.g. a `reidkit split` carve): its query + gallery identities, never its training ones.
    records = (dataset.query + dataset.gallery) or dataset.train
    records = [r for r in records if r.pid > 0]
    if cfg.pids is not None:
        wanted = set(cfg.pids)
        records = [r for r in records if r.pid in wanted]
        missing = sorted(wanted - {r.pid for r in records})
        if missing:
            raise DataError(f"{cfg.crops}: no crops of identities {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    by_pid: dict[int, dict[int, list[str]]] = {}
    for r in sorted(records, key=lambda r: r.path):
        by_pid.setdefault(r.pid, {}).setdefault(r.camid, []).append(r.path)
    source_cams = sorted({c for cams in by_pid.values() for c in cams})
    needed = [source_cams[k % len(source_cams)] for k in range(cfg.cameras)] if source_cams else []
    usable = sorted(p for p, cams in by_pid.items() if all(c in cams for c in set(needed)))
    if len(usable) < cfg.people:
        raise DataError(f"{cfg.crops}: {len(usable)} identities have crops in every source camera the "
                        f"{cfg.cameras} cameras use ({', '.join(f'c{c + 1}' for c in sorted(set(needed)))}); "
                        f"{cfg.people} people were asked for")
    chosen = sorted(_rng(cfg.seed, _TAG_CROPS).choice(usable, size=cfg.people, replace=False).tolist())
    gids = list(range(1, cfg.people + 1))
    cast = Cast(gids, dict(zip(gids, chosen)))
    for gid, pid in zip(gids, chosen):
        for k in range(cfg.cameras):
            cast.crops[(gid, k)] = by_pid[pid][needed[k]]
    return cast


class _Sprites:
    """Per camera: each identity's sprites at native size, rendered or loaded on first use.

    The cache keeps the SPRITE_CACHE_IDENTITIES identities used most recently: a long plan brings thousands of
    visitors, and an unbounded cache grew ~45 MB per rendered minute. Sprites are a pure function of (seed, gid,
    camera, view), so an evicted identity that comes back is rendered again identically."""

    def __init__(self, cfg: SynthVideoConfig, cast: Cast, camera: int) -> None:
        self.cfg, self.cast, self.camera, self.capacity = cfg, cast, camera, SPRITE_CACHE_IDENTITIES
        self.synth_cfg = SynthConfig(seed=cfg.seed)
        self.cam = camera_for(self.synth_cfg, camera % 9)  # synth cameras: colour cast, views, scene
        self._native: OrderedDict[int, list[tuple[np.ndarray, np.ndarray]]] = OrderedDict()

    def native(self, gid: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if gid in self._native:
            self._native.move_to_end(gid)
        else:
            self._native[gid] = self._crops(gid) if self.cfg.crops else self._synthetic(gid)
            while len(self._native) > self.capacity:
                self._native.popitem(last=False)
        return self._native[gid]

    def _synthetic(self, gid: int) -> list[tuple[np.ndarray, np.ndarray]]:
        ident = identity_for(self.synth_cfg, self.cast.source_pid[gid])
        return [_trim(*render_person_sprite(ident, self.cam, _rng(self.cfg.seed, _TAG_SPRITE, gid, self.camera, k),
                                            *SPRITE_SIZE)) for k in range(VIEWS_PER_CAMERA)]

    def _crops(self, gid: int) -> list[tuple[np.ndarray, np.ndarray]]:
        from .images import read_image

        sprites = []
        for path in self.cast.crops[(gid, self.camera)]:
            rgb = np.asarray(read_image(path), np.float32) / 255.0
            sprites.append((rgb, _crop_alpha(*rgb.shape[:2])))
        return sprites

    def get(self, gid: int, view: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Sprite `view` of `gid` scaled to `height` pixels (a resize of a small sprite: cheaper than caching)."""
        import cv2

        rgb, alpha = self.native(gid)[view]
        width = max(1, int(round(rgb.shape[1] * height / rgb.shape[0])))
        interpolation = cv2.INTER_AREA if height < rgb.shape[0] else cv2.INTER_LINEAR
        scaled = np.clip(cv2.resize(alpha, (width, height), interpolation=interpolation), 0.0, 1.0)
        scaled[scaled < ALPHA_FLOOR] = 0.0  # no invisible fringe: every pixel of the box is visibly covered
        return _trim(cv2.resize(rgb, (width, height), interpolation=interpolation), scaled)

    def views(self, gid: int) -> int:
        return len(self.native(gid))


# ------------------------------------------------------------------------------------------------------------
# Rendering.
# ------------------------------------------------------------------------------------------------------------

class SyntheticVideo:
    """The planned videos: `frames(camera)` renders one camera's frames in memory, with their ground truth."""

    def __init__(self, cfg: SynthVideoConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.cast = _load_cast(cfg)
        self.visits = plan_visits(cfg)

    def background(self, camera: int) -> np.ndarray:
        """Camera `camera`'s (0-based) empty frame, float32 RGB in [0, 1]."""
        cam = camera_for(SynthConfig(seed=self.cfg.seed), camera % 9)
        return camera_colour(scene_image(cam, self.cfg.height, self.cfg.width), cam).astype(np.float32)

    def frames(self, camera: int, limit: int | None = None) -> Iterator[tuple[int, np.ndarray, MotTable]]:
        """(0-based frame index, RGB uint8 image, ground truth of that frame with 1-based frame numbers)."""
        cfg = self.cfg
        background = self.background(camera)
        sprites = _Sprites(cfg, self.cast, camera)
        mine = [v for v in self.visits if v.camera == camera]
        starts = np.array([v.start for v in mine])
        ends = np.array([v.end for v in mine])
        for index in range(cfg.num_frames if limit is None else min(limit, cfg.num_frames)):
            t = index / cfg.fps
            active = [mine[i] for i in np.flatnonzero((starts <= t) & (t <= ends))]
            yield (index, *self._render(index, t, active, background, sprites))

    def _render(self, index: int, t: float, active: list[Visit], background: np.ndarray,
                sprites: _Sprites) -> tuple[np.ndarray, MotTable]:
        """Composite front to back ("under"): each person fills only what nearer people left uncovered, which
        also gives the visible fraction of their coverage."""
        W, H = self.cfg.width, self.cfg.height
        canvas = np.zeros((H, W, 3), np.float32)
        cover = np.zeros((H, W), np.float32)
        placed = []
        for visit in active:
            x, y = visit.position(t)
            height = max(8, int(round(person_height(y, H))))
            view = int((t - visit.start) // VIEW_SECONDS + visit.gid) % sprites.views(visit.gid)
            rgb, alpha = sprites.get(visit.gid, view, height)
            x0 = int(round(x * W - rgb.shape[1] / 2))
            y0 = int(round(y * H)) - alpha.shape[0]
            placed.append((y, visit.gid, x0, y0, rgb, alpha))
        rows = []
        for _, gid, x0, y0, rgb, alpha in sorted(placed, key=lambda p: -p[0]):  # nearest (lowest feet) first
            h, w = alpha.shape
            fy0, fy1, fx0, fx1 = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
            if fy1 <= fy0 or fx1 <= fx0:
                continue
            a = alpha[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
            seen = a * (1.0 - cover[fy0:fy1, fx0:fx1])
            canvas[fy0:fy1, fx0:fx1] += seen[..., None] * rgb[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
            cover[fy0:fy1, fx0:fx1] += seen
            visibility = float(seen.sum() / max(alpha.sum(), 1e-6))
            if visibility >= MIN_VISIBILITY:
                rows.append((gid, fx0, fy0, fx1 - fx0, fy1 - fy0, visibility))
        canvas += (1.0 - cover)[..., None] * background
        image = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if not rows:
            return image, MotTable.empty()
        gids, xs, ys, ws, hs, vis = (np.array(c) for c in zip(*rows))
        return image, MotTable(np.full(len(rows), index + 1), gids, np.stack([xs, ys, ws, hs], 1), np.ones(len(rows)),
                               vis)

    def identities(self, gt: dict[str, MotTable]) -> dict:
        """identities.json: global id -> source identity and visits (camera, seconds, first/last gt frame)."""
        names = self.cfg.camera_names
        out = {}
        for gid in self.cast.gids:
            visits = []
            for v in (v for v in self.visits if v.gid == gid):
                table = gt[names[v.camera]]
                f0, f1 = math.ceil(max(v.start, 0.0) * self.cfg.fps) + 1, math.floor(v.end * self.cfg.fps) + 1
                frames = table.frames[(table.ids == gid) & (table.frames >= f0) & (table.frames <= f1)]
                if len(frames):
                    visits.append({"camera": names[v.camera], "start": round(max(v.start, 0.0), 3),
                                   "end": round(min(v.end, self.cfg.seconds), 3),
                                   "first_frame": int(frames.min()), "last_frame": int(frames.max()),
                                   "boxes": int(len(frames))})
            out[str(gid)] = {"source_pid": self.cast.source_pid[gid],
                             "cameras": sorted({v["camera"] for v in visits}), "visits": visits}
        return out


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("JPEG encoding failed")
    return buffer.tobytes()


class _Mp4Writer:
    def __init__(self, path: Path, cfg: SynthVideoConfig) -> None:
        from fractions import Fraction

        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264", rate=Fraction(cfg.fps).limit_denominator(1000))
        self.stream.width, self.stream.height, self.stream.pix_fmt = cfg.width, cfg.height, "yuv420p"
        self.stream.options = {"crf": "20", "preset": "veryfast"}

    def add(self, image: np.ndarray) -> None:
        import av

        for packet in self.stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def generate_synth_video(out: str | os.PathLike, cfg: SynthVideoConfig, *, overwrite: bool = False,
                         show_progress: bool = True) -> Path:
    """Render every camera to `out` (layout in the module docstring) and return `out`."""
    cfg.validate()
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise DataError(f"{root}: exists and is not empty; choose another --out or pass --overwrite")
    video = SyntheticVideo(cfg)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        gt = _write_cameras(video, tmp, show_progress)
        atomic_write_json({"generator": GENERATOR, "version": VERSION, "config": asdict(cfg),
                           "cameras": cfg.camera_names, "fps": cfg.fps, "size": [cfg.width, cfg.height],
                           "identities": video.identities(gt)}, tmp / "identities.json")
        atomic_write_json(_manifest(video), tmp / "manifest.json")
        _write_preview(tmp, cfg, gt)
        _swap_in(tmp, root)
    except OSError as exc:  # name the output, not the hidden temporary folder
        if exc.filename is not None and not str(exc.filename).startswith(str(tmp)):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(root)) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_cameras(video: SyntheticVideo, tmp: Path, show_progress: bool) -> dict[str, MotTable]:
    cfg = video.cfg
    gt: dict[str, MotTable] = {}
    bar = progress(total=cfg.cameras * cfg.num_frames, desc="synth-video", unit="frame", enabled=show_progress)
    try:
        for camera, name in enumerate(cfg.camera_names):
            folder = tmp / name
            (folder / "img1").mkdir(parents=True)
            (folder / "gt").mkdir()
            writer = _Mp4Writer(tmp / "videos" / f"{name}.mp4", cfg) if cfg.mp4 else None
            tables = []
            for index, image, table in video.frames(camera):
                (folder / "img1" / f"{index + 1:06d}.jpg").write_bytes(_encode_jpeg(image, cfg.jpeg_quality))
                if writer is not None:
                    writer.add(image)
                tables.append(table)
                bar.update(1)
            if writer is not None:
                writer.close()
            gt[name] = _concat(tables)
            write_mot(folder / "gt" / "gt.txt", gt[name], gt=True)
            write_seqinfo(folder / "seqinfo.ini", SeqInfo(name=name, fps=cfg.fps, length=cfg.num_frames,
                                                          width=cfg.width, height=cfg.height))
    finally:
        bar.close()
    return gt


def _write_preview(root: Path, cfg: SynthVideoConfig, gt: dict[str, MotTable]) -> None:
    """preview.png: each camera's busiest frame with its ground-truth boxes and global ids, cameras side by side
    (two per row), so the output can be checked at a glance."""
    import cv2

    tiles = []
    for name in cfg.camera_names:
        table = gt[name]
        frame = int(np.bincount(table.frames).argmax()) if len(table) else 1
        image = cv2.imread(str(root / name / "img1" / f"{frame:06d}.jpg"))
        for gid, (x, y, w, h), vis in zip(table.ids[table.frames == frame], table.boxes[table.frames == frame],
                                          table.visibility[table.frames == frame]):
            colour = tuple(int(c) for c in _rng(0, int(gid)).integers(64, 256, 3))
            cv2.rectangle(image, (int(x), int(y)), (int(x + w) - 1, int(y + h) - 1), colour, 2)
            cv2.putText(image, f"{gid} v{vis:.1f}", (int(x) + 2, int(y) + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour,
                        1, cv2.LINE_AA)
        cv2.putText(image, f"{name} frame {frame}", (6, cfg.height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(image)
    if len(tiles) % 2 and len(tiles) > 1:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[k:k + 2], axis=1) for k in range(0, len(tiles), 2)]
    ok, png = cv2.imencode(".png", np.concatenate(rows, axis=0))
    if ok:
        (root / "preview.png").write_bytes(png.tobytes())


def _concat(tables: list[MotTable]) -> MotTable:
    tables = [t for t in tables if len(t)]
    if not tables:
        return MotTable.empty()
    return MotTable(*(np.concatenate([getattr(t, k) for t in tables]) for k in
                      ("frames", "ids", "boxes", "scores", "visibility")))


def _manifest(video: SyntheticVideo) -> dict:
    cfg = video.cfg
    if cfg.crops is None:
        source = {"kind": "synthetic", "generator": "reidkit.data.synth", "seed": cfg.seed,
                  "views_per_camera": VIEWS_PER_CAMERA}
        crops = {str(g): {"synthetic_pid": video.cast.source_pid[g]} for g in video.cast.gids}
    else:
        source = {"kind": "crops", "folder": str(cfg.crops)}
        crops = {str(g): {"source_pid": video.cast.source_pid[g],
                          "crops": {name: video.cast.crops[(g, k)] for k, name in enumerate(cfg.camera_names)}}
                 for g in video.cast.gids}
    return {"generator": GENERATOR, "version": VERSION, "source": source, "identities": crops}


def _swap_in(tmp: Path, root: Path) -> None:
    """Rename `tmp` onto `root`; an old output is moved aside first and deleted after the swap."""
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / "data")
        os.replace(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, root)


def read_identities(root: str | os.PathLike) -> dict:
    """The identities.json of a synth-video output."""
    path = Path(root) / "identities.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
