"""Cross-camera association: tracklets of every camera -> GLOBAL identities.

One mechanism serves both cases the video issue names: the same person in two cameras, and the same person leaving
and re-entering one camera (long-term memory) -- both are tracklets whose appearance agrees and that do not
contradict each other in time.

- Distances: cosine distances of quality-weighted tracklet features (L2-normalised), optionally k-reciprocal
  re-ranked (`reidkit.rerank.re_ranking` on the tracklet x tracklet matrix; the threshold is then on the re-ranked
  scale and is calibrated separately).
- Stitching (must-link), before the clustering: within one camera, a tracklet that starts at most
  `stitch_seconds` after another ended, where that one's last box overlaps its first box (IoU >= `stitch_iou`),
  continues it -- the tracker lost the person for a moment (occlusion, a change of pose or crop that broke its
  appearance gate) and motion says it is the same one. Pairs are matched one to one (Hungarian on 1 - IoU plus a
  small appearance term that breaks ties at crossings); the chains are clustered as single tracklets (features
  averaged by length). Tracklets without boxes are not stitched.
- Constraints (cannot-link): two tracklets of one camera seen at the same time are two people -- compared by the
  runs of frames each was seen in (`intervals`) when given, else by their whole spans (a tracker that loses a
  person and finds them again later interleaves two tracklets of one person whose spans overlap although they
  never share a frame); optional
  camera-transition windows (`transitions`): tracklets of cameras A and B whose time gap lies outside
  [min, max] seconds are two people.
- Clustering: average-linkage agglomerative clustering cut at a distance threshold (scipy.cluster.hierarchy).
  Neither scipy nor scikit-learn supports cannot-link constraints (scikit-learn's `connectivity` restricts
  merges to neighbours, it cannot forbid them), so cannot-link pairs get the distance `FORBIDDEN`: average linkage
  averages all member pairs, so any cluster holding a forbidden pair has a linkage distance above FORBIDDEN / n^2,
  far above any threshold, and the cut never merges it (the test checks this against a brute-force search).
- `calibrate_threshold`: the threshold maximising tracklet-level IDF1 (length-weighted, the cross-camera IDF1 of
  Ristani et al. when tracklets are pure) on validation tracklets with known identities.
- `OnlineAssociator`: the streaming variant for live sources: each finished tracklet continues the identity of the
  tracklet it stitches to (the same rule, greedy: tracklets come in the order they finish), else joins the
  identity with the smallest average distance (the same linkage, computed from running feature sums) if below the
  threshold and not forbidden, else opens a new identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import squareform

from ..errors import ReIDError

FORBIDDEN = 1e12  # distance given to cannot-link pairs (see the module docstring)
INELIGIBLE = 1e6   # assignment cost of a pair that may not be stitched
DEFAULT_THRESHOLD = 0.35  # cosine distance; calibrated per model by `calibrate_threshold` (docs/video.md)
DEFAULT_RERANK_THRESHOLD = 0.6  # on the k-reciprocal scale
DEFAULT_STITCH_SECONDS = 0.0  # off: on the multi-camera benchmark it joined wrong tracklets (docs/benchmarks/video.md)
STITCH_APPEARANCE_WEIGHT = 0.25  # tie-breaker only: a crop change must not prevent a stitch


@dataclass(frozen=True)
class AssociationConfig:
    """How tracklets become identities. `threshold` is the largest average-linkage distance merged (cosine,
    or the re-ranked distance when `rerank`). `transitions` maps a camera pair (a, b) (camera indices, either
    order) to the (min, max) seconds allowed between one tracklet's end and the other's start."""

    threshold: float = DEFAULT_THRESHOLD
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    transitions: Mapping[tuple[int, int], tuple[float, float]] = field(default_factory=dict)
    stitch_seconds: float = DEFAULT_STITCH_SECONDS  # 0: no stitching
    stitch_iou: float = 0.3

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold) or self.threshold < 0:
            raise ReIDError(f"association threshold {self.threshold!r}: expected a distance >= 0")
        if not (np.isfinite(self.stitch_seconds) and self.stitch_seconds >= 0):
            raise ReIDError(f"stitch_seconds {self.stitch_seconds!r}: expected seconds >= 0 (0 = no stitching)")
        if not 0.0 < self.stitch_iou <= 1.0:
            raise ReIDError(f"stitch_iou {self.stitch_iou!r}: expected an IoU in (0, 1]")
        for pair, (low, high) in self.transitions.items():
            if low > high:
                raise ReIDError(f"camera transition {pair}: window ({low}, {high}) s has min > max")


@dataclass
class TrackletSet:
    """Tracklets as columns: features (N, D) L2-normalised; cameras (N,) camera index; start/end (N,) seconds;
    lengths (N,) boxes per tracklet (weights of the IDF1 used for calibration); first/last boxes (N, 4) x1, y1, x2,
    y2 of each tracklet's first and last detection (optional: what stitching needs)."""

    features: np.ndarray
    cameras: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    lengths: np.ndarray
    first_boxes: np.ndarray | None = None
    last_boxes: np.ndarray | None = None
    intervals: list[np.ndarray] | None = None  # per tracklet (K, 2) start/end seconds of the runs it was seen in

    @classmethod
    def from_arrays(cls, features: np.ndarray, cameras: Sequence[int], starts: Sequence[float],
                    ends: Sequence[float], lengths: Sequence[int] | None = None,
                    first_boxes: np.ndarray | None = None, last_boxes: np.ndarray | None = None,
                    intervals: Sequence[np.ndarray] | None = None) -> TrackletSet:
        feats = np.asarray(features, dtype=np.float32)
        n = len(feats)
        if feats.ndim != 2:
            raise ReIDError(f"tracklet features: expected (N, D), got shape {feats.shape}")
        if not np.isfinite(feats).all():
            raise ReIDError("tracklet features hold NaN or inf")
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        cols = [np.asarray(c) for c in (cameras, starts, ends, np.ones(n) if lengths is None else lengths)]
        if any(len(c) != n for c in cols):
            raise ReIDError(f"tracklets: {n} features but columns of lengths {[len(c) for c in cols]}")
        cams, t0, t1, lens = cols
        if (t1 < t0).any():
            raise ReIDError(f"tracklet {int(np.argmax(t1 < t0))}: ends before it starts")
        if (first_boxes is None) != (last_boxes is None):
            raise ReIDError("tracklets: first_boxes and last_boxes come together (both or neither)")
        if first_boxes is not None:
            first_boxes, last_boxes = (np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in (first_boxes,
                                                                                                 last_boxes))
            if len(first_boxes) != n or len(last_boxes) != n:
                raise ReIDError(f"tracklets: {n} features but {len(first_boxes)} first and {len(last_boxes)} last "
                                "boxes")
        if intervals is not None:
            intervals = [np.asarray(k, dtype=np.float64).reshape(-1, 2) for k in intervals]
            if len(intervals) != n:
                raise ReIDError(f"tracklets: {n} features but intervals for {len(intervals)}")
            if any(len(k) == 0 or (k[:, 1] < k[:, 0]).any() for k in intervals):
                raise ReIDError("tracklets: every tracklet needs at least one interval, each with start <= end")
        return cls(feats / np.maximum(norms, 1e-12), cams.astype(np.int64), t0.astype(np.float64),
                   t1.astype(np.float64), lens.astype(np.float64), first_boxes, last_boxes, intervals)

    def __len__(self) -> int:
        return len(self.features)


