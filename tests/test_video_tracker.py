"""Single-camera tracker (reidkit.video.tracker) and its Kalman filter (reidkit.video.kalman).

References are independent of the code under test: the Kalman equations evaluated by hand on a 1-D slice and as
explicit per-track matrix products, hand-built scenes whose correct identities are known by construction, and
motmetrics (py-motmetrics) scoring real TUD-Campus tracks against the MOTChallenge ground truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reidkit.errors import ReIDError
from reidkit.video import kalman
from reidkit.video.tracker import Tracker, TrackerConfig, Tracklet

TUD = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mot" / "TUD-Campus"
W, H = 40.0, 100.0


def box(x: float, y: float = 50.0, score: float = 0.9) -> list[float]:
    return [x, y, x + W, y + H, score]


def run(tracker: Tracker, frames: list[tuple[list, list | None]]) -> list[np.ndarray]:
    """Feed (boxes, features) per frame from frame 0; returns the outputs."""
    out = []
    for index, (boxes, feats) in enumerate(frames):
        out.append(tracker.update(index, np.asarray(boxes, float).reshape(-1, 5),
                                  None if feats is None else np.asarray(feats, float)))
    return out


def id_at(output: np.ndarray, x1: float) -> int:
    """Track id of the output box whose x1 is closest to `x1`."""
    return int(output[np.argmin(np.abs(output[:, 0] - x1)), 4])


# ------------------------------------------------------------------------------------------------------- Kalman

def test_kalman_one_step_matches_hand_evaluation():
    # x coordinate of a box of height 100 at cx = 10: the (x, vx) block decouples from the others because
    # every covariance starts diagonal and F only couples a coordinate with its own velocity.
    mean, cov = kalman.initiate(np.array([[10.0, 20.0, 0.5, 100.0]]))
    p_xx, p_vv = (2 * 100 / 20) ** 2, (10 * 100 / 160) ** 2            # 100, 39.0625
    assert cov[0, 0, 0] == pytest.approx(p_xx) and cov[0, 4, 4] == pytest.approx(p_vv)
    mean, cov = kalman.predict(mean, cov)
    q_x, q_v = (100 / 20) ** 2, (100 / 160) ** 2                       # process noise 25, 0.390625
    pred_xx, pred_xv, pred_vv = p_xx + p_vv + q_x, p_vv, p_vv + q_v   # F P F^T + Q on the 2x2 block
    assert cov[0, 0, 0] == pytest.approx(164.0625) == pytest.approx(pred_xx)
    assert cov[0, 0, 4] == pytest.approx(pred_xv) and cov[0, 4, 4] == pytest.approx(pred_vv)
    assert mean[0, 0] == 10.0 and mean[0, 4] == 0.0

    mean, cov = kalman.update(mean, cov, np.array([[12.0, 20.0, 0.5, 100.0]]))
    s = pred_xx + (100 / 20) ** 2                                      # innovation variance 189.0625
    k_x, k_v = pred_xx / s, pred_xv / s                                # Kalman gain of x and vx
    assert mean[0, 0] == pytest.approx(10 + k_x * 2)                   # 11.7355...
    assert mean[0, 4] == pytest.approx(k_v * 2)
    assert cov[0, 0, 0] == pytest.approx(pred_xx - pred_xx ** 2 / s)
    assert cov[0, 4, 4] == pytest.approx(pred_vv - pred_xv ** 2 / s)


def test_kalman_vectorised_equals_explicit_matrices_per_track():
    rng = np.random.default_rng(0)
    z0 = np.column_stack([rng.uniform(0, 600, 5), rng.uniform(0, 400, 5), rng.uniform(0.3, 0.6, 5),
                          rng.uniform(50, 200, 5)])
    mean, cov = kalman.initiate(z0)
    mean[:, 4:] = rng.normal(0, 3, (5, 4))
    z1 = z0 + rng.normal(0, 2, z0.shape)
    pm, pc = kalman.predict(mean, cov, dt=3)
    um, uc = kalman.update(pm, pc, z1)
    f = np.eye(8)
    f[:4, 4:] = 3 * np.eye(4)
    hmat = np.eye(8)[:4]
    for t in range(5):
        h = mean[t, 3]
        q = 3 * np.diag(np.r_[[h / 20, h / 20, 1e-2, h / 20], [h / 160, h / 160, 1e-5, h / 160]] ** 2)
        m, p = f @ mean[t], f @ cov[t] @ f.T + q
        np.testing.assert_allclose(pm[t], m)
        np.testing.assert_allclose(pc[t], p)
        hp = m[3]
        r = np.diag([(hp / 20) ** 2, (hp / 20) ** 2, 0.1 ** 2, (hp / 20) ** 2])
        s = hmat @ p @ hmat.T + r
        k = p @ hmat.T @ np.linalg.inv(s)
        np.testing.assert_allclose(um[t], m + k @ (z1[t] - hmat @ m))
        np.testing.assert_allclose(uc[t], (np.eye(8) - k @ hmat) @ p, atol=1e-9)


def test_box_conversions_round_trip():
    boxes = np.array([[10.0, 20.0, 50.0, 120.0], [0.0, 0.0, 30.0, 60.0]])
    np.testing.assert_allclose(kalman.xyxy_to_xyah(boxes)[0], [30.0, 70.0, 0.4, 100.0])
    np.testing.assert_allclose(kalman.xyah_to_xyxy(kalman.xyxy_to_xyah(boxes)), boxes)


# ------------------------------------------------------------------------------------------------------- tracking

def crossing_scene() -> list[tuple[list, list]]:
    """A walks right, B walks left, slowly; they meet, stand side by side overlapping (A at 48, B at 56), swap
    places while overlapping (A at 56, B at 48), then walk on. Features: A = e0, B = e1. The swap is invisible to
    motion: after ten still frames each track predicts its old place, where the other person now stands."""
    ea, eb = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    frames = []
    for f in range(40):
        if f < 10:
            xa, xb = 38 + f, 66 - f
        elif f < 20:
            xa, xb = 48, 56
        elif f < 30:
            xa, xb = 56, 48
        else:
            xa, xb = 56 + 4 * (f - 29), 48 - 4 * (f - 29)
        frames.append(([box(xb), box(xa)], [eb, ea]))  # B listed first: ties cannot favour A by order
    return frames


def test_appearance_keeps_ids_through_a_crossing_that_iou_alone_swaps():
    scene = crossing_scene()
    iou_only = run(Tracker(TrackerConfig(appearance_weight=0.0)), [(b, None) for b, _ in scene])
    assert id_at(iou_only[5], 43) != id_at(iou_only[35], 56 + 24)  # IoU alone: A's id ends on B
    assert id_at(iou_only[5], 43) == id_at(iou_only[35], 48 - 24)

    out = run(Tracker(), scene)
    a, b = id_at(out[5], 43), id_at(out[5], 61)
    assert a != b
    assert id_at(out[35], 56 + 24) == a and id_at(out[35], 48 - 24) == b
    assert all(len(o) == 2 for o in out[2:])  # both output at every frame once confirmed (min_hits 3)


@pytest.mark.parametrize("gate_iou", [1.0, 0.5])
def test_the_crossing_holds_with_the_appearance_gate_lifted_at_high_iou(gate_iou):
    """Lifting the appearance gate where the boxes overlap well must not reopen the swap: the fused cost still
    prefers the pair whose look agrees."""
    out = run(Tracker(TrackerConfig(appearance_gate_iou=gate_iou)), crossing_scene())
    a, b = id_at(out[5], 43), id_at(out[5], 61)
    assert a != b and id_at(out[35], 56 + 24) == a and id_at(out[35], 48 - 24) == b


def test_a_change_of_look_in_place_ends_the_track_only_under_the_gate():
    """One person walks steadily; at frame 15 its features turn orthogonal (a new crop, a turn). With the gate
    always on, the track is lost there and a new id starts; with the gate lifted at IoU >= 0.5, one id throughout."""
    frames = [([box(10 + 3 * f)], [[1.0, 0.0, 0.0] if f < 15 else [0.0, 1.0, 0.0]]) for f in range(30)]
    ids = {gate: {int(o[0, 4]) for o in run(Tracker(TrackerConfig(appearance_gate_iou=gate)), frames) if len(o)}
           for gate in (1.0, 0.5)}
    assert len(ids[1.0]) == 2 and len(ids[0.5]) == 1


def test_gap_shorter_than_max_age_keeps_the_id():
    frames = [([box(10 + 5 * f)] if not 10 <= f < 16 else [], None) for f in range(30)]
    out = run(Tracker(TrackerConfig(max_age=10)), frames)
    assert all(len(out[f]) == 0 for f in range(10, 16))
    assert out[9][0, 4] == out[16][0, 4] == out[29][0, 4]
    # a gap longer than max_age (without appearance there is no memory): a new id
    out = run(Tracker(TrackerConfig(max_age=3)), frames)
    assert len(out[17]) == 0 and out[9][0, 4] != out[18][0, 4]  # a new track, confirmed at its third frame


def test_low_score_detections_extend_tracks_in_the_second_stage():
    # frames 5..9 score 0.3: in [low_score, high_score) -> matched by IoU to the existing track only
    frames = [([box(10 + 3 * f, score=0.3 if 5 <= f < 10 else 0.9)], None) for f in range(15)]
    out = run(Tracker(TrackerConfig(low_score=0.1, high_score=0.5)), frames)
    assert [len(out[f]) for f in range(2, 15)] == [1] * 13  # confirmed at the third frame (min_hits)
    assert len({int(out[f][0, 4]) for f in range(2, 15)}) == 1
    # the same detections ignored (low_score above 0.3): the track is not output in those frames
    out = run(Tracker(TrackerConfig(low_score=0.4, high_score=0.5)), frames)
    assert [len(out[f]) for f in range(5, 10)] == [0] * 5 and out[4][0, 4] == out[12][0, 4]
    # a lone low-score detection never starts a track
    out = run(Tracker(TrackerConfig(low_score=0.1, high_score=0.5)), [([box(300, score=0.3)], None)] * 5)
    assert all(len(o) == 0 for o in out)


def test_lost_person_is_refound_by_appearance_after_max_age():
    ea, eb = [1.0, 0.0], [0.0, 1.0]
    cfg = TrackerConfig(max_age=5, memory_seconds=4.0, fps=25)
    # A walks right for 10 frames, is gone for 40 frames (> max_age), comes back far away (no IoU possible)
    frames = [([box(10 + 4 * f)], [ea]) for f in range(10)] + [([], None)] * 40 + \
        [([box(400 + 4 * f)], [ea]) for f in range(5)]
    out = run(Tracker(cfg), frames)
    assert out[50][0, 4] == out[9][0, 4]
    # somebody else (orthogonal appearance) in that place: a new identity
    frames[50:] = [([box(400 + 4 * f)], [eb]) for f in range(5)]
    out = run(Tracker(cfg), frames)
    assert len(out[50]) == 0 and out[52][0, 4] != out[9][0, 4]  # tentative first, then a new id


def test_pop_finished_drains_and_memory_stays_bounded():
    cfg = TrackerConfig(max_age=3, memory_seconds=0.2, fps=25)  # 5 frames of memory
    tracker = Tracker(cfg)
    for f in range(6):
        tracker.update(f, np.array([box(10 + 4 * f)]), np.array([[1.0, 0.0]]))
    for f in range(6, 6 + 3 + 5):
        tracker.update(f, np.zeros((0, 5)))
        assert tracker.pop_finished() == []
    tracker.update(14, np.zeros((0, 5)))
    done = tracker.pop_finished()
    assert len(done) == 1 and done[0].frames.tolist() == list(range(6))
    assert done[0].boxes.shape == (6, 4) and done[0].features.shape == (6, 2)
    assert tracker.pop_finished() == [] and tracker.finish() == []
    # many people passing through one after the other: the tracker holds at most the recent ones
    tracker = Tracker(cfg)
    drained = 0
    for f in range(300):
        person = f // 10
        tracker.update(f, np.array([box(10 + 40 * (person % 10) + f % 10)]), np.eye(30)[[person]])
        drained += len(tracker.pop_finished())
        assert len(tracker._tracks) + len(tracker._memory) <= 3
    assert drained + len(tracker.finish()) == 30


def test_predict_moves_tracks_between_detections():
    tracker = Tracker()
    for f in range(0, 20, 2):  # detecting every 2nd frame: 4 px per frame
        out = tracker.update(f, np.array([box(10 + 4 * f)]))
    predicted = tracker.predict(19)
    assert predicted.shape == (1, 5) and predicted[0, 4] == out[0, 4]
    assert predicted[0, 0] == pytest.approx(10 + 4 * 19, abs=1.5)
    assert tracker.update(20, np.array([box(10 + 4 * 20)]))[0, 4] == out[0, 4]


def test_tracklet_feature_is_the_quality_weighted_mean():
    t = Tracklet(1, np.array([0, 1, 2]), np.array([[0, 0, 10, 100], [0, 0, 10, 100], [0, 0, 5, 50.0]]),
                 np.array([1.0, 0.5, 1.0]), np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]),
                 np.array([1.0, 1.0, 0.5]))
    # weights: score x height / max height x visibility = 1, 0.5, 1 x 0.5 x 0.5 = 0.25
    expected = np.array([1.0, 0.75]) / np.hypot(1.0, 0.75)
    np.testing.assert_allclose(t.feature(), expected, rtol=1e-6)
    with pytest.raises(ReIDError, match="no appearance"):
        Tracklet(2, t.frames, t.boxes, t.scores).feature()


@pytest.mark.parametrize("boxes, feats, match", [
    ([[0, 0, 10, np.nan, 0.9]], None, "boxes"),
    ([[0, 0, 10, 10]], None, r"boxes.*\(N, 5\)"),
    ([[10, 0, 0, 10, 0.9]], None, "boxes: x2 < x1"),
    ([[0, 0, 10, 10, 40.0]], None, "boxes: scores"),
    ([[0, 0, 10, 10, 0.9]], [[1.0, 0.0], [0.0, 1.0]], "features: expected one row per box"),
    ([[0, 0, 10, 10, 0.9]], [[np.inf, 0.0]], "features: NaN"),
])
def test_bad_input_names_the_argument(boxes, feats, match):
    with pytest.raises(ReIDError, match=match):
        Tracker().update(0, np.asarray(boxes, float), None if feats is None else np.asarray(feats))


def test_empty_frames_accept_empty_feature_arrays():
    tracker = Tracker()
    assert tracker.update(0, np.zeros((0, 5)), np.zeros((0, 128))).shape == (0, 5)
    assert tracker.update(1, [], []).shape == (0, 5)
    assert tracker.predict(2).shape == (0, 5)


def test_bad_frame_order_and_config():
    tracker = Tracker()
    tracker.update(5, np.zeros((0, 5)))
    with pytest.raises(ReIDError, match="frame_index=5"):
        tracker.update(5, np.zeros((0, 5)))
    with pytest.raises(ReIDError, match="frame_index"):
        tracker.update(-1.5, np.zeros((0, 5)))
    tracker.update(6, np.array([box(0)]), np.ones((1, 4)))
    with pytest.raises(ReIDError, match="features: dimension 3"):
        tracker.update(7, np.array([box(0)]), np.ones((1, 3)))
    with pytest.raises(ReIDError, match="high_score"):
        TrackerConfig(high_score=1.5)
    with pytest.raises(ReIDError, match="low_score"):
        TrackerConfig(low_score=0.6, high_score=0.5)


# ------------------------------------------------------------------------------------------------------- real data

@pytest.mark.shared
def test_tud_campus_public_detections_idf1_by_motmetrics():
    if not (TUD / "det" / "det.txt").is_file():
        pytest.skip("../shared TUD-Campus not present")
    mm = pytest.importorskip("motmetrics")
    from reidkit.data.mot import read_gt
    from reidkit.video.detect import build_detector

    detector = build_detector(TUD)  # det.txt, scores divided by the file's maximum
    image = np.zeros((480, 640, 3), np.uint8)
    tracker = Tracker(TrackerConfig.for_public_detections())
    for f in range(71):
        tracker.update(f, detector.detect([image], frame_indices=[f])[0])
    gt = read_gt(TUD / "gt" / "gt.txt")
    pred = {}
    for t in tracker.finish():
        for frame, b in zip(t.frames, t.boxes):
            pred.setdefault(int(frame) + 1, []).append((t.track_id, b))
    acc = mm.MOTAccumulator(auto_id=True)
    for frame in range(1, 72):
        sel = gt.frames == frame
        hyp = pred.get(frame, [])
        hb = np.array([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for _, b in hyp]).reshape(-1, 4)
        acc.update(gt.ids[sel].tolist(), [i for i, _ in hyp], iou_distance(gt.boxes[sel], hb))
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "mota"], name="tud")
    assert summary["idf1"].iloc[0] >= TUD_PUBLIC_IDF1_FLOOR
    assert summary["mota"].iloc[0] >= TUD_PUBLIC_MOTA_FLOOR


def iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - IoU of (x, y, w, h) boxes, NaN (no match) where IoU < 0.5, by a plain loop (motmetrics' own
    iou_matrix calls np.asfarray, gone in NumPy 2)."""
    out = np.full((len(a), len(b)), np.nan)
    for i, (ax, ay, aw, ah) in enumerate(a):
        for j, (bx, by, bw, bh) in enumerate(b):
            iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
            ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
            iou = iw * ih / (aw * ah + bw * bh - iw * ih)
            if iou >= 0.5:
                out[i, j] = 1.0 - iou
    return out


# IoU-only tracklets on det.txt measured 0.444 IDF1 / 0.435 MOTA by motmetrics (2026-12-06); floors leave a margin
TUD_PUBLIC_IDF1_FLOOR = 0.40
TUD_PUBLIC_MOTA_FLOOR = 0.38


def test_float32_scores_at_a_threshold_count_as_reaching_it():
    """Detectors give float32: 0.9 is stored as 0.89999998 and must still start a track at new_track_score 0.9."""
    tracker = Tracker(TrackerConfig(min_hits=1))
    detections = np.array([box(10.0)], dtype=np.float32)
    assert float(detections[0, 4]) < 0.9  # the float32 rounding this test is about
    output = tracker.update(0, detections)
    assert len(output) == 1
