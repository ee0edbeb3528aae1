"""Stitching within a camera (association.stitch_links / stitch / associate / OnlineAssociator): checked against
rules evaluated by hand and a brute-force search over one-to-one matchings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from reidkit.errors import ReIDError
from reidkit.video.association import (
    STITCH_APPEARANCE_WEIGHT,
    AssociationConfig,
    OnlineAssociator,
    TrackletSet,
    associate,
    calibrate_threshold,
    cannot_link,
    stitch,
    stitch_links,
)

BOX = (100.0, 50.0, 140.0, 150.0)


def _set(features, cameras, starts, ends, first, last, lengths=None) -> TrackletSet:
    return TrackletSet.from_arrays(np.asarray(features, np.float32), cameras, starts, ends, lengths,
                                   np.asarray(first, float), np.asarray(last, float))


def _orthogonal(n: int, dim: int = 8) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[:n]


def test_a_crop_change_is_stitched_although_appearance_disagrees():
    # A ends at 1.0 s, B starts 0.1 s later at the same place; their features are orthogonal (distance 1)
    t = _set(_orthogonal(2), [0, 0], [0.0, 1.1], [1.0, 2.0], [BOX, BOX], [BOX, BOX])
    assert associate(t, AssociationConfig(threshold=0.2, stitch_seconds=1.0)).tolist() == [1, 1]
    assert associate(t, AssociationConfig(threshold=0.2, stitch_seconds=0.0)).tolist() == [1, 2]


@pytest.mark.parametrize("case", ["gap too long", "boxes apart", "other camera", "overlap in time", "no boxes"])
def test_what_is_not_stitched(case):
    starts, ends, cams, first = [0.0, 1.1], [1.0, 2.0], [0, 0], [BOX, BOX]
    if case == "gap too long":
        starts[1], ends[1] = 2.01, 3.0  # 1.01 s > the 1 s default
    elif case == "boxes apart":
        first[1] = (130.0, 50.0, 170.0, 150.0)  # IoU 10/70 x ... = 0.14 < 0.3
    elif case == "other camera":
        cams[1] = 1
    elif case == "overlap in time":
        starts[1] = 0.9
    if case == "no boxes":
        t = TrackletSet.from_arrays(_orthogonal(2), cams, starts, ends)
    else:
        t = _set(_orthogonal(2), cams, starts, ends, first, [BOX, BOX])
    before, after = stitch_links(t, 1.0, 0.3)
    assert len(before) == len(after) == 0
    assert associate(t, AssociationConfig(threshold=0.2, stitch_seconds=1.0)).tolist() == [1, 2]


def _cost(t: TrackletSet, a: int, b: int, max_gap: float, min_iou: float) -> float | None:
    """The stitch rule written out for one pair: None when the pair may not be stitched."""
    la, fb = t.last_boxes[a], t.first_boxes[b]
    w = max(0.0, min(la[2], fb[2]) - max(la[0], fb[0]))
    h = max(0.0, min(la[3], fb[3]) - max(la[1], fb[1]))
    union = (la[2] - la[0]) * (la[3] - la[1]) + (fb[2] - fb[0]) * (fb[3] - fb[1]) - w * h
    iou = w * h / union
    gap = t.starts[b] - t.ends[a]
    if t.cameras[a] != t.cameras[b] or not 0 < gap <= max_gap or iou < min_iou:
        return None
    return 1.0 - iou + STITCH_APPEARANCE_WEIGHT * (1.0 - float(t.features[a] @ t.features[b]))


@pytest.mark.parametrize("seed", range(12))
def test_links_are_a_best_one_to_one_matching(seed):
    """Random tracklets ending / starting near each other: the links are one to one, every link obeys the rule,
    and they match as many pairs as possible at the least total cost (brute force over all matchings)."""
    rng = np.random.default_rng(seed)
    n = 6
    x = rng.uniform(0, 60, n)
    first = np.column_stack([x, np.full(n, 10.0), x + 40, np.full(n, 110.0)])
    last = first + np.column_stack([rng.uniform(-15, 15, n), np.zeros(n), np.zeros(n), np.zeros(n)]) * [1, 0, 1, 0]
    starts = rng.uniform(0, 3, n).round(1)
    ends = starts + rng.uniform(0.1, 1.0, n).round(1)
    t = _set(rng.normal(size=(n, 8)), rng.integers(0, 2, n), starts, ends, first, last)
    before, after = stitch_links(t, 1.0, 0.3)
    assert len(set(before.tolist())) == len(before) and len(set(after.tolist())) == len(after)
    costs = [_cost(t, a, b, 1.0, 0.3) for a, b in zip(before, after)]
    assert all(c is not None for c in costs)
    best = (0, 0.0)
    for perm in itertools.permutations(range(n)):
        pairs = [_cost(t, a, b, 1.0, 0.3) for a, b in enumerate(perm)]
        valid = [c for c in pairs if c is not None]
        best = max(best, (len(valid), -sum(valid)))
    assert len(costs) == best[0]
    assert sum(costs) == pytest.approx(-best[1])


def test_chains_merge_features_by_length_and_join_spans():
    feats = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
    boxes = [BOX] * 4
    t = _set(feats, [0, 0, 0, 1], [0.0, 1.1, 2.0, 0.0], [1.0, 1.9, 3.0, 5.0], boxes, boxes, [10, 20, 30, 5])
    chains, member_of = stitch(t, AssociationConfig(stitch_seconds=1.0))
    assert member_of.tolist() == [0, 0, 0, 1]
    expected = np.array([10, 20, 30]) / np.linalg.norm([10, 20, 30])
    np.testing.assert_allclose(chains.features[0], expected, atol=1e-6)
    assert chains.starts.tolist() == [0.0, 0.0] and chains.ends.tolist() == [3.0, 5.0]
    assert chains.lengths.tolist() == [60, 5] and chains.cameras.tolist() == [0, 1]


def test_a_stitched_chain_spans_its_gap():
    # A (0-1 s) -> B (1.5-2.5 s) are stitched: one person throughout, so C, seen elsewhere in camera 0 during the
    # gap, is someone else although its features equal A's; without stitching nothing forbids merging all three
    feats = np.array([[1, 0], [1, 0], [1, 0]], np.float32)
    other = (400.0, 50.0, 440.0, 150.0)
    t = _set(feats, [0, 0, 0], [0.0, 1.5, 1.1], [1.0, 2.5, 1.4], [BOX, BOX, other], [BOX, BOX, other])
    assert associate(t, AssociationConfig(threshold=0.5, stitch_seconds=1.0)).tolist() == [1, 1, 2]
    assert associate(t, AssociationConfig(threshold=0.5, stitch_seconds=0.0)).tolist() == [1, 1, 1]


def test_calibration_scores_the_stitched_tracklets():
    # two people, each seen as two fragments; each fragment looks like the OTHER person's fragment in the other
    # half (A = D, B = C): appearance alone gets 50 at best, stitching 100
    feats = _orthogonal(2)[[0, 1, 1, 0]]
    far = (400.0, 50.0, 440.0, 150.0)
    t = _set(feats, [0, 0, 0, 0], [0.0, 1.1, 0.0, 1.1], [1.0, 2.0, 1.0, 2.0], [BOX, BOX, far, far],
             [BOX, BOX, far, far])
    _, curve = calibrate_threshold(t, [1, 1, 2, 2], AssociationConfig(stitch_seconds=1.0))
    assert max(v for _, v in curve) == pytest.approx(100.0)
    _, curve = calibrate_threshold(t, [1, 1, 2, 2], AssociationConfig(stitch_seconds=0.0))
    assert max(v for _, v in curve) == pytest.approx(50.0)


def test_online_stitches_once_and_only_within_the_rules():
    online = OnlineAssociator(AssociationConfig(threshold=0.2, stitch_seconds=1.0))
    f = _orthogonal(4)
    a = online.add(f[0], 0, 0.0, 1.0, BOX, BOX)
    b = online.add(f[1], 0, 1.1, 2.0, BOX, BOX)       # continues a despite orthogonal features
    c = online.add(f[2], 0, 1.2, 2.0, BOX, BOX)       # a already continued; overlaps b: a new identity
    d = online.add(f[3], 1, 2.1, 3.0, BOX, BOX)       # another camera: never stitched
    assert a == b and len({a, c, d}) == 3
    e = online.add(f[1], 0, 2.05, 3.0, BOX, BOX)      # b and c both end at 2.0 s here: e looks like b, so it
    assert e == a                                     # continues b (a's identity)
    g = online.add(f[1], 0, 2.5, 3.5, BOX, BOX)       # overlaps e (a's identity): it can only continue c
    assert g == c


def test_bad_stitch_settings_are_refused():
    with pytest.raises(ReIDError, match="stitch_seconds"):
        AssociationConfig(stitch_seconds=-1.0)
    with pytest.raises(ReIDError, match="stitch_iou"):
        AssociationConfig(stitch_iou=0.0)
    with pytest.raises(ReIDError, match="first_boxes and last_boxes"):
        TrackletSet.from_arrays(_orthogonal(2), [0, 0], [0, 1], [1, 2], None, np.zeros((2, 4)), None)


def _interleaved(with_intervals: bool) -> TrackletSet:
    """A seen 0-1.4 s and 3.0-4.4 s, B 1.5-2.9 s in between (the tracker lost A and found it again while B
    followed the person): one person, identical features; their spans overlap, their intervals do not."""
    feats = np.array([[1, 0], [1, 0]], np.float32)
    intervals = [np.array([[0.0, 1.4], [3.0, 4.4]]), np.array([[1.5, 2.9]])] if with_intervals else None
    return TrackletSet.from_arrays(feats, [0, 0], [0.0, 1.5], [4.4, 2.9], None, None, None, intervals)


def test_interleaved_tracklets_of_one_person_may_join_when_intervals_are_known():
    assert associate(_interleaved(True), AssociationConfig(threshold=0.2)).tolist() == [1, 1]
    assert associate(_interleaved(False), AssociationConfig(threshold=0.2)).tolist() == [1, 2]
    online = OnlineAssociator(AssociationConfig(threshold=0.2))
    a = online.add([1.0, 0.0], 0, 0.0, 4.4, intervals=np.array([[0.0, 1.4], [3.0, 4.4]]))
    assert online.add([1.0, 0.0], 0, 1.5, 2.9, intervals=np.array([[1.5, 2.9]])) == a
    assert online.add([1.0, 0.0], 0, 1.0, 2.0) != a  # its span meets both: seen at the same time


@pytest.mark.parametrize("seed", range(5))
def test_seen_together_equals_a_frame_by_frame_check(seed):
    """Random tracklets of random runs on a 0.1 s grid in 2 cameras: cannot-link must equal "some frame has
    both", checked frame by frame."""
    rng = np.random.default_rng(seed)
    n, grid = 12, 60
    seen = np.zeros((n, grid), bool)
    intervals, cameras = [], rng.integers(0, 2, n)
    for i in range(n):
        starts = np.sort(rng.choice(grid - 4, rng.integers(1, 4), replace=False))
        runs = [(s, min(s + rng.integers(0, 6), grid - 1)) for s in starts]
        for s, e in runs:
            seen[i, s:e + 1] = True
        intervals.append(np.array(runs, float) / 10)
    starts = np.array([k[:, 0].min() for k in intervals])
    ends = np.array([k[:, 1].max() for k in intervals])
    t = TrackletSet.from_arrays(rng.normal(size=(n, 4)), cameras, starts, ends, None, None, None, intervals)
    expected = (cameras[:, None] == cameras[None, :]) & ((seen.astype(int) @ seen.T.astype(int)) > 0)
    np.fill_diagonal(expected, False)
    np.testing.assert_array_equal(cannot_link(t), expected)
