"""Single-camera multi-person tracker: Kalman motion + two-stage assignment with appearance (ByteTrack / BoT-SORT
family), and short-term re-identification of a person lost within the same camera.

>>> tracker = Tracker(TrackerConfig(fps=25))
>>> for index, boxes, feats in frames:             # boxes (N, 5) x1 y1 x2 y2 score; feats (N, D) or None
...     out = tracker.update(index, boxes, feats)    # (M, 5) x1 y1 x2 y2 track_id of tracks seen at this frame
...     done = tracker.pop_finished()                # tracklets that can no longer change (streaming)
>>> tracklets = tracker.finish()                     # the rest, at the end of the stream

Each frame:
1. every track's Kalman state (constant velocity on cx, cy, w/h, h; `kalman.py`) is predicted to the frame;
2. high-score detections (>= `high_score`) are assigned to confirmed tracks (tracked or lost) with a cost that
   fuses 1 - IoU and the appearance cosine distance to the track's feature (an EMA of its clean detections),
   gated by a minimum IoU and a maximum appearance distance -- the latter only where the IoU is below
   `appearance_gate_iou` (BoT-SORT's rule: a person who turns or changes look in place keeps the track);
3. low-score detections (ByteTrack's idea: occluded people score low) are assigned to the still unmatched tracked
   tracks by IoU only (their crops are occluded: appearance would mislead);
4. tentative tracks (seen fewer than `min_hits` consecutive frames) take remaining high detections;
5. a remaining confident detection is first compared by appearance with lost tracks and with the recently removed
   ones (long-term memory of `memory_seconds`): a close match revives the old id (a person who walked behind
   something or left and came back); otherwise it starts a tentative track;
6. tracks unseen for `max_age` frames leave the motion model and stay in the memory; after the memory expires
   they are finished (`pop_finished`).
Assignment is scipy's `linear_sum_assignment`; IoU and cost matrices are computed whole (no loops over pairs).

Why not a library tracker: ByteTrack as packaged by supervision / Roboflow `trackers` takes no appearance input,
so it can neither keep identities through crossings nor re-find a lost person (and supervision 0.31, installed
here, no longer ships `sv.ByteTrack` at all); boxmot's trackers (BoT-SORT, DeepOCSORT, StrongSORT) need
torchvision, which does not import against our torch pin; filterpy is not installed and is one Python object per
track. The assignment itself comes from scipy.

Defaults were tuned on TUD-Campus (the only real annotated sequence longer than a few frames available here):
see docs/benchmarks/video_tracking.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import DataError, ReIDError
from ..metrics.tracking import box_iou
from . import kalman

INF_COST = 1e6


@dataclass
class TrackerConfig:
    """Tracker settings; frames are counted in the source's frame indices (detecting every N-th frame: a gap of N)."""

    high_score: float = 0.8        # detections at or above: first-stage association, may start tracks
    low_score: float = 0.5         # detections in [low_score, high_score): second stage, IoU only; below: ignored
    new_track_score: float = 0.9   # a track starts only from a detection this confident
    match_iou: float = 0.2         # first stage: minimum IoU between the predicted box and a detection
    low_match_iou: float = 0.5     # second stage (low-score detections): minimum IoU
    tentative_match_iou: float = 0.3  # tentative tracks: minimum IoU
    appearance_weight: float = 0.5  # cost = (1 - w) (1 - IoU) + w cosine distance, when both sides have features
    max_appearance_distance: float = 0.5  # first stage: pairs farther apart in appearance are not matched...
    appearance_gate_iou: float = 0.5  # ...unless their IoU is at least this (BoT-SORT's rule: where motion is
    #   certain, a change of look -- a turn, a new crop -- does not end the track; 1 = the gate always applies).
    #   Measured: docs/benchmarks/video_tracking.md (TUD-Campus) and video.md (multi-camera)
    max_cost: float = 0.8          # first stage: pairs costing more are not matched
    reid_distance: float = 0.2     # re-identifying a lost / remembered track: maximum cosine distance
    feature_ema: float = 0.9       # track feature = ema x feature + (1 - ema) x new clean detection's feature
    min_visibility: float = 0.6    # a detection updates the track's appearance only if this much of it is unoccluded
    min_hits: int = 3              # consecutive detections before a track is confirmed (gets an id, is output)
    max_age: int = 30              # frames a lost track keeps its motion model and can be matched by IoU
    memory_seconds: float = 10.0   # after max_age: seconds a track can still be re-found by appearance
    fps: float = 25.0              # frames per second of the source (converts memory_seconds to frames)

    def __post_init__(self) -> None:
        for name in ("high_score", "low_score", "new_track_score", "match_iou", "low_match_iou",
                     "tentative_match_iou", "appearance_weight", "feature_ema", "min_visibility",
                     "appearance_gate_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ReIDError(f"TrackerConfig.{name}={value}: must be in [0, 1]")
        if self.low_score > self.high_score:
            raise ReIDError(f"TrackerConfig.low_score={self.low_score} is above high_score={self.high_score}")
        if self.min_hits < 1 or self.max_age < 0 or self.memory_seconds < 0 or self.fps <= 0:
            raise ReIDError(f"TrackerConfig: min_hits={self.min_hits} must be >= 1, max_age={self.max_age} and "
                            f"memory_seconds={self.memory_seconds} >= 0, fps={self.fps} > 0")

    @classmethod
    def for_public_detections(cls, **overrides) -> TrackerConfig:
        """Settings for MOTChallenge det.txt read by `build_detector` (scores divided by the file's maximum): ACF /
        DPM scores rescaled that way put most true people below 0.5, so the thresholds are lower and tracks start
        sooner. Tuned on TUD-Campus's det.txt (docs/benchmarks/video_tracking.md)."""
        return cls(**({"high_score": 0.2, "new_track_score": 0.3, "low_score": 0.1, "min_hits": 2} | overrides))

    @property
    def memory_frames(self) -> int:
        return int(round(self.memory_seconds * self.fps))


@dataclass
class Tracklet:
    """One person's track in one camera: the detections assigned to it, in frame order."""

    track_id: int
    frames: np.ndarray        # (n,) int, 0-based frame indices
    boxes: np.ndarray         # (n, 4) x1, y1, x2, y2 (the detections' boxes)
    scores: np.ndarray        # (n,) detection scores
    features: np.ndarray | None = None    # (n, D) per-detection appearance, or None when run without features
    visibility: np.ndarray | None = None  # (n,) fraction of each box not covered by a detection in front of it

    def __len__(self) -> int:
        return len(self.frames)

    def quality(self) -> np.ndarray:
        """(n,) weight of each detection's appearance: score x box height (relative) x visibility."""
        height = self.boxes[:, 3] - self.boxes[:, 1]
        visible = self.visibility if self.visibility is not None else np.ones(len(self))
        return self.scores * height / max(float(height.max(initial=0.0)), 1e-6) * visible

    def feature(self) -> np.ndarray:
        """Quality-weighted mean of the per-detection features, L2-normalised (D,)."""
        if self.features is None or len(self.features) == 0:
            raise ReIDError(f"tracklet {self.track_id}: has no appearance features (the tracker ran without them)")
        weights = self.quality()
        if weights.sum() <= 0:
            weights = np.ones(len(self))
        mean = weights @ self.features
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    @property
    def start(self) -> int:
        return int(self.frames[0])

    @property
    def end(self) -> int:
        return int(self.frames[-1])


@dataclass(eq=False)
class _Track:
    mean: np.ndarray             # (8,) Kalman state
    cov: np.ndarray              # (8, 8)
    feature: np.ndarray | None   # appearance EMA, L2-normalised
    last_frame: int
    hits: int = 1
    track_id: int = -1           # assigned when confirmed
    lost: bool = False
    frames: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    features: list = field(default_factory=list)
    visibility: list = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        return self.track_id >= 0


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def visibility(boxes: np.ndarray) -> np.ndarray:
    """(N,) fraction of each box not covered by the most-covering box in front of it (lower bottom edge = nearer
    the camera in a street scene): a cheap occlusion estimate for weighting appearance."""
    if len(boxes) == 0:
        return np.zeros(0)
    inter = _intersection(boxes, boxes)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)
    in_front = boxes[None, :, 3] > boxes[:, None, 3]   # [i, j]: j is in front of i
    covered = np.where(in_front, inter, 0.0).max(axis=1) / area
    return np.clip(1.0 - covered, 0.0, 1.0)


