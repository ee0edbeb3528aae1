"""`track`: camera sources -> detect -> embed -> track per camera -> associate across cameras -> outputs.

    result = track(["cam1.mp4", "cam2.mp4"], "runs/site", model="best.pt")

Frames of all cameras are read in time order (`sources.interleave`, so cameras with different frame rates stay
aligned in seconds) in small batches: the detector runs on a batch of frames at once, every detection is cropped and
embedded once (one batched forward pass per frame batch), then each camera's tracker (`video.tracker`) takes its
frame's boxes and features. Finished tracklets are drained as they end: their rows go to disk, only a summary
(feature, time span, best crop) stays in memory -- so memory stays flat over long and live sources.

Association: offline (files, frame folders) clusters all tracklets at the end (`association.associate`, optionally
k-reciprocal); online (live sources, or `online=True`) gives each tracklet its global id as it finishes
(`association.OnlineAssociator`), appends its rows to tracks.txt and rewrites identities.json and the gallery at
checkpoints. Ctrl-C (KeyboardInterrupt) ends the run cleanly: the tracks so far are finished, associated and
written like a complete run's, marked `"complete": false`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, ReIDError
from ..metrics.tracking import box_iou
from ..utils import atomic_write_json, progress, release_free_heap
from .association import AssociationConfig, OnlineAssociator, TrackletSet, associate
from .outputs import (
    RUN_MARKER,
    AnnotatedVideoWriter,
    TrackletRecord,
    contact_sheet,
    identities_document,
    prepare_output,
    save_crop,
    timeline,
    write_identities,
)

STAGES = ("decode", "detect", "embed", "track", "associate", "write")
HEAP_RELEASE_SECONDS = 5.0  # how often a run hands the freed C heap back (utils.release_free_heap)
PUBLIC_DETECTIONS = "public"  # --detector public: each MOTChallenge sequence's own det/det.txt


@dataclass
class TrackOptions:
    """Knobs of `track` (the CLI exposes the common ones)."""

    detect_every: int = 1            # run the detector on every N-th frame; the tracker predicts in between
    batch_frames: int = 8            # frames detected and embedded per forward pass
    min_length: int = 1              # tracklets with fewer boxes are dropped (counted in the summary)
    association: AssociationConfig = field(default_factory=AssociationConfig)
    online: bool | None = None       # None: online for live sources, offline clustering otherwise
    video: bool = True               # write annotated.mp4 per (non-live) camera
    crops: bool = True               # save each tracklet's best crop
    trail_seconds: float = 1.5       # length of the trail drawn behind each person
    checkpoint_seconds: float = 30.0  # online mode: identities.json / gallery rewritten this often (wall time)
    tracker: Any = None              # a video.tracker.TrackerConfig (None: its defaults)

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.batch_frames < 1 or self.min_length < 1:
            raise ReIDError("detect_every, batch_frames and min_length must be >= 1")


@dataclass
class CameraSummary:
    name: str
    spec: str
    fps: float
    size: tuple[int, int]
    frames: int = 0
    detections: int = 0
    tracklets: int = 0
    dropped_short: int = 0
    boxes: int = 0
    live: bool = False

    def note(self) -> str:
        if self.frames == 0:
            return "no frames"
        if self.boxes == 0:
            return "nobody detected (empty tracks.txt)" if self.detections == 0 else "no confirmed tracks"
        return ""


@dataclass
class TrackResult:
    out: Path
    cameras: list[CameraSummary]
    num_identities: int
    num_tracklets: int
    interrupted: bool
    timings: dict[str, float]
    wall_seconds: float
    notes: list[str] = field(default_factory=list)
    workers: dict[str, Any] = field(default_factory=dict)  # --workers runs: per camera task, association latency

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.cameras)

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "complete": not self.interrupted, "num_identities": self.num_identities,
                "num_tracklets": self.num_tracklets, "frames": self.frames,
                "wall_seconds": round(self.wall_seconds, 2),
                "frames_per_second": round(self.frames / self.wall_seconds, 2) if self.wall_seconds else None,
                "seconds_per_stage": {k: round(v, 3) for k, v in self.timings.items()},
                "cameras": [{**asdict(c), "note": c.note()} for c in self.cameras], "notes": self.notes,
                **({"workers": self.workers} if self.workers else {})}


# ------------------------------------------------------------------------------------------------ helpers

def crop_boxes(image: np.ndarray, boxes: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Crops of x1, y1, x2, y2 boxes clipped to the image; also the mask of boxes at least 2x2 px inside it."""
    h, w = image.shape[:2]
    b = np.round(np.asarray(boxes, np.float64)[:, :4]).astype(np.int64)
    x1, y1 = np.clip(b[:, 0], 0, w), np.clip(b[:, 1], 0, h)
    x2, y2 = np.clip(b[:, 2], 0, w), np.clip(b[:, 3], 0, h)
    ok = (x2 - x1 >= 2) & (y2 - y1 >= 2)
    return [image[y1[i]:y2[i], x1[i]:x2[i]] for i in np.flatnonzero(ok)], ok