# ------------------------------------------------------------------------------------------ distances

def cosine_distances(features: np.ndarray) -> np.ndarray:
    """(N, N) 1 - cos of L2-normalised rows, clipped to [0, 2], zero diagonal."""
    d = np.clip(1.0 - features.astype(np.float64) @ features.T.astype(np.float64), 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def reranked_distances(features: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranked (N, N) distances of tracklets against themselves (symmetrised; every tracklet is
    both query and gallery). k1/k2 are capped at N - 1 for small sets; fewer than 3 tracklets: cosine."""
    from ..rerank import re_ranking

    n = len(features)
    if n < 3:
        return cosine_distances(features)
    euclid = np.sqrt(2.0 * cosine_distances(features)).astype(np.float32)  # L2 of unit vectors
    k1 = min(k1, n - 1)
    d = re_ranking(euclid, euclid, euclid, k1=k1, k2=max(1, min(k2, k1)), lambda_value=lambda_value)
    d = 0.5 * (d + d.T).astype(np.float64)
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def tracklet_distances(tracklets: TrackletSet, config: AssociationConfig) -> np.ndarray:
    if config.rerank:
        return reranked_distances(tracklets.features, config.k1, config.k2, config.lambda_value)
    return cosine_distances(tracklets.features)


def cannot_link(tracklets: TrackletSet, transitions: Mapping[tuple[int, int], tuple[float, float]] | None = None
                ) -> np.ndarray:
    """(N, N) bool: True where two tracklets cannot be one person. Same camera and overlapping time spans (a
    person is one box per camera at a time); a camera pair with a transition window whose gap is outside it."""
    t = tracklets
    spans = (t.cameras, t.starts, t.ends)
    if t.intervals is None:
        forbidden = forbidden_pairs(spans, spans, transitions)
    else:
        forbidden = forbidden_pairs(spans, spans, transitions, same_camera=False) | seen_together(t)
    np.fill_diagonal(forbidden, False)
    return forbidden


def overlapping(starts_a: np.ndarray, ends_a: np.ndarray, starts_b: np.ndarray, ends_b: np.ndarray) -> np.ndarray:
    """(A, B) bool: closed time ranges [start, end] of group a that meet those of group b."""
    return (starts_a[:, None] <= ends_b[None, :]) & (starts_b[None, :] <= ends_a[:, None])


def seen_together(tracklets: TrackletSet) -> np.ndarray:
    """(N, N) bool: two tracklets of one camera with intersecting intervals (seen at the same time). One
    (K, K) interval comparison per camera, folded onto tracklets by an owner matrix: no loop over pairs."""
    t = tracklets
    n = len(t)
    out = np.zeros((n, n), dtype=bool)
    owner = np.repeat(np.arange(n), [len(k) for k in t.intervals])
    runs = np.concatenate(t.intervals) if n else np.zeros((0, 2))
    for camera in np.unique(t.cameras):
        sel = np.flatnonzero(t.cameras[owner] == camera)
        a = runs[sel]
        meet = overlapping(a[:, 0], a[:, 1], a[:, 0], a[:, 1])
        members = np.unique(owner[sel])
        onehot = (owner[sel][:, None] == members[None, :]).astype(np.float64)  # (K, members)
        out[np.ix_(members, members)] = (onehot.T @ meet.astype(np.float64) @ onehot) > 0
    return out


Spans = tuple[np.ndarray, np.ndarray, np.ndarray]  # camera index, start, end (seconds) per tracklet


def forbidden_pairs(a: Spans, b: Spans, transitions: Mapping[tuple[int, int], tuple[float, float]] | None = None,
                    same_camera: bool = True) -> np.ndarray:
    """(A, B) bool cannot-link block between two groups of tracklets given as (cameras, starts, ends); with
    same_camera=False only the transition windows (the caller compares same-camera tracklets by interval)."""
    (ca, sa, ea), (cb, sb, eb) = ([np.asarray(x) for x in g] for g in (a, b))
    same_cam = ca[:, None] == cb[None, :]
    forbidden = same_cam & overlapping(sa, ea, sb, eb) if same_camera else np.zeros(same_cam.shape, dtype=bool)
    if transitions:
        gap = np.maximum(sa[:, None] - eb[None, :], sb[None, :] - ea[:, None])  # > 0: seconds between the spans
        for (x, y), (low, high) in transitions.items():
            pair = ((ca[:, None] == x) & (cb[None, :] == y)) | ((ca[:, None] == y) & (cb[None, :] == x))
            forbidden |= pair & ~same_cam & ((gap < low) | (gap > high))
    return forbidden


# ---------------------------------------------------------------------------------------- clustering

def cluster_distances(distances: np.ndarray, forbidden: np.ndarray, threshold: float) -> np.ndarray:
    """Average-linkage clusters of a (N, N) distance matrix cut at `threshold`, never joining a forbidden pair.
    Returns labels 1..K numbered in order of first row (so results are stable)."""
    n = len(distances)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.ones(1, dtype=np.int64)
    if n * n * max(threshold, 1.0) * 10 >= FORBIDDEN:
        raise ReIDError(f"{n} tracklets: too many for one linkage (the cannot-link penalty would not hold)")
    d = np.where(forbidden, FORBIDDEN, distances)
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    tree = linkage(squareform(d, checks=False), method="average")
    return _renumber(fcluster(tree, t=threshold, criterion="distance"))


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels 1..K in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return (order[inverse] + 1).astype(np.int64)


# ----------------------------------------------------------------------------------------- stitching

def stitch_links(tracklets: TrackletSet, max_gap: float, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """(predecessors, successors) index arrays: tracklet successors[i] continues predecessors[i] in the same
    camera (starts 0 < gap <= max_gap seconds after it ends, boxes overlap by IoU >= min_iou); one to one."""
    from ..metrics.tracking import box_iou

    t = tracklets
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if t.first_boxes is None or max_gap <= 0 or len(t) < 2:
        return none
    links = [none]
    for camera in np.unique(t.cameras):  # a loop over cameras, not pairs: stitching never crosses cameras
        idx = np.flatnonzero(t.cameras == camera)
        gap = t.starts[idx][None, :] - t.ends[idx][:, None]   # [a, b]: seconds from a's end to b's start
        iou = box_iou(t.last_boxes[idx], t.first_boxes[idx])
        eligible = (gap > 0) & (gap <= max_gap) & (iou >= min_iou)
        if not eligible.any():
            continue
        appearance = np.clip(1.0 - t.features[idx] @ t.features[idx].T, 0.0, 2.0)
        cost = np.where(eligible, 1.0 - iou + STITCH_APPEARANCE_WEIGHT * appearance, INELIGIBLE)
        rows, cols = linear_sum_assignment(cost)
        keep = eligible[rows, cols]
        links.append((idx[rows[keep]], idx[cols[keep]]))
    return np.concatenate([a for a, _ in links]), np.concatenate([b for _, b in links])


def stitch(tracklets: TrackletSet, config: AssociationConfig) -> tuple[TrackletSet, np.ndarray]:
    """Stitched chains as tracklets (features averaged by length, spans joined, lengths summed, the first member's
    first box and the last member's last box) and the chain index (0..C-1) of every tracklet. Without links the
    set comes back as it is, each tracklet its own chain."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(tracklets)
    before, after = stitch_links(tracklets, config.stitch_seconds, config.stitch_iou)
    if len(before) == 0:
        return tracklets, np.arange(n)
    graph = coo_matrix((np.ones(len(before)), (before, after)), shape=(n, n))
    count, chain = connected_components(graph, directed=False)
    chain = _renumber(chain) - 1
    t = tracklets
    summed = np.zeros((count, t.features.shape[1]))
    np.add.at(summed, chain, t.features * t.lengths[:, None])
    starts, ends = np.full(count, np.inf), np.full(count, -np.inf)
    np.minimum.at(starts, chain, t.starts)
    np.maximum.at(ends, chain, t.ends)
    cameras = np.zeros(count, np.int64)
    cameras[chain] = t.cameras
    order = np.lexsort((t.starts, chain))   # members of each chain in time order
    first = order[np.r_[True, chain[order][1:] != chain[order][:-1]]]
    last = order[np.r_[chain[order][1:] != chain[order][:-1], True]]
    intervals = None
    if t.intervals is not None:
        members = np.split(np.argsort(chain, kind="stable"), np.cumsum(np.bincount(chain, minlength=count))[:-1])
        intervals = [np.concatenate([t.intervals[i] for i in group]) for group in members]
    merged = TrackletSet.from_arrays(summed, cameras, starts, ends, np.bincount(chain, t.lengths, count),
                                     t.first_boxes[first], t.last_boxes[last], intervals)
    return merged, chain


def associate(tracklets: TrackletSet, config: AssociationConfig = AssociationConfig()) -> np.ndarray:
    """Global identity (1..K) of every tracklet: stitched within cameras, then clustered."""
    if len(tracklets) == 0:
        return np.zeros(0, dtype=np.int64)
    chains, member_of = stitch(tracklets, config)
    labels = cluster_distances(tracklet_distances(chains, config), cannot_link(chains, config.transitions),
                               config.threshold)
    return _renumber(labels[member_of])


# --------------------------------------------------------------------------------------- calibration

def tracklet_idf1(labels: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> float:
    """IDF1 (percent) of tracklet labels against true identities, each tracklet weighted by its length: the best
    one-to-one matching of predicted to true identities (Hungarian) counts the weight it gets right; with pure
    tracklets this equals the cross-camera IDF1 of Ristani et al. (IDTP over all boxes, predicted = true count)."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(labels) == 0:
        return 0.0
    pred_ids, p = np.unique(labels, return_inverse=True)
    true_ids, t = np.unique(truth, return_inverse=True)
    overlap = np.zeros((len(pred_ids), len(true_ids)))
    np.add.at(overlap, (p, t), w)
    rows, cols = linear_sum_assignment(-overlap)
    return float(100.0 * overlap[rows, cols].sum() / w.sum())


def calibrate_threshold(tracklets: TrackletSet, truth: Sequence[int], config: AssociationConfig = AssociationConfig(),
                        thresholds: Sequence[float] | None = None) -> tuple[float, list[tuple[float, float]]]:
    """The threshold maximising `tracklet_idf1` on validation tracklets with known identities `truth`, and the
    curve [(threshold, IDF1)]. One linkage tree, cut at every candidate (cheap)."""
    truth = np.asarray(truth)
    if len(truth) != len(tracklets):
        raise ReIDError(f"calibration: {len(tracklets)} tracklets but {len(truth)} identities")
    if len(tracklets) < 2:
        raise ReIDError("calibration needs at least 2 tracklets")
    chains, member_of = stitch(tracklets, config)
    if len(chains) < 2:
        return 0.0, [(0.0, tracklet_idf1(np.ones(len(tracklets), np.int64), truth, tracklets.lengths))]
    d = np.where(cannot_link(chains, config.transitions), FORBIDDEN, tracklet_distances(chains, config))
    d = 0.5 * (d + d.T)
    np.fill_diagonal(d, 0.0)
    tree = linkage(squareform(d, checks=False), method="average")
    if thresholds is None:
        heights = np.unique(tree[:, 2][tree[:, 2] < FORBIDDEN / 10])  # every distinct cut (N - 1 at most)
        thresholds = np.concatenate([[0.0], heights])
    curve = [(float(t), tracklet_idf1(fcluster(tree, t=t, criterion="distance")[member_of], truth,
                                      tracklets.lengths)) for t in thresholds]
    best = max(curve, key=lambda c: (c[1], -c[0]))
    return best[0], curve


# ------------------------------------------------------------------------------------------ streaming

class _Rows:
    """A numpy array that grows by doubling its capacity: appends cost O(1) amortised and `view` copies nothing
    (an identity's sums were re-stacked from a list on every add: 563 ms per tracklet at 10^5 tracklets)."""

    def __init__(self, width: int | None, dtype: type) -> None:
        self.width, self.dtype, self.size = width, dtype, 0
        self._data = np.zeros((16,) if width is None else (16, width), dtype=dtype)

    def append(self, row: np.ndarray | float | int) -> None:
        if self.size == len(self._data):
            grown = np.zeros((2 * len(self._data), *self._data.shape[1:]), dtype=self.dtype)
            grown[:self.size] = self._data
            self._data = grown
        self._data[self.size] = row
        self.size += 1

    @property
    def view(self) -> np.ndarray:
        return self._data[:self.size]


class OnlineAssociator:
    """Incremental association for live sources: `add(feature, camera, start, end)` -> global id, at once.

    An identity keeps the sum of its tracklets' features, so the average cosine distance of a new tracklet to
    all its members is 1 - f . sum / n (the same average linkage as the offline clustering, against one side
    that no longer changes). Identities holding a forbidden tracklet (same camera and seen at the same time, or
    outside a transition window) are skipped. Memory: one D-vector per identity, eight numbers per tracklet and
    three per interval, in arrays that grow in place, so an add costs one (identities x D) product and vectorised
    comparisons.
    (k-reciprocal re-ranking needs the whole set, so it is offline only.)"""

    def __init__(self, config: AssociationConfig = AssociationConfig()):
        if config.rerank:
            raise ReIDError("online association does not re-rank (k-reciprocal needs all tracklets); rerank=False")
        self.config = config
        self._sums: _Rows | None = None  # (identities, D), created by the first feature
        self._counts = _Rows(None, np.float64)
        self._cams = _Rows(None, np.int64)
        self._starts = _Rows(None, np.float64)
        self._ends = _Rows(None, np.float64)
        self._labels = _Rows(None, np.int64)
        self._last_boxes = _Rows(4, np.float64)     # NaN: added without boxes (never stitched to)
        self._continued = _Rows(None, np.bool_)     # True: a later tracklet already continues this one
        self._runs = _Rows(2, np.float64)           # every tracklet's intervals (seconds), flattened
        self._run_owner = _Rows(None, np.int64)     # the tracklet of each interval

    @property
    def num_identities(self) -> int:
        return self._counts.size

    def add(self, feature: np.ndarray, camera: int, start: float, end: float,
            first_box: Sequence[float] | None = None, last_box: Sequence[float] | None = None,
            intervals: np.ndarray | None = None) -> int:
        """The global id of a finished tracklet. With its first and last boxes it may continue (stitching, as
        offline) an earlier tracklet of its camera that has no successor yet; otherwise the nearest identity.
        `intervals` (K, 2): the runs of seconds it was seen in (cannot-link as offline); default its span."""
        f = np.asarray(feature, dtype=np.float64).reshape(-1)
        f = f / max(float(np.linalg.norm(f)), 1e-12)
        if self._sums is None:
            self._sums = _Rows(len(f), np.float64)
        elif len(f) != self._sums.width:
            raise ReIDError(f"feature of dimension {len(f)}: the associator holds {self._sums.width}-d features")
        runs = np.asarray([[start, end]] if intervals is None else intervals, np.float64).reshape(-1, 2)
        clash = self._clash(camera, start, end, runs)
        gid = self._continued_identity(f, camera, start, first_box, clash)
        if gid is None:
            gid = self._best_identity(f, clash)
        if gid is None:
            self._sums.append(f)
            self._counts.append(1.0)
            gid = self._counts.size
        else:
            self._sums.view[gid - 1] += f
            self._counts.view[gid - 1] += 1.0
        for rows, value in ((self._cams, camera), (self._starts, start), (self._ends, end), (self._labels, gid),
                            (self._last_boxes, np.full(4, np.nan) if last_box is None else last_box),
                            (self._continued, False)):
            rows.append(value)
        for run in runs:
            self._runs.append(run)
            self._run_owner.append(self._cams.size - 1)
        return gid

    def _clash(self, camera: int, start: float, end: float, runs: np.ndarray) -> np.ndarray:
        """(tracklets so far,) bool: those this one may not share an identity with (seen at the same time in its
        camera, or outside a transition window)."""
        if self._cams.size == 0:
            return np.zeros(0, dtype=bool)
        spans = (self._cams.view, self._starts.view, self._ends.view)
        clash = forbidden_pairs(([camera], [start], [end]), spans, self.config.transitions, same_camera=False)[0]
        stored = self._runs.view
        meet = overlapping(runs[:, 0], runs[:, 1], stored[:, 0], stored[:, 1]).any(axis=0)
        owners = self._run_owner.view[meet]
        clash[owners[self._cams.view[owners] == camera]] = True
        return clash

    def _continued_identity(self, f: np.ndarray, camera: int, start: float, first_box: Sequence[float] | None,
                            clash: np.ndarray) -> int | None:
        """The identity of the tracklet this one stitches to (see `stitch_links`), or None."""
        from ..metrics.tracking import box_iou

        cfg = self.config
        if first_box is None or cfg.stitch_seconds <= 0 or self._cams.size == 0:
            return None
        gap = start - self._ends.view
        near = np.flatnonzero((self._cams.view == camera) & (gap > 0) & (gap <= cfg.stitch_seconds)
                              & ~self._continued.view)
        if len(near) == 0:
            return None
        iou = box_iou(self._last_boxes.view[near], np.asarray(first_box, np.float64))[:, 0]
        near, iou = near[iou >= cfg.stitch_iou], iou[iou >= cfg.stitch_iou]
        if len(near) == 0:
            return None
        labels = self._labels.view[near]
        # a stitch joins the predecessor's identity: never one that holds a tracklet this one may not join
        allowed = ~np.isin(labels, self._labels.view[clash])
        if not allowed.any():
            return None
        near, iou, labels = near[allowed], iou[allowed], labels[allowed]
        mean_distance = 1.0 - (self._sums.view[labels - 1] @ f) / self._counts.view[labels - 1]
        best = int(np.argmin(1.0 - iou + STITCH_APPEARANCE_WEIGHT * mean_distance))
        self._continued.view[near[best]] = True
        return int(labels[best])

    def _best_identity(self, f: np.ndarray, clash: np.ndarray) -> int | None:
        if self._sums is None or self._sums.size == 0:
            return None
        mean_distance = 1.0 - (self._sums.view @ f) / self._counts.view
        if clash.any():
            mean_distance[np.unique(self._labels.view[clash]) - 1] = np.inf
        best = int(np.argmin(mean_distance))
        return best + 1 if mean_distance[best] <= self.config.threshold else None
