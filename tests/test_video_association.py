"""Cross-camera association (reidkit.video.association) against independent references: known groupings of
hand-made features, a brute-force constrained average linkage, scikit-learn's agglomerative clustering, and a
hand-computed IDF1."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from reidkit.errors import ReIDError
from reidkit.video.association import (
    AssociationConfig,
    OnlineAssociator,
    TrackletSet,
    associate,
    calibrate_threshold,
    cannot_link,
    cluster_distances,
    cosine_distances,
    tracklet_idf1,
)


def _people(num_ids: int, per_id: int, dim: int = 32, noise: float = 0.15, seed: int = 0):
    """Features of `num_ids` people, `per_id` tracklets each, around random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    truth = np.repeat(np.arange(num_ids), per_id)
    feats = centres[truth] / np.linalg.norm(centres[truth], axis=1, keepdims=True)
    feats = feats + noise * rng.normal(size=feats.shape) / np.sqrt(dim)
    return feats, truth


def _spread_in_time(truth: np.ndarray, num_cams: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tracklet k of a person in camera k % num_cams, one after another in time: no same-camera overlap."""
    cams, starts = np.zeros(len(truth), int), np.zeros(len(truth))
    for pid in np.unique(truth):
        idx = np.flatnonzero(truth == pid)
        cams[idx] = np.arange(len(idx)) % num_cams
        starts[idx] = 10.0 * np.arange(len(idx))
    return cams, starts, starts + 5.0


def test_known_grouping_across_cameras_and_reentry():
    feats, truth = _people(6, 4)  # 4 tracklets per person over 3 cameras: one re-entry into camera 0
    cams, t0, t1 = _spread_in_time(truth, 3)
    labels = associate(TrackletSet.from_arrays(feats, cams, t0, t1), AssociationConfig(threshold=0.4))
    assert adjusted_rand_score(truth, labels) == 1.0
    assert labels.min() == 1 and labels.max() == 6


def test_cannot_link_same_camera_overlap_is_respected():
    f = np.ones((2, 4))  # identical appearance, one camera, overlapping in time: two people side by side
    labels = associate(TrackletSet.from_arrays(f, [0, 0], [0.0, 1.0], [2.0, 3.0]), AssociationConfig(threshold=1.0))
    assert labels[0] != labels[1]
    # the same two tracklets one after the other (re-entry) merge
    labels = associate(TrackletSet.from_arrays(f, [0, 0], [0.0, 3.0], [2.0, 4.0]), AssociationConfig(threshold=1.0))
    assert labels[0] == labels[1]


def test_transition_window_forbids_implausible_gaps():
    f = np.ones((3, 4))
    cams, starts, ends = [0, 1, 1], [0.0, 12.0, 100.0], [10.0, 20.0, 110.0]  # gaps 2 s and 90 s after camera 0
    cfg = AssociationConfig(threshold=1.0, transitions={(1, 0): (0.0, 30.0)})
    forbidden = cannot_link(TrackletSet.from_arrays(f, cams, starts, ends), cfg.transitions)
    assert forbidden.tolist() == [[False, False, True], [False, False, False], [True, False, False]]
    labels = associate(TrackletSet.from_arrays(f, cams, starts, ends), cfg)
    assert labels[0] == labels[1] and labels[2] != labels[0] or labels.tolist() == [1, 1, 2]


def _brute_force_average_linkage(d: np.ndarray, forbidden: np.ndarray, threshold: float) -> np.ndarray:
    """Reference: merge the closest pair of clusters (mean of member distances) that holds no forbidden pair,
    while that mean is <= threshold. A plain loop over cluster pairs."""
    clusters = [[i] for i in range(len(d))]
    while True:
        best = None
        for a, b in itertools.combinations(range(len(clusters)), 2):
            if forbidden[np.ix_(clusters[a], clusters[b])].any():
                continue
            mean = d[np.ix_(clusters[a], clusters[b])].mean()
            if mean <= threshold and (best is None or mean < best[0]):
                best = (mean, a, b)
        if best is None:
            break
        _, a, b = best
        clusters[a] += clusters.pop(b)
    labels = np.zeros(len(d), int)
    for k, members in enumerate(clusters):
        labels[members] = k
    return labels


@pytest.mark.parametrize("seed", range(6))
def test_constrained_linkage_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 9
    x = rng.normal(size=(n, 3))
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    forbidden = np.triu(rng.random((n, n)) < 0.2, 1)
    forbidden = forbidden | forbidden.T
    threshold = float(np.quantile(d[d > 0], 0.4))
    got = cluster_distances(d, forbidden, threshold)
    want = _brute_force_average_linkage(d, forbidden, threshold)
    assert adjusted_rand_score(want, got) == 1.0
    for i, j in zip(*np.nonzero(forbidden)):
        assert got[i] != got[j]


def test_unconstrained_linkage_matches_scikit_learn():
    feats, _ = _people(8, 3, noise=0.8, seed=4)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    d = cosine_distances(feats)
    threshold = float(np.quantile(d[d > 0], 0.2))
    ours = cluster_distances(d, np.zeros_like(d, bool), threshold)
    sk = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                 distance_threshold=threshold).fit_predict(d)
    assert adjusted_rand_score(sk, ours) == 1.0


def test_tracklet_idf1_hand_computed():
    # truth A A B B, predicted 1 1 1 2, lengths 10 20 30 40: best matching 1->A (30) and 2->B (40): 70 / 100
    assert tracklet_idf1([1, 1, 1, 2], ["A", "A", "B", "B"], [10, 20, 30, 40]) == pytest.approx(70.0)
    assert tracklet_idf1([5, 5, 7], [0, 0, 1]) == pytest.approx(100.0)


@pytest.mark.parametrize("rerank", [False, True])
def test_calibration_finds_a_perfect_threshold(rerank):
    feats, truth = _people(8, 4, noise=0.3, seed=1)
    cams, t0, t1 = _spread_in_time(truth, 2)
    tracklets = TrackletSet.from_arrays(feats, cams, t0, t1)
    cfg = AssociationConfig(rerank=rerank, k1=6, k2=3)
    threshold, curve = calibrate_threshold(tracklets, truth, cfg)
    assert max(v for _, v in curve) == pytest.approx(100.0)
    labels = associate(tracklets, AssociationConfig(threshold=threshold, rerank=rerank, k1=6, k2=3))
    assert adjusted_rand_score(truth, labels) == 1.0


def test_online_associator_groups_a_stream():
    feats, truth = _people(5, 3, seed=2)
    cams, t0, t1 = _spread_in_time(truth, 3)
    order = np.argsort(t0, kind="stable")  # tracklets arrive as they finish
    online = OnlineAssociator(AssociationConfig(threshold=0.4))
    labels = np.zeros(len(truth), int)
    for i in order:
        labels[i] = online.add(feats[i], int(cams[i]), float(t0[i]), float(t1[i]))
    assert adjusted_rand_score(truth, labels) == 1.0
    assert online.num_identities == 5


def test_online_associator_respects_cannot_link():
    online = OnlineAssociator(AssociationConfig(threshold=1.0))
    assert online.add(np.ones(4), 0, 0.0, 5.0) == 1
    assert online.add(np.ones(4), 0, 2.0, 6.0) == 2  # same look, same camera, same time: another person
    assert online.add(np.ones(4), 1, 2.0, 6.0) == 1  # another camera: the first identity (closest, ties -> first)


def test_bad_inputs_are_named():
    with pytest.raises(ReIDError, match="threshold"):
        AssociationConfig(threshold=-1)
    with pytest.raises(ReIDError, match="ends before"):
        TrackletSet.from_arrays(np.ones((1, 2)), [0], [3.0], [1.0])
    with pytest.raises(ReIDError, match="online association does not re-rank"):
        OnlineAssociator(AssociationConfig(rerank=True))
    assert associate(TrackletSet.from_arrays(np.zeros((0, 4)), [], [], [])).shape == (0,)


def test_online_associator_grows_past_its_initial_capacity_and_refuses_another_dimension():
    """More identities than the arrays' first capacity (16): each distinct direction stays its own identity and a
    repeat of the first joins identity 1 (checked by hand: orthogonal unit vectors are at cosine distance 1)."""
    online = OnlineAssociator(AssociationConfig(threshold=0.1))
    eye = np.eye(40)
    assert [online.add(eye[i], i % 3, float(i), float(i) + 0.5) for i in range(40)] == list(range(1, 41))
    assert online.add(eye[0], 5, 100.0, 101.0) == 1
    with pytest.raises(ReIDError, match="dimension 3"):
        online.add(np.ones(3), 0, 200.0, 201.0)
