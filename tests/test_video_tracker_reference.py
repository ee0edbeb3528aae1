"""reidkit's Tracker (IoU only) against a maintained reference: Roboflow's `trackers` ByteTrack, given the same
score thresholds, must split the same synthetic detections into the same identities."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.video.tracker import Tracker, TrackerConfig

trackers = pytest.importorskip("trackers")
sv = pytest.importorskip("supervision")

CONFIG = TrackerConfig(appearance_weight=0.0, memory_seconds=0.0)


def walkers(frames: int = 40) -> list[np.ndarray]:
    """Three people walking apart from each other (x1 y1 x2 y2 score per frame): person 1 is missed for two
    frames, person 2's detections fall to a low score (between low_score and high_score) for six frames, person 3
    appears at frame 10, and a false box too weak to start a track (high_score <= 0.85 < new_track_score) stands
    far from everyone for six frames."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(frames):
        boxes = []
        for k, (x0, y0, vx) in enumerate(((20.0, 50.0, 3.0), (300.0, 60.0, -2.0), (150.0, 300.0, 2.5))):
            if (k == 0 and t in (15, 16)) or (k == 2 and t < 10):
                continue
            score = 0.65 if k == 1 and 20 <= t < 26 else 0.95
            x, y = x0 + vx * t + rng.normal(0, 0.5), y0 + rng.normal(0, 0.5)
            boxes.append((x, y, x + 40, y + 100, score))
        if 30 <= t < 36:
            boxes.append((550.0, 400.0, 580.0, 460.0, 0.85))
        out.append(np.asarray(boxes, np.float32))
    return out


def ours(dets: list[np.ndarray]) -> dict[int, list[tuple[int, int]]]:
    """track id -> [(frame, rounded x1)] of the boxes our tracker outputs."""
    tracker, out = Tracker(CONFIG), {}
    for t, boxes in enumerate(dets):
        for row in tracker.update(t, boxes):
            out.setdefault(int(row[4]), []).append((t, round(float(row[0]))))
    return out


def reference(dets: list[np.ndarray]) -> dict[int, list[tuple[int, int]]]:
    """The same from trackers' ByteTrackTracker at our score thresholds (boxes below low_score dropped first, as
    our tracker ignores them)."""
    tracker = trackers.ByteTrackTracker(high_conf_det_threshold=CONFIG.high_score,
                                        track_activation_threshold=CONFIG.new_track_score,
                                        minimum_consecutive_frames=CONFIG.min_hits, frame_rate=CONFIG.fps)
    out = {}
    for t, boxes in enumerate(dets):
        boxes = boxes[boxes[:, 4] >= CONFIG.low_score]
        res = tracker.update(sv.Detections(xyxy=boxes[:, :4], confidence=boxes[:, 4],
                                           class_id=np.zeros(len(boxes), int)))
        for k, box in zip(res.tracker_id, res.xyxy):
            if k >= 0:
                out.setdefault(int(k), []).append((t, round(float(box[0]))))
    return out


def partition(tracks: dict[int, list[tuple[int, int]]], since: int) -> set[frozenset]:
    """The identities as sets of (frame, x1), from frame `since` on (the two trackers confirm tracks at different
    frames: ours confirms first-frame tracks at once, ByteTrack after its consecutive frames)."""
    return {frozenset(p for p in points if p[0] >= since) for points in tracks.values()}


def test_iou_only_tracker_splits_identities_like_maintained_bytetrack():
    dets = walkers()
    mine, theirs = ours(dets), reference(dets)
    assert len(mine) == len(theirs) == 3  # one id per person: the gap and the low-score stretch keep the id
    assert partition(mine, since=12) == partition(theirs, since=12)
    # the false box (score 0.85 < new_track_score) never becomes a track in either
    assert all(x < 500 for points in (*mine.values(), *theirs.values()) for _, x in points)