def assign(cost: np.ndarray, max_cost: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one assignment keeping pairs with cost <= max_cost:
    (matched rows, matched columns, unmatched rows) as index arrays."""
    rows, cols = (linear_sum_assignment(cost) if cost.size else (np.zeros(0, int), np.zeros(0, int)))
    keep = cost[rows, cols] <= max_cost
    unmatched = np.ones(cost.shape[0], bool)
    unmatched[rows[keep]] = False
    return rows[keep], cols[keep], np.flatnonzero(unmatched)


def _at_least(scores: np.ndarray, threshold: float) -> np.ndarray:
    """scores >= threshold, where a float32 score of 0.9 (0.89999998) counts as 0.9: detectors give float32."""
    return scores >= threshold - 1e-6


class Tracker:
    """Online tracker of one camera. See the module docstring for the algorithm and `TrackerConfig`."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self._tracks: list[_Track] = []     # tentative, tracked and lost tracks (those with a motion model)
        self._memory: list[_Track] = []     # confirmed tracks beyond max_age, still re-identifiable
        self._finished: list[Tracklet] = []
        self._next_id = 1
        self._last_frame: int | None = None
        self._dim: int | None = None

    # ------------------------------------------------------------------ public API

    def update(self, frame_index: int, boxes: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Feed one frame's detections; returns (M, 5) x1, y1, x2, y2, track_id of confirmed tracks detected at it."""
        frame_index, boxes, features = self._check(frame_index, boxes, features)
        cfg = self.config
        dt = 1 if self._last_frame is None else frame_index - self._last_frame
        first_frame = self._last_frame is None
        self._last_frame = frame_index
        self._predict(dt)

        keep = _at_least(boxes[:, 4], cfg.low_score)
        boxes = boxes[keep]
        features = features[keep] if features is not None else None
        vis = visibility(boxes[:, :4])
        high = np.flatnonzero(_at_least(boxes[:, 4], cfg.high_score))
        low = np.flatnonzero(~_at_least(boxes[:, 4], cfg.high_score))

        def apply(tracks: list[_Track], dets: np.ndarray) -> None:
            for track, det in zip(tracks, dets):
                self._add(track, frame_index, boxes[det], None if features is None else features[det], vis[det])
            if tracks:
                self._correct(tracks, boxes[dets, :4])

        # 1. confirmed tracks (tracked and lost) x high-score detections, IoU + appearance
        pool = [t for t in self._tracks if t.confirmed]
        rows, cols, left = assign(self._cost(pool, boxes, features, high, cfg.match_iou), cfg.max_cost)
        apply([pool[r] for r in rows], high[cols])
        high = np.setdiff1d(high, high[cols])
        # 2. still unmatched tracked (not lost) tracks x low-score detections, IoU only
        remaining = [pool[r] for r in left if not pool[r].lost]
        rows2, cols2, _ = assign(self._cost(remaining, boxes, None, low, cfg.low_match_iou), 1 - cfg.low_match_iou)
        apply([remaining[r] for r in rows2], low[cols2])
        matched = {id(pool[r]) for r in rows} | {id(remaining[r]) for r in rows2}
        for track in pool:
            track.lost = id(track) not in matched
        # 3. tentative tracks x remaining high-score detections; an unmatched tentative track is dropped
        tentative = [t for t in self._tracks if not t.confirmed]
        rows3, cols3, _ = assign(self._cost(tentative, boxes, features, high, cfg.tentative_match_iou),
                                 cfg.max_cost)
        apply([tentative[r] for r in rows3], high[cols3])
        dropped = {id(t) for t in tentative} - {id(tentative[r]) for r in rows3}
        self._tracks = [t for t in self._tracks if id(t) not in dropped]
        high = np.setdiff1d(high, high[cols3])
        for track in (tentative[r] for r in rows3):
            if track.hits >= cfg.min_hits:
                self._confirm(track)
        # 4. confident leftovers: re-identify a lost or remembered track by appearance, else start a new track
        high = high[_at_least(boxes[high, 4], cfg.new_track_score)]
        high = self._reidentify(frame_index, boxes, features, vis, high)
        self._start(frame_index, boxes, features, vis, high, confirm=first_frame or cfg.min_hits <= 1)
        # 5. age out
        self._expire(frame_index)
        out = [(*t.boxes[-1], t.track_id) for t in self._tracks if t.confirmed and t.last_frame == frame_index]
        return np.asarray(out, dtype=np.float64).reshape(-1, 5)

    def predict(self, frame_index: int) -> np.ndarray:
        """A frame without detections (detecting every N-th frame): move the tracks to `frame_index` and return
        (M, 5) x1, y1, x2, y2, track_id of the Kalman-predicted boxes of confirmed tracks not lost."""
        frame_index, _, _ = self._check(frame_index, np.zeros((0, 5)), None)
        if self._last_frame is not None:
            self._predict(frame_index - self._last_frame)
        self._last_frame = frame_index
        live = [t for t in self._tracks if t.confirmed and not t.lost]
        if not live:
            return np.zeros((0, 5))
        boxes = kalman.xyah_to_xyxy(np.stack([t.mean for t in live]))
        return np.column_stack([boxes, [t.track_id for t in live]])

    def pop_finished(self) -> list[Tracklet]:
        """Tracklets that can no longer change (beyond max_age and the memory); removes them from the tracker."""
        done, self._finished = self._finished, []
        return done

    def finish(self) -> list[Tracklet]:
        """End of the stream: every confirmed tracklet not yet popped, ordered by id. The tracker is reset."""
        alive = [t for t in self._tracks + self._memory if t.confirmed]
        out = sorted(self._finished + [self._tracklet(t) for t in alive], key=lambda t: t.track_id)
        self._tracks, self._memory, self._finished = [], [], []
        return out

    # ------------------------------------------------------------------ steps

    def _predict(self, dt: int) -> None:
        if not self._tracks:
            return
        mean = np.stack([t.mean for t in self._tracks])
        cov = np.stack([t.cov for t in self._tracks])
        lost = np.array([t.lost for t in self._tracks])
        mean[lost, 7] = 0.0  # a lost track keeps moving but stops growing/shrinking (as ByteTrack)
        mean, cov = kalman.predict(mean, cov, dt)
        for track, m, c in zip(self._tracks, mean, cov):
            track.mean, track.cov = m, c

    def _correct(self, tracks: list[_Track], boxes: np.ndarray) -> None:
        mean, cov = kalman.update(np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks]),
                                  kalman.xyxy_to_xyah(boxes))
        for track, m, c in zip(tracks, mean, cov):
            track.mean, track.cov = m, c

    def _cost(self, tracks: list[_Track], boxes: np.ndarray, features: np.ndarray | None, dets: np.ndarray,
              min_iou: float) -> np.ndarray:
        """(tracks, dets) cost: 1 - IoU with the predicted box, fused with appearance where both sides have it;
        gated pairs cost INF_COST."""
        if not tracks or len(dets) == 0:
            return np.zeros((len(tracks), len(dets)))
        predicted = kalman.xyah_to_xyxy(np.stack([t.mean for t in tracks]))
        iou = box_iou(predicted, boxes[dets, :4])
        cost = 1.0 - iou
        gate = iou < min_iou
        w = self.config.appearance_weight
        if features is not None and w > 0:
            has = np.array([t.feature is not None for t in tracks])
            if has.any():
                track_feats = np.stack([t.feature if t.feature is not None else np.zeros(features.shape[1])
                                        for t in tracks])
                app = np.clip(1.0 - track_feats @ features[dets].T, 0.0, 1.0)
                fused = (1 - w) * cost + w * app
                cost = np.where(has[:, None], fused, cost)
                gate_iou = self.config.appearance_gate_iou
                uncertain = (iou < gate_iou) | (gate_iou >= 1.0)  # 1.0: the gate always applies, even at IoU 1
                gate |= has[:, None] & (app > self.config.max_appearance_distance) & uncertain
        return np.where(gate, INF_COST, cost)

    def _reidentify(self, frame_index: int, boxes: np.ndarray, features: np.ndarray | None, vis: np.ndarray,
                    dets: np.ndarray) -> np.ndarray:
        """Match confident unassigned detections to lost / remembered tracks by appearance; returns the rest."""
        candidates = [t for t in self._tracks if t.confirmed and t.lost and t.feature is not None] + \
            [t for t in self._memory if t.feature is not None]
        if features is None or not candidates or len(dets) == 0:
            return dets
        cost = 1.0 - np.stack([t.feature for t in candidates]) @ features[dets].T
        rows, cols, _ = assign(cost, self.config.reid_distance)
        for r, c in zip(rows, cols):
            track, det = candidates[r], dets[c]
            if track in self._memory:
                self._memory.remove(track)
                self._tracks.append(track)
            track.mean, track.cov = (x[0] for x in kalman.initiate(kalman.xyxy_to_xyah(boxes[det:det + 1, :4])))
            track.lost = False
            self._add(track, frame_index, boxes[det], features[det], vis[det])
        return np.setdiff1d(dets, dets[cols])

    def _start(self, frame_index: int, boxes: np.ndarray, features: np.ndarray | None, vis: np.ndarray,
               dets: np.ndarray, confirm: bool) -> None:
        if len(dets) == 0:
            return
        mean, cov = kalman.initiate(kalman.xyxy_to_xyah(boxes[dets, :4]))
        for det, m, c in zip(dets, mean, cov):
            track = _Track(mean=m, cov=c, feature=None, last_frame=frame_index, hits=0)
            self._add(track, frame_index, boxes[det], None if features is None else features[det], vis[det])
            self._tracks.append(track)
            if confirm:
                self._confirm(track)

    def _add(self, track: _Track, frame_index: int, box: np.ndarray, feature: np.ndarray | None,
             vis: float) -> None:
        """Record a detection on a track; a clean detection (confident, visible) updates the appearance EMA."""
        track.hits += 1  # tentative tracks are dropped at their first miss, so hits are consecutive
        track.last_frame = frame_index
        track.frames.append(frame_index)
        track.boxes.append(box[:4].astype(np.float64))
        track.scores.append(float(box[4]))
        track.visibility.append(float(vis))
        if feature is None:
            return
        track.features.append(feature.astype(np.float32))
        clean = box[4] >= self.config.high_score and vis >= self.config.min_visibility
        if track.feature is None:
            track.feature = feature.astype(np.float64)
        elif clean:
            ema = self.config.feature_ema
            track.feature = ema * track.feature + (1 - ema) * feature
        track.feature = track.feature / max(float(np.linalg.norm(track.feature)), 1e-12)

    def _confirm(self, track: _Track) -> None:
        track.track_id = self._next_id
        self._next_id += 1

    def _expire(self, frame_index: int) -> None:
        cfg = self.config
        keep = []
        for track in self._tracks:
            if frame_index - track.last_frame <= cfg.max_age:
                keep.append(track)
            elif track.feature is not None and cfg.memory_frames > 0:
                self._memory.append(track)
            else:
                self._finished.append(self._tracklet(track))
        self._tracks = keep
        old = [t for t in self._memory if frame_index - t.last_frame > cfg.max_age + cfg.memory_frames]
        self._memory = [t for t in self._memory if frame_index - t.last_frame <= cfg.max_age + cfg.memory_frames]
        self._finished.extend(self._tracklet(t) for t in old)

    @staticmethod
    def _tracklet(track: _Track) -> Tracklet:
        features = np.stack(track.features) if len(track.features) == len(track.frames) else None
        return Tracklet(track_id=track.track_id, frames=np.asarray(track.frames, dtype=np.int64),
                        boxes=np.stack(track.boxes), scores=np.asarray(track.scores, dtype=np.float64),
                        features=features, visibility=np.asarray(track.visibility, dtype=np.float64))

    # ------------------------------------------------------------------ input checks

    def _check(self, frame_index, boxes, features) -> tuple[int, np.ndarray, np.ndarray | None]:
        try:
            index = int(frame_index)
        except (TypeError, ValueError):
            raise DataError(f"frame_index={frame_index!r}: expected an integer frame number") from None
        if index != frame_index or index < 0:
            raise DataError(f"frame_index={frame_index!r}: expected a non-negative integer frame number")
        if self._last_frame is not None and index <= self._last_frame:
            raise DataError(f"frame_index={index}: frames must come in increasing order (previous {self._last_frame})")
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 5)
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise DataError(f"boxes: expected an (N, 5) array of x1, y1, x2, y2, score, got shape {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise DataError(f"boxes: {int((~np.isfinite(boxes)).any(axis=1).sum())} row(s) with NaN or inf "
                            f"at frame {index}")
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise DataError(f"boxes: x2 < x1 or y2 < y1 at frame {index} (expected x1, y1, x2, y2 corners)")
        if ((boxes[:, 4] < 0) | (boxes[:, 4] > 1)).any():
            raise DataError(f"boxes: scores must be in [0, 1] at frame {index} (got {boxes[:, 4].min():.3g} .. "
                            f"{boxes[:, 4].max():.3g}); rescale raw detector scores first")
        if features is None:
            return index, boxes, None
        features = np.asarray(features, dtype=np.float64)
        if len(boxes) == 0 and features.size == 0:  # no detections: any empty array (or list) means no features
            return index, boxes, None
        if features.ndim != 2 or features.shape[0] != len(boxes):
            raise DataError(f"features: expected one row per box, ({len(boxes)}, D), got shape {features.shape} "
                            f"at frame {index}")
        if len(features) and not np.isfinite(features).all():
            raise DataError(f"features: NaN or inf at frame {index}")
        if len(features) and self._dim is not None and features.shape[1] != self._dim:
            raise DataError(f"features: dimension {features.shape[1]} at frame {index}, earlier frames had "
                            f"{self._dim}")
        if len(features):
            self._dim = features.shape[1]
        return index, boxes, features