def embed_crops(extractor: Any, crops: list[np.ndarray]) -> np.ndarray:
    """(N, D) L2-normalised features of RGB crops: resized with OpenCV straight to the model's input size (the
    "stretch" resize every reidkit model and the Intel OSNet use) and embedded in one batched call."""
    import cv2
    import torch

    if not crops:
        return np.zeros((0, int(extractor.dim)), np.float32)
    if getattr(extractor, "resize", "stretch") != "stretch":
        return np.asarray(extractor.embed(crops), np.float32)
    h, w = extractor.input_size
    batch = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in crops])
    return np.asarray(extractor.embed_uint8(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()), np.float32)


def crop_quality(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Which detection makes the best crop: score x height (saturating at 128 px), halved when the box touches
    the image border (a cut-off person)."""
    w, h = size
    b = np.asarray(boxes, np.float64)
    height = np.clip((b[:, 3] - b[:, 1]) / 128.0, 0.0, 1.0)
    border = (b[:, 0] <= 1) | (b[:, 1] <= 1) | (b[:, 2] >= w - 1) | (b[:, 3] >= h - 1)
    return b[:, 4] * height * np.where(border, 0.5, 1.0)


def _build_tracker(config: Any, fps: float) -> Any:
    """The camera's tracker, its frame rate set to the source's (the tracker counts time in frames)."""
    import dataclasses

    from .tracker import Tracker, TrackerConfig

    return Tracker(dataclasses.replace(config, fps=fps) if config is not None else TrackerConfig(fps=fps))


# --------------------------------------------------------------------------------------------- per camera

@dataclass
class ClosedTracklet:
    """A tracklet a camera's tracker has finished, with everything association and the outputs need from it (no
    per-frame state stays behind): the record (gid 0 until associated), its MOT rows and its best crop.

    `key` is where the single-process run meets this closure: (time of the frame that closed it, camera index, that
    frame's index, position among the tracklets closed at that frame); tracklets closed when a source ends have
    time inf. Sorting by it reproduces the single-process order wherever the tracklets were produced
    (`video.workers` associates tracklets streamed from several processes in this order)."""

    record: TrackletRecord
    rows: np.ndarray                  # (n, 6): frame (1-based), x, y, w, h, conf
    crop: np.ndarray | None           # RGB best crop (None: none, or crops not wanted)
    key: tuple[float, int, int, int]


def camera_summary(source: Any) -> CameraSummary:
    return CameraSummary(source.camera, str(getattr(source, "spec", source.camera)), float(source.fps),
                         tuple(source.size), live=bool(getattr(source, "is_live", False)))


class _Camera:
    """One camera's source, detector and tracker, and the per-track state the outputs need (bounded by the number
    of ACTIVE tracks)."""

    def __init__(self, index: int, source: Any, detector: Any, tracker: Any, summary: CameraSummary | None = None):
        self.index, self.source, self.detector, self.tracker = index, source, detector, tracker
        self.name = source.camera
        self.summary = summary or camera_summary(source)  # shared with the run's outputs in a single process
        self.rows: dict[int, list[np.ndarray]] = {}       # track -> rows (frame 1-based, x, y, w, h, conf)
        self.spans: dict[int, list[float]] = {}           # track -> [first time, last time]
        self.best: dict[int, tuple[float, int, float, np.ndarray, np.ndarray]] = {}  # quality, frame, time, box, crop
        self.frame_paths = getattr(source, "_paths", None)  # frame folders: frame index -> file name
        self.frame_indices = getattr(source, "_indices", None)
        self.seen = 0
        self.last_frame: tuple[float, int] = (-math.inf, -1)  # (time, index) of the last frame tracked

    def frame_file(self, index: int) -> str | None:
        if self.frame_paths is None or self.frame_indices is None:
            return None
        try:
            return Path(self.frame_paths[self.frame_indices.index(index)]).name
        except ValueError:
            return None


class CameraGroup:
    """Detection, embedding and tracking of a group of cameras: every camera of a single-process run, or one camera
    on a Dask worker (`video.workers`). Frames are read in time order across the group (`sources.interleave`) in
    batches of `options.batch_frames`: one detector call and one embedding pass per batch, then each camera's
    tracker steps through its frames. Every finished tracklet goes to `emit` as a `ClosedTracklet`, in the order of
    the frames that close it."""

    def __init__(self, cameras: list[_Camera], extractor: Any, options: TrackOptions, timings: dict[str, float],
                 notes: list[str], show_progress: bool = False):
        self.cameras, self.extractor, self.options = cameras, extractor, options
        self.timings, self.notes, self.show_progress = timings, notes, show_progress

    def run(self, emit: Callable[[ClosedTracklet], None], tick: Callable[[], None] | None = None) -> bool:
        """Track every frame (until the sources end, or Ctrl-C), then finish the open tracks and close the sources.
        `tick` is called after every frame read (checkpoints, heartbeats). Returns whether Ctrl-C interrupted."""
        from .sources import interleave

        bars = [progress(total=c.source.num_frames, desc=f"{c.name}", unit="frame", position=k,
                         enabled=self.show_progress, leave=True) for k, c in enumerate(self.cameras)]
        interrupted = False
        batch: list[tuple[int, Any]] = []
        try:
            frames = interleave([c.source for c in self.cameras])
            while True:
                t0 = time.perf_counter()
                item = next(frames, None)
                self.timings["decode"] += time.perf_counter() - t0
                if item is not None:
                    batch.append(item)
                if batch and (item is None or len(batch) >= self.options.batch_frames):
                    self._process(batch, bars, emit)
                    batch = []
                if item is None:
                    break
                if tick is not None:
                    tick()
        except KeyboardInterrupt:
            interrupted = True
            if batch:  # frames already decoded are tracked too
                self._process(batch, bars, emit)
            self.notes.append("interrupted (Ctrl-C): outputs hold everything tracked up to that moment")
        finally:
            for bar in bars:
                bar.close()
        self.finish(emit)
        return interrupted

    def _process(self, batch: list[tuple[int, Any]], bars: list[Any], emit: Callable[[ClosedTracklet], None]
                 ) -> None:
        every, counts = self.options.detect_every, {}
        due = []
        for i, (k, _) in enumerate(batch):  # the camera's n-th frame is detected when n % every == 0
            n = self.cameras[k].seen + counts.get(k, 0)
            counts[k] = counts.get(k, 0) + 1
            if n % every == 0:
                due.append(i)
        t0 = time.perf_counter()
        detections = self._detect([batch[i] for i in due])
        t1 = time.perf_counter()
        self.timings["detect"] += t1 - t0
        crops, owners = [], []
        for j, i in enumerate(due):
            k, frame = batch[i]
            cut, ok = crop_boxes(frame.image, detections[j])
            detections[j] = detections[j][ok]
            crops += cut
            owners += [j] * len(cut)
        features = embed_crops(self.extractor, crops)
        t2 = time.perf_counter()
        self.timings["embed"] += t2 - t1
        by_frame = {i: (detections[j], features[np.asarray(owners, dtype=np.int64) == j]) for j, i in enumerate(due)}
        for i, (k, frame) in enumerate(batch):
            cam = self.cameras[k]
            dets, feats = by_frame.get(i, (None, None))
            self._step(cam, frame, dets, feats, emit)
            bars[k].update(1)
        self.timings["track"] += time.perf_counter() - t2

    def _detect(self, items: list[tuple[int, Any]]) -> list[np.ndarray]:
        """One detector call per distinct detector (public detections differ per camera)."""
        out: list[np.ndarray | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for n, (k, _) in enumerate(items):
            groups.setdefault(id(self.cameras[k].detector), []).append(n)
        for members in groups.values():
            detector = self.cameras[items[members[0]][0]].detector
            images = [items[n][1].image for n in members]
            found = detector.detect(images, frame_indices=[items[n][1].index for n in members])
            for n, dets in zip(members, found):
                out[n] = np.asarray(dets, np.float32).reshape(-1, 5)
        return out  # type: ignore[return-value]

    def _step(self, cam: _Camera, frame: Any, dets: np.ndarray | None, feats: np.ndarray | None,
              emit: Callable[[ClosedTracklet], None]) -> None:
        cam.seen += 1
        cam.summary.frames += 1
        if dets is None:  # a frame between detections: the tracker predicts
            predict = getattr(cam.tracker, "predict", None)
            tracks = predict(frame.index) if predict is not None else cam.tracker.update(
                frame.index, np.zeros((0, 5), np.float32), None)
        else:
            cam.summary.detections += len(dets)
            tracks = cam.tracker.update(frame.index, dets, feats)
        tracks = np.asarray(tracks, np.float64).reshape(-1, 5)
        if len(tracks):
            self._record(cam, frame, tracks, dets)
        for order, tracklet in enumerate(cam.tracker.pop_finished()):
            self._close(cam, tracklet, (float(frame.time), cam.index, int(frame.index), order), emit)
        cam.last_frame = (float(frame.time), int(frame.index))

    def _record(self, cam: _Camera, frame: Any, tracks: np.ndarray, dets: np.ndarray | None) -> None:
        """Rows of this frame, time spans, and the best crop of each track (from the detection it matched)."""
        conf = np.ones(len(tracks))
        matched = np.full(len(tracks), -1)
        if dets is not None and len(dets):
            iou = box_iou(tracks[:, :4], dets[:, :4])
            matched = np.where(iou.max(axis=1) > 0.3, iou.argmax(axis=1), -1)
            conf = np.where(matched >= 0, dets[np.maximum(matched, 0), 4], 1.0)
        rows = np.column_stack([np.full(len(tracks), frame.index + 1), tracks[:, 0], tracks[:, 1],
                                tracks[:, 2] - tracks[:, 0], tracks[:, 3] - tracks[:, 1], conf])
        quality = crop_quality(dets[np.maximum(matched, 0)], cam.summary.size) if dets is not None and len(dets) \
            else np.zeros(len(tracks))
        for r, tid in enumerate(tracks[:, 4].astype(np.int64).tolist()):
            cam.rows.setdefault(tid, []).append(rows[r])
            span = cam.spans.setdefault(tid, [frame.time, frame.time])
            span[1] = frame.time
            if matched[r] >= 0 and (tid not in cam.best or quality[r] > cam.best[tid][0]):
                box = dets[matched[r]]
                cut, ok = crop_boxes(frame.image, box[None])
                if ok[0]:
                    cam.best[tid] = (float(quality[r]), frame.index, frame.time, box.copy(), cut[0].copy())

    def _close(self, cam: _Camera, tracklet: Any, key: tuple[float, int, int, int],
               emit: Callable[[ClosedTracklet], None]) -> None:
        """A finished track -> its record, rows and best crop (or counted as dropped)."""
        tid = int(tracklet.track_id)
        rows = cam.rows.pop(tid, [])
        span = cam.spans.pop(tid, None)
        best = cam.best.pop(tid, None)
        if not rows or span is None:
            return
        if len(rows) < self.options.min_length:
            cam.summary.dropped_short += 1
            return
        rows_array = _merge_rows(tracklet, np.stack(rows))
        first_output = int(rows[0][0]) - 1  # the tracker confirms a track a few frames after its first detection
        span[0] -= max(0, first_output - (int(rows_array[0, 0]) - 1)) / cam.summary.fps
        feature = np.asarray(tracklet.feature(), np.float32) if _has_features(tracklet) else None
        if feature is None:
            if best is None:
                cam.summary.dropped_short += 1
                return
            feature = embed_crops(self.extractor, [best[4]])[0]
        rec = TrackletRecord(cam.name, cam.index, tid, float(span[0]), float(span[1]),
                             int(rows_array[0, 0]) - 1, int(rows_array[-1, 0]) - 1, len(rows_array), feature)
        if best is not None:
            rec.best_score, rec.best_frame, rec.best_time = best[0], best[1], best[2]
            rec.best_box = tuple(float(v) for v in best[3][:4])
            rec.frame_file = cam.frame_file(best[1])
        cam.summary.tracklets += 1
        cam.summary.boxes += len(rows_array)
        emit(ClosedTracklet(rec, rows_array, best[4] if best is not None and self.options.crops else None, key))

    def finish(self, emit: Callable[[ClosedTracklet], None]) -> None:
        """End every camera's open tracks (emitted), note tracks never confirmed, close the sources."""
        for cam in self.cameras:
            for order, tracklet in enumerate(cam.tracker.finish()):
                self._close(cam, tracklet, (math.inf, cam.index, 0, order), emit)
            leftover = len(cam.rows)
            if leftover:
                self.notes.append(f"camera {cam.name}: {leftover} track(s) never confirmed by the tracker, not "
                                  "written")
            cam.source.close()


# ---------------------------------------------------------------------------------------------- the run

@dataclass
class _CameraOutput:
    index: int
    summary: CameraSummary
    source: Any   # opened (or closed) source: what the annotated video's second decode reopens
    dir: Path

    @property
    def name(self) -> str:
        return self.summary.name


class TrackRun:
    """The outputs of one `track` call. `accept` takes each finished tracklet (from the cameras of this process, or
    streamed from workers by `video.workers`): online, it gets its global id at once; offline, it is kept for the
    clustering at the end. Its rows and crop are written as it comes; `finish` associates (offline) and writes
    the run's files."""

    def __init__(self, out: Path, sources: Sequence[Any], summaries: Sequence[CameraSummary], extractor: Any,
                 options: TrackOptions, show_progress: bool, run_info: dict[str, Any]):
        self.out, self.extractor, self.options = out, extractor, options
        self.show_progress = show_progress
        self.cameras = [_CameraOutput(k, summary, src, out / summary.name)
                        for k, (src, summary) in enumerate(zip(sources, summaries))]
        live = any(c.summary.live for c in self.cameras)
        self.online = live if options.online is None else options.online
        if self.online and options.association.rerank:
            raise ReIDError("k-reciprocal re-ranking needs all tracklets: it is offline only (not with live "
                            "sources / --online)")
        self.associator = OnlineAssociator(options.association) if self.online else None
        self.records: list[TrackletRecord] = []
        self.timings = dict.fromkeys(STAGES, 0.0)
        self.notes: list[str] = []
        self.run_info = run_info
        self.workers: dict[str, Any] = {}  # filled by video.workers
        self.started = time.perf_counter()
        self._gallery_rows = 0
        self._last_checkpoint = self._last_heap_release = time.monotonic()
        self._local: dict[int, Any] = {}
        for cam in self.cameras:
            cam.dir.mkdir(parents=True, exist_ok=True)
            name = "tracks.txt" if self.online else ".tracks.local.txt"
            self._local[cam.index] = open(cam.dir / name, "w")  # noqa: SIM115 (closed in finish)
        (out / "crops" / (".pending" if not self.online else "")).mkdir(parents=True, exist_ok=True)

    # -- in this process ------------------------------------------------------------------------------------
    def run(self, group: CameraGroup) -> TrackResult:
        """Track the group's cameras here, feeding this run, and write the outputs."""
        interrupted = group.run(self.accept, self.tick)
        return self.finish(interrupted)

    def tick(self) -> None:
        """Online mode: identities.json and the gallery rewritten every `checkpoint_seconds`; the freed C heap
        returned to the system every few seconds, so a long stream's resident memory stays flat."""
        now = time.monotonic()
        if self.online and now - self._last_checkpoint > self.options.checkpoint_seconds:
            self._checkpoint()
        if now - self._last_heap_release > HEAP_RELEASE_SECONDS:
            release_free_heap()
            self._last_heap_release = now

    def accept(self, closed: ClosedTracklet) -> None:
        """A finished tracklet: its global id (online), best crop and rows written, kept for the outputs."""
        rec = closed.record
        if len(closed.rows):
            (x, y, w, h), (x2, y2, w2, h2) = closed.rows[0, 1:5], closed.rows[-1, 1:5]
            rec.first_box, rec.last_box = (x, y, x + w, y + h), (x2, y2, x2 + w2, y2 + h2)
            fps = self.cameras[rec.cam_index].summary.fps
            rec.intervals = seen_intervals(closed.rows[:, 0], rec.start, fps, self.options.detect_every)
        t0 = time.perf_counter()
        if self.online:
            rec.gid = self.associator.add(rec.feature, rec.cam_index, rec.start, rec.end, rec.first_box, rec.last_box,
                                          rec.intervals)
        self.timings["associate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if closed.crop is not None and self.options.crops:
            rec.crop = rec.crop_name(rec.gid) if self.online else f"crops/.pending/c{rec.cam_index}_t{rec.track}.jpg"
            save_crop(closed.crop, self.out / rec.crop)
        ids = np.full(len(closed.rows), rec.gid if self.online else rec.track)
        _append_rows(self._local[rec.cam_index], closed.rows, ids)
        self.records.append(rec)
        self.timings["write"] += time.perf_counter() - t0

    # -- ending --------------------------------------------------------------------------------------------
    def finish(self, interrupted: bool) -> TrackResult:
        """After the last tracklet: associate (offline), write tracks.txt, identities.json, the gallery, the
        pictures, the annotated videos and summary.json."""
        for fh in self._local.values():
            fh.close()
        t0 = time.perf_counter()
        if not self.online:
            self._associate_offline()
        self.timings["associate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self._write_tracks()
        self._write_run_outputs(complete=not interrupted)
        if self.options.video and not interrupted:
            self._annotate()
        elif self.options.video:
            self.notes.append("annotated videos skipped (interrupted)")
        self.timings["write"] += time.perf_counter() - t0
        result = TrackResult(self.out, [c.summary for c in self.cameras], len({r.gid for r in self.records}),
                             len(self.records), interrupted, self.timings, 0.0, self.notes, self.workers)
        summary = result.to_json()
        summary.pop("wall_seconds"), summary.pop("frames_per_second")
        atomic_write_json(summary, self.out / "summary.json")
        result.wall_seconds = time.perf_counter() - self.started
        return result

    def _associate_offline(self) -> None:
        if not self.records:
            return
        recs = self.records
        tracklets = TrackletSet.from_arrays(np.stack([r.feature for r in recs]), [r.cam_index for r in recs],
                                            [r.start for r in recs], [r.end for r in recs], [r.boxes for r in recs],
                                            np.array([r.first_box for r in recs]), np.array([r.last_box for r in recs]),
                                            [r.intervals for r in recs])
        labels = associate(tracklets, self.options.association)
        for rec, gid in zip(recs, labels.tolist()):
            rec.gid = int(gid)
            if rec.crop is not None:
                final = rec.crop_name(rec.gid)
                os.replace(self.out / rec.crop, self.out / final)
                rec.crop = final
        pending = self.out / "crops" / ".pending"
        if pending.is_dir() and not any(pending.iterdir()):
            pending.rmdir()

    def _write_tracks(self) -> None:
        """tracks.txt per camera with global ids, sorted by frame and id, written atomically."""
        from ..data.mot import read_mot, write_mot

        mapping = {(r.cam_index, r.track): r.gid for r in self.records}
        for cam in self.cameras:
            local = cam.dir / ("tracks.txt" if self.online else ".tracks.local.txt")
            table = read_mot(local)
            if not self.online:
                table.ids = np.array([mapping.get((cam.index, int(t)), 0) for t in table.ids], np.int64)
            write_mot(cam.dir / "tracks.txt", table)
            if not self.online:
                local.unlink(missing_ok=True)

    def _write_run_outputs(self, complete: bool) -> None:
        cams = [{"name": c.name, "index": c.index + 1, "spec": c.summary.spec, "fps": c.summary.fps,
                 "size": list(c.summary.size), "frames": c.summary.frames} for c in self.cameras]
        assoc = {"mode": "online" if self.online else "offline", **_config_json(self.options.association)}
        write_identities(self.out / "identities.json", identities_document(self.records, cams, complete, assoc))
        self._write_gallery(rebuild=True)
        names = [c.name for c in self.cameras]
        contact_sheet(self.out, self.records, names, self.out / "contact_sheet.png")
        timeline(self.records, names, self.out / "timeline.png")

    def _write_gallery(self, rebuild: bool) -> None:
        """OUT/gallery: one row per tracklet (rebuild: the whole run; else rows added since the last commit)."""
        from ..search.index import GalleryIndex

        root = self.out / "gallery"
        if rebuild or not (root / "index.json").is_file():
            index, _ = GalleryIndex.build(root, self.extractor, [], approx="none", overwrite=True,
                                          sources=[c.summary.spec for c in self.cameras])
            todo = self.records
        else:
            index = GalleryIndex.load(root)
            todo = self.records[self._gallery_rows:]
        todo = [r for r in todo if r.gid > 0]
        if todo:
            index.add_features(np.stack([r.feature for r in todo]), [self._gallery_row(r) for r in todo])
        self._gallery_rows = len(self.records)

    def _gallery_row(self, rec: TrackletRecord) -> dict[str, Any]:
        return {"id": f"{rec.camera}/t{rec.track}", "path": str((self.out / rec.crop).resolve()) if rec.crop else None,
                "pid": rec.gid, "camid": rec.cam_index, "track": rec.track,
                "frame": rec.best_frame + 1 if rec.best_frame >= 0 else rec.first_frame + 1,
                "time": rec.best_time if not math.isnan(rec.best_time) else rec.start, "source": rec.camera}

    def _checkpoint(self) -> None:
        """Online mode: identities.json and the gallery as they stand (tracks.txt is appended as tracklets end)."""
        t0 = time.perf_counter()
        cams = [{"name": c.name, "index": c.index + 1, "spec": c.summary.spec, "fps": c.summary.fps,
                 "size": list(c.summary.size), "frames": c.summary.frames} for c in self.cameras]
        assoc = {"mode": "online", **_config_json(self.options.association)}
        write_identities(self.out / "identities.json", identities_document(self.records, cams, False, assoc))
        self._write_gallery(rebuild=False)
        self._last_checkpoint = time.monotonic()
        self.timings["write"] += time.perf_counter() - t0

    def _annotate(self) -> None:
        """annotated.mp4 per camera: a second decode of each (non-live) source with its final tracks.txt."""
        from ..data.mot import read_mot
        from .sources import open_source

        for cam in self.cameras:
            if cam.summary.live or cam.summary.frames == 0:
                continue
            table = read_mot(cam.dir / "tracks.txt")
            rows = table.by_frame()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the first pass already warned about this source
                    reopen = getattr(cam.source, "reopen", None)
                    source = reopen() if reopen else open_source(cam.summary.spec, camera=cam.name,
                                                                 fps=cam.summary.fps)
            except ReIDError as exc:
                self.notes.append(f"camera {cam.name}: no annotated.mp4, the source cannot be read again ({exc})")
                continue
            writer = AnnotatedVideoWriter(cam.dir / "annotated.mp4", cam.summary.fps, cam.summary.size,
                                          max(2, round(self.options.trail_seconds * cam.summary.fps)))
            ok = False
            try:
                with source:
                    frames = progress(source, desc=f"annotating {cam.name}", total=cam.summary.frames, unit="frame",
                                      enabled=self.show_progress, leave=False)
                    for count, frame in enumerate(frames, 1):
                        sel = rows.get(frame.index + 1, np.zeros(0, np.int64))
                        writer.write(frame.image, table.boxes[sel], table.ids[sel])
                        if count >= cam.summary.frames:  # the frames the first pass tracked
                            break
                ok = True
            finally:
                writer.close(keep=ok)


def _merge_rows(tracklet: Any, output_rows: np.ndarray) -> np.ndarray:
    """Rows of a finished track: its detections (including those before the tracker confirmed it) and, for frames
    without one (detecting every N-th frame), the Kalman-predicted boxes the tracker output. Sorted by frame."""
    frames = np.asarray(getattr(tracklet, "frames", []), np.int64)
    if not len(frames):
        return output_rows
    boxes = np.asarray(tracklet.boxes, np.float64).reshape(-1, 4)
    detected = np.column_stack([frames + 1, boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0],
                                boxes[:, 3] - boxes[:, 1], np.asarray(tracklet.scores, np.float64)])
    predicted = output_rows[~np.isin(output_rows[:, 0].astype(np.int64), frames + 1)]
    merged = np.concatenate([detected, predicted])
    return merged[np.argsort(merged[:, 0], kind="stable")]


def seen_intervals(frames: np.ndarray, start: float, fps: float, tolerance: int = 1) -> np.ndarray:
    """(K, 2) seconds: the runs of a tracklet's (sorted) frame numbers, split where more than `tolerance` frames
    pass without a row (a person lost and found again); the first frame is at `start` seconds."""
    frames = np.asarray(frames, np.float64)
    breaks = np.flatnonzero(np.diff(frames) > tolerance)
    firsts, lasts = frames[np.r_[0, breaks + 1]], frames[np.r_[breaks, len(frames) - 1]]
    return start + (np.column_stack([firsts, lasts]) - frames[0]) / fps


def _has_features(tracklet: Any) -> bool:
    feats = getattr(tracklet, "features", None)
    return feats is not None and len(feats) > 0


def _append_rows(fh: Any, rows: np.ndarray, ids: np.ndarray) -> None:
    """MOT lines `frame,id,x,y,w,h,conf,-1,-1,-1`, written in one call and flushed: complete lines on disk."""
    fh.write("".join(f"{int(r[0])},{int(i)},{r[1]:.2f},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.4f},-1,-1,-1\n"
                     for r, i in zip(rows, ids)))
    fh.flush()


def _config_json(config: AssociationConfig) -> dict[str, Any]:
    data = asdict(config)
    data["transitions"] = {f"{a}-{b}": list(w) for (a, b), w in config.transitions.items()}
    return data


# ---------------------------------------------------------------------------------------------- entry point

def open_sources(specs: Sequence[Any]) -> list[Any]:
    """Open every source before anything is written (a bad one is a DataError naming it); camera names must be
    distinct (they name the output folders)."""
    from .sources import FrameSource, open_source

    opened: list[Any] = []
    try:
        for spec in specs:
            opened.append(spec if isinstance(spec, FrameSource) else open_source(spec))
    except BaseException:
        for src in opened:
            src.close()
        raise
    names = [s.camera for s in opened]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        for src in opened:
            src.close()
        raise ReIDError(f"two sources have the camera name {dupes[0]!r} (output folders are named by camera); "
                        "rename one")
    return opened


MARKET_FRAME = re.compile(r"^(c\d+)s(\d+)_(\d+)\.(jpe?g|png|bmp)$", re.IGNORECASE)
MARKET_FPS = 25.0  # Market-1501 frame numbers count 25 fps video frames


def split_by_camera_prefix(folder: str | os.PathLike, fps: float = MARKET_FPS) -> list[Any]:
    """One source per camera of a folder of Market-1501-style frames (`c1s1_001051.jpg` = camera c1, sequence 1,
    frame 1051): frame numbers become frame indices (so frames far apart in time are far apart for the tracker
    too) and times (number / fps). Other names are refused, naming one."""
    from .sources import FrameSource

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of frames")
    groups: dict[str, list[tuple[int, int, Path]]] = {}
    for path in sorted(folder.iterdir()):
        match = MARKET_FRAME.match(path.name)
        if match is None:
            raise DataError(f"{path}: not a Market-style frame name (cCsS_FFFFFF.jpg) for --split-cameras-by-prefix")
        groups.setdefault(match.group(1), []).append((int(match.group(2)), int(match.group(3)), path))
    if not groups:
        raise DataError(f"{folder}: no frames")

    class PrefixSource(FrameSource):
        def __init__(self, camera: str, items: list[tuple[int, int, Path]]):
            from ..data.images import read_image

            self.items = sorted(items)
            self._read = read_image
            first = np.asarray(read_image(self.items[0][2]))
            super().__init__(str(folder / f"{camera}*"), camera, fps, (first.shape[1], first.shape[0]), len(items))
            self._paths = [p for _, _, p in self.items]
            self._indices = [self._index(s, f) for s, f, _ in self.items]

        @staticmethod
        def _index(sequence: int, frame: int) -> int:
            return (sequence - 1) * 10_000_000 + frame - 1  # sequences one after another, never overlapping

        def _frames(self):
            for (_, _, path), index in zip(self.items, self._indices):
                yield Frame(index, index / fps, np.asarray(self._read(path)))

        def reopen(self) -> FrameSource:
            return PrefixSource(self.camera, self.items)

    from .sources import Frame

    return [PrefixSource(camera, items) for camera, items in sorted(groups.items())]


def build_detectors(spec: Any, sources: Sequence[Any], batch_size: int = 1, threads: int | None = None) -> list[Any]:
    """One detector per source: a shared one, or (spec "public") each MOTChallenge sequence's det/det.txt."""
    from .detect import build_detector

    if isinstance(spec, str) and spec == PUBLIC_DETECTIONS:
        detectors = []
        for src in sources:
            folder = Path(src.spec)
            seq = folder.parent if folder.name == "img1" else folder
            if not (seq / "det" / "det.txt").is_file():
                raise DataError(f"--detector public: source {src.spec} has no det/det.txt")
            detectors.append(build_detector(str(seq / "det" / "det.txt")))
        return detectors
    if isinstance(spec, (list, tuple)):  # one detector object per source
        if len(spec) != len(sources):
            raise ReIDError(f"{len(spec)} detectors for {len(sources)} sources")
        return list(spec)
    if not isinstance(spec, (str, os.PathLike)):
        return [spec] * len(sources)  # a detector object
    if str(spec).endswith(".txt") and len(sources) > 1:
        raise ReIDError(f"--detector {spec}: one det.txt cannot serve {len(sources)} cameras; use "
                        "'--detector public' to read each sequence's det/det.txt")
    return [build_detector(str(spec), batch_size=batch_size, threads=threads)] * len(sources)


def track(sources: Sequence[Any], out: str | os.PathLike, *, model: Any, detector: Any = "default",
          detect_every: int = 1, options: TrackOptions | None = None, overwrite: bool = False,
          device: str = "auto", batch_size: int = 32, show_progress: bool = True, workers: int = 0,
          scheduler: str | None = None) -> TrackResult:
    """Track people in every source and give them global identities across cameras; write `out`.

    sources: video files, frame folders (MOTChallenge SEQ/ or SEQ/img1), camera indices, stream URLs or opened
    `FrameSource`s. model: a reidkit checkpoint, ONNX or OpenVINO IR path (or an extractor object).
    detector: "default" (vendored adas-0002), "hog", a detector model / det.txt path, "public" (each sequence's
    det/det.txt) or a detector object. Returns the summary (also in OUT/summary.json).
    workers >= 2: every camera is tracked by its own task on a local Dask cluster of that many worker processes
    (`video.workers`); scheduler: the address of an existing Dask cluster to use instead (tcp://host:port).
    """
    from ..inference import build_extractor

    options = options or TrackOptions()
    if detect_every != options.detect_every:
        options = TrackOptions(**{**options.__dict__, "detect_every": detect_every})
    if options.tracker is None and isinstance(detector, (str, os.PathLike)) and (
            str(detector) == PUBLIC_DETECTIONS or str(detector).endswith(".txt")):
        from .tracker import TrackerConfig  # det.txt scores are rescaled by their maximum: lower thresholds

        options = TrackOptions(**{**options.__dict__, "tracker": TrackerConfig.for_public_detections()})
    if not sources:
        raise ReIDError("no sources given")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:  # before any model is loaded
        prepare_output(out, overwrite)
    extractor = model if hasattr(model, "embed_uint8") else build_extractor(model, batch_size=batch_size,
                                                                             device=device)
    opened = open_sources(sources)
    cluster = None
    try:
        detectors = build_detectors(detector, opened, options.batch_frames)
        if workers >= 2 or scheduler:  # connected before anything is written
            from .workers import check_capacity, open_cluster

            cluster = open_cluster(workers, scheduler)
            check_capacity(cluster[0], len(opened), sum(bool(getattr(s, "is_live", False)) for s in opened))
        prepare_output(out, overwrite)
    except BaseException:
        for src in opened:
            src.close()
        if cluster is not None:
            cluster[0].close()
            if cluster[1] is not None:
                cluster[1].close()
        raise
    info = {"sources": [s.spec for s in opened], "cameras": [s.camera for s in opened],
            "model": str(getattr(extractor, "model_path", getattr(extractor, "name", "?"))),
            "detector": str(detector), "options": _options_json(options)}
    atomic_write_json(info, out / RUN_MARKER)
    run = TrackRun(out, opened, [camera_summary(s) for s in opened], extractor, options, show_progress, info)
    if cluster is not None:
        from .workers import CameraJob, track_on_dask

        for src in opened:  # the workers open their own copies
            src.close()
        jobs = [CameraJob.make(k, spec, src, detector if not isinstance(detector, (list, tuple)) else detector[k])
                for k, (spec, src) in enumerate(zip(sources, opened))]
        return track_on_dask(run, jobs, cluster, model=model if isinstance(model, (str, os.PathLike)) else extractor,
                             device=device, batch_size=batch_size)
    cameras = [_Camera(k, src, det, _build_tracker(options.tracker, float(src.fps)), run.cameras[k].summary)
               for k, (src, det) in enumerate(zip(opened, detectors))]
    return run.run(CameraGroup(cameras, extractor, options, run.timings, run.notes, show_progress))


def _options_json(options: TrackOptions) -> dict[str, Any]:
    data = {k: v for k, v in options.__dict__.items() if k not in ("association", "tracker")}
    data["association"] = _config_json(options.association)
    return json.loads(json.dumps(data, default=str))

