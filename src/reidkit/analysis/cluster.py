"""N:N clustering: group unlabelled person crops into identities.

embeddings -> (camera-aware: each camera's mean embedding removed) -> k nearest neighbours of every crop, found
tile by tile (never an n x n matrix) -> k-reciprocal encodings and Jaccard distances on the kNN edges only
(Zhong et al. 2017, the machinery of `reidkit.rerank`) -> scikit-learn DBSCAN on that sparse distance matrix
(metric="precomputed": pairs outside the graph are "far"). The DBSCAN radius (and min_samples, k1, whether the
camera correction is on) are chosen on labelled validation identities by `choose_cluster_params` -- `reidkit
calibrate` stores them with the model, so `reidkit cluster` defaults to the validated values.

Why DBSCAN on Jaccard distances: it is the clustering of the unsupervised re-ID line of work (SpCL, cluster
contrast), it needs no number of identities, leaves doubtful crops unassigned (-1) instead of forcing them into a
cluster, and scikit-learn runs it on a sparse precomputed matrix in O(edges).
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..data.images import image_array, is_image_name
from ..errors import ConfigError, DataError, ModelError

# The scores live in reidkit.metrics.clustering; re-exported here for code written against the first version.
from ..metrics.clustering import bcubed_f, clustering_scores  # noqa: F401

# The k-reciprocal machinery of reidkit.rerank, reused rather than copied (one implementation per idea).
from ..rerank.methods import FeatureDistances, exact_squared_distances, k_reciprocal_neighbours, stable_prefix
from ..utils import atomic_path, atomic_write_text, progress

logger = logging.getLogger(__name__)

MAX_SHEETS = 100  # contact sheets written (the largest clusters); the CSV always lists every crop
MAX_PER_SHEET = 48  # crops shown per sheet (8 x 6)
THUMB = (128, 64)  # thumbnail height, width
_EDGE_BLOCK = 1 << 15  # kNN edges whose Jaccard similarity is computed at once
_CAMERA_RE = re.compile(r"_c(\d+)")
# Above this many crops the neighbour candidates come from a PCA projection to REDUCED_DIM dimensions (the exact
# scan in 1280-d takes ~18 min for 100k crops on 2 busy cores); docs/verify_cluster.md gives its neighbour recall.
EXACT_LIMIT = 20_000
REDUCED_DIM = 128
_MAX_SAMPLE = 2048  # items on which the large-n path estimates each item's largest distance and the PCA


@dataclass
class ClusterParams:
    """eps: DBSCAN radius on the edge distance; min_samples: DBSCAN core size (the crop included); k1, k2:
    k-reciprocal neighbourhood and query-expansion sizes; camera_aware: remove each camera's mean embedding;
    lambda_value: weight of the original (normalised squared) distance in the edge distance, as in re-ranking's
    final distance (0 = Jaccard only); same_camera_penalty: added to the squared distance of two crops of the same
    camera before the k-reciprocal sets are formed (camera-aware neighbours; 0 = off, needs known cameras);
    method: "dbscan" (eps = radius) or "average" (average linkage on the graph cut at eps; min_samples unused)."""

    eps: float = 0.55
    min_samples: int = 2
    k1: int = 20
    k2: int = 6
    camera_aware: bool = True
    lambda_value: float = 0.0
    same_camera_penalty: float = 0.0
    method: str = "dbscan"


DEFAULT_PARAMS = ClusterParams()  # used only without a stored calibration (a warning says so)


# ------------------------------------------------------------------------------------------------ distances

def camera_centred(features: np.ndarray, camids: np.ndarray | None) -> np.ndarray:
    """Subtract each camera's mean embedding and re-normalise: removes what a camera adds to all its crops
    (background, light), so the nearest neighbours are not all from the same camera. No-op without cameras."""
    if camids is None or np.unique(camids).size < 2:
        return features
    out = features.astype(np.float32, copy=True)
    for cam in np.unique(camids):
        rows = camids == cam
        out[rows] -= out[rows].mean(axis=0)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@dataclass
class JaccardGraph:
    """Unordered kNN edges (first < second) with their k-reciprocal Jaccard distance and their original distance
    (squared, normalised by the first item's largest one: re-ranking's original term)."""

    num_items: int
    first: np.ndarray
    second: np.ndarray
    jaccard: np.ndarray
    original: np.ndarray | None = None

    def distances(self, lambda_value: float = 0.0) -> np.ndarray:
        """Edge distances (1 - lambda) * jaccard + lambda * original."""
        return (1.0 - lambda_value) * self.jaccard + lambda_value * self.original if lambda_value else self.jaccard

    def matrix(self, lambda_value: float = 0.0) -> sp.csr_array:
        """Symmetric sparse `distances`; stored values get +1e-9 so a distance 0 is not an absent entry."""
        d = self.distances(lambda_value) + 1e-9
        rows, cols = np.r_[self.first, self.second], np.r_[self.second, self.first]
        return sp.csr_array((np.r_[d, d], (rows, cols)), shape=(self.num_items, self.num_items))


SMALL_SET_RATIO = 6  # k1 <= n // 6 (see neighbourhood_sizes)


def neighbourhood_sizes(n: int, k1: int, k2: int) -> tuple[int, int]:
    """k1, k2 shrunk for small sets: k1 <= cap = max(2, n // 6), k2 <= max(1, cap // 3).

    The k-reciprocal encoding presumes an identity holds about as many crops as k1: with k1 = 20 in a folder of
    19 crops every crop is in every other's reciprocal set, all Jaccard distances collapse and one cluster comes
    out at any radius; and the k2 query expansion averages each encoding with its k2 nearest crops, which for
    2-3 crops per person reaches into other people (measured: 6 people x 3 crops merged pairwise with k2 = 6 at
    k1 = 4, recovered exactly with k2 <= 2). n // 6 keeps the neighbourhood to a sixth of the set (19 crops ->
    k1 = 3, k2 = 1; CUHK03-NP's ~720-crop halves and anything larger keep the chosen values) and k2's cap keeps
    the paper's k1 : k2 ratio (20 : 6). Identities much smaller than k1 in a LARGE set remain a limit of the method
    (docs/verify_cluster.md)."""
    cap = max(2, n // SMALL_SET_RATIO)
    return max(1, min(k1, n - 1, cap)), max(1, min(k2, n, max(1, cap // 3)))


def jaccard_graph(features: np.ndarray, k1: int = 20, k2: int = 6, show_progress: bool = False,
                  tile: int = 4096, exact_limit: int = EXACT_LIMIT, camids: np.ndarray | None = None,
                  same_camera_penalty: float = 0.0) -> JaccardGraph:
    """k-reciprocal Jaccard distances (Zhong et al. 2017, lambda = 0) on the edges of the k1-nearest-neighbour graph.

    Neighbours, their euclidean distances and the sparse encodings come from `reidkit.rerank`'s feature-based
    k-reciprocal code (the same numbers as `re_ranking_features`), so no n x n matrix is held: memory is
    O(n * (k1 * k2 + dim)) plus one tile x tile block. Above `exact_limit` crops the neighbour candidates
    come from a PCA projection (`_ReducedDistances`), re-sorted on exact distances. With cameras and a
    `same_camera_penalty`, same-camera squared distances are inflated before the k-reciprocal sets are formed
    (`_CameraPenalised`).
    """
    n = len(features)
    if n < 2:
        raise DataError(f"clustering needs at least 2 crops, got {n}")
    k1, k2 = neighbourhood_sizes(n, k1, k2)
    feats = np.ascontiguousarray(features, dtype=np.float32)
    with torch.no_grad():
        large = n > exact_limit and feats.shape[1] > REDUCED_DIM
        source = (_ReducedDistances if large else FeatureDistances)(feats, tile, show_progress)
        if same_camera_penalty and camids is not None and np.unique(camids).size > 1:
            source = _CameraPenalised(source, np.asarray(camids), same_camera_penalty)
        ranks, encoding = k_reciprocal_neighbours(feats, k1, k2, source=source)
    rows = np.repeat(np.arange(n), k1 + 1)
    cols = ranks[:, :k1 + 1].ravel()
    keep = rows != cols
    low, high = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep]
    keys = np.unique(low * n + high)
    first, second = keys // n, keys % n
    return JaccardGraph(n, first, second, _edge_jaccard(encoding, first, second, show_progress),
                        source.normalised_pairs(first, second))


class _CameraPenalised:
    """Camera-aware neighbours: a `NeighbourSource` whose squared distances get `penalty` added for two crops of
    the same camera (so a person's cross-camera crops enter its k-reciprocal set instead of look-alike crops of
    the same camera). Candidates are the base source's 3 x width nearest, re-sorted on the penalised distances;
    the normalisation keeps the base source's per-item maxima."""

    def __init__(self, base: FeatureDistances | _ReducedDistances, camids: np.ndarray, penalty: float) -> None:
        self.base, self.camids, self.penalty = base, camids, float(penalty)

    def scan(self, width: int, query_gallery: np.ndarray) -> np.ndarray:
        candidates = self.base.scan(min(len(self.camids), 3 * width), query_gallery)
        rows = np.repeat(np.arange(len(candidates)), candidates.shape[1])
        values = self.normalised_pairs(rows, candidates.ravel()).reshape(candidates.shape)
        values[candidates == np.arange(len(candidates))[:, None]] = -1.0  # each item stays its own nearest
        return stable_prefix(candidates, values, width)

    def normalised_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        same = (self.camids[rows] == self.camids[cols]) & (rows != cols)
        return self.base.normalised_pairs(rows, cols) + self.penalty * same / self.base.column_max[rows]


class _ReducedDistances:
    """The interface of rerank's `FeatureDistances` (scan -> sorted neighbour ranks; normalised_pairs) for large
    n: candidates from the exact tile scan on a PCA projection to `REDUCED_DIM` dimensions (n^2 work, but
    dim / REDUCED_DIM times less of it), re-sorted on the exact full-dimension distances. The normalisation by each
    item's largest squared distance (the public k-reciprocal code's column maximum) is estimated on a random
    sample of `_MAX_SAMPLE` items: it only scales the Gaussian weights of the encoding."""

    def __init__(self, features: np.ndarray, tile: int, show_progress: bool) -> None:
        self.features, self.tile, self.show_progress = features, tile, show_progress
        rng = np.random.default_rng(0)
        sample = torch.from_numpy(features[rng.choice(len(features), min(_MAX_SAMPLE, len(features)),
                                                      replace=False)])
        self.column_max = np.empty(len(features), dtype=np.float64)
        sample_norms = (sample * sample).sum(dim=1)
        for start in range(0, len(features), 8192):  # squared distances by one matmul per block
            rows = torch.from_numpy(features[start:start + 8192])
            block = (rows * rows).sum(dim=1, keepdim=True) + sample_norms - 2.0 * rows @ sample.T
            self.column_max[start:start + len(block)] = block.amax(dim=1).double().numpy()
        torch.manual_seed(0)  # randomised SVD: the same projection on every run
        _, _, vectors = torch.svd_lowrank(sample - sample.mean(dim=0), q=REDUCED_DIM, niter=3)
        self.projection = vectors  # (dim, REDUCED_DIM): the leading principal axes

    def scan(self, width: int, _unused: np.ndarray) -> np.ndarray:
        n = len(self.features)
        reduced = np.concatenate([(torch.from_numpy(self.features[s:s + 8192]) @ self.projection).numpy()
                                  for s in range(0, n, 8192)])
        candidates = self._candidates(reduced, min(n, 2 * width))
        ranks = np.empty((n, width), dtype=np.int64)
        for start in range(0, n, self.tile):
            block = candidates[start:start + self.tile]
            rows = np.repeat(np.arange(start, start + len(block)), block.shape[1])
            exact = exact_squared_distances(self.features, rows, block.ravel()).reshape(block.shape)
            ranks[start:start + len(block)] = stable_prefix(block, exact, width)
        return ranks

    def _candidates(self, reduced: np.ndarray, width: int) -> np.ndarray:
        """faiss IVF-Flat on the projection (4 sqrt(n) lists, 24 probed) when faiss is installed, else the exact
        tile scan on the projection."""
        try:
            import faiss
        except ImportError:  # optional ([deploy] extra)
            return FeatureDistances(reduced, self.tile, self.show_progress).scan(width, np.empty((0, len(reduced)),
                                                                                                 np.float32))
        n, dim = reduced.shape
        lists = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists, faiss.METRIC_L2)
        index.train(reduced[np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False)])
        index.add(reduced)
        index.nprobe = 24
        out = np.empty((n, width), dtype=np.int64)
        for start in progress(range(0, n, 8192), desc="clustering: neighbours", enabled=self.show_progress):
            out[start:start + 8192] = index.search(reduced[start:start + 8192], width)[1]
        missing = out < 0  # fewer than `width` items in the probed lists: repeat the item itself
        out[missing] = np.nonzero(missing)[0]
        return out

    def normalised_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return exact_squared_distances(self.features, rows, cols) / self.column_max[rows]


def _edge_jaccard(encoding: sp.csr_array, first: np.ndarray, second: np.ndarray,
                  show_progress: bool) -> np.ndarray:
    """1 - s / (2 - s), s = sum_k min(V[i, k], V[j, k]), for the edge list, a block of edges at a time."""
    out = np.empty(len(first), dtype=np.float64)
    starts = range(0, len(first), _EDGE_BLOCK)
    for start in progress(starts, desc="clustering: jaccard", enabled=show_progress):
        rows_i = encoding[first[start:start + _EDGE_BLOCK]]
        rows_j = encoding[second[start:start + _EDGE_BLOCK]]
        shared = np.asarray(rows_i.minimum(rows_j).sum(axis=1)).ravel()
        out[start:start + len(shared)] = 1.0 - shared / (2.0 - shared)
    return out


def dbscan_labels(graph: JaccardGraph, eps: float, min_samples: int, lambda_value: float = 0.0) -> np.ndarray:
    """scikit-learn DBSCAN on the sparse precomputed distances; -1 = unassigned (noise). min_samples = 1 is
    single linkage cut at eps (every crop is a core)."""
    from sklearn.cluster import DBSCAN

    matrix = graph.matrix(lambda_value)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(matrix).labels_


def average_linkage_labels(graph: JaccardGraph, threshold: float, lambda_value: float = 0.0) -> np.ndarray:
    """Average linkage on the sparse graph, cut at `threshold`; crops left alone are unassigned (-1).

    Pairs without an edge count as distance 1 (the Jaccard maximum: no shared k-reciprocal neighbour), so the
    result equals scipy's average linkage (`fcluster(..., criterion="distance")`) on the dense matrix holding the
    edge distances and 1 elsewhere -- without that n x n matrix (scipy and scikit-learn need it dense; sklearn's
    `connectivity` averages over edges only and still wants a dense precomputed X). Greedy merging of the closest
    pair with a heap: cluster averages are 1 - G / (|P| |Q|), G = sum over edges between P and Q of (1 - d).
    """
    import heapq

    n = graph.num_items
    gain = 1.0 - graph.distances(lambda_value)
    links: list[dict[int, float] | None] = [{} for _ in range(n)]
    for a, b, g in zip(graph.first.tolist(), graph.second.tolist(), gain.tolist(), strict=True):
        links[a][b] = links[b][a] = g
    size, parent = [1] * n, list(range(n))
    heap = [(1.0 - g, a, b) for a, b, g in zip(graph.first.tolist(), graph.second.tolist(), gain.tolist(),
                                               strict=True)]
    heapq.heapify(heap)
    while heap and heap[0][0] <= threshold:
        average, a, b = heapq.heappop(heap)
        if links[a] is None or links[b] is None or b not in links[a] \
                or 1.0 - links[a][b] / (size[a] * size[b]) != average:
            continue  # stale: one side was merged since this entry was pushed
        if len(links[a]) < len(links[b]):
            a, b = b, a  # merge the smaller neighbour list into the larger
        keep, gone = links[a], links[b]
        del keep[b], gone[a]
        for c, g in gone.items():
            del links[c][b]
            keep[c] = links[c][a] = keep.get(c, 0.0) + g
        size[a] += size[b]
        parent[b], links[b] = a, None
        for c, g in keep.items():
            heapq.heappush(heap, (1.0 - g / (size[a] * size[c]), min(a, c), max(a, c)))
    roots = np.array(parent)
    while True:  # path halving to the root of every crop
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            break
        roots = nxt
    _, labels, counts = np.unique(roots, return_inverse=True, return_counts=True)
    return np.where(counts[labels] > 1, labels, -1)


def cluster_features(features: np.ndarray, params: ClusterParams = DEFAULT_PARAMS,
                     camids: np.ndarray | None = None, show_progress: bool = False) -> np.ndarray:
    """Cluster labels (0..C-1, -1 unassigned) of L2-normalised features; clusters numbered by size, largest 0."""
    feats = camera_centred(features, camids) if params.camera_aware else features
    graph = jaccard_graph(feats, params.k1, params.k2, show_progress, camids=camids,
                          same_camera_penalty=params.same_camera_penalty)
    # DBSCAN's core size shrinks with k1 too: a validated min_samples of 4 would leave every person with 2-3
    # crops of a small folder unassigned.
    k1 = neighbourhood_sizes(len(feats), params.k1, params.k2)[0]
    if params.method == "average":
        return relabel_by_size(average_linkage_labels(graph, params.eps, params.lambda_value))
    return relabel_by_size(dbscan_labels(graph, params.eps, min(params.min_samples, max(2, k1 // 2)),
                                         params.lambda_value))


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    out = np.full_like(labels, -1)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    mapping = np.full(labels.max() + 1 if labels.size and labels.max() >= 0 else 0, -1)
    mapping[order] = np.arange(order.size)
    out[labels >= 0] = mapping[labels[labels >= 0]]
    return out


# ------------------------------------------------------------------------------------------------ tuning

EPS_GRID = tuple(np.round(np.arange(0.30, 0.951, 0.025), 3))


def choose_cluster_params(features: np.ndarray, pids: np.ndarray, camids: np.ndarray | None,
                          eps_grid: Sequence[float] = EPS_GRID, min_samples_grid: Sequence[int] = (1, 2, 3, 4),
                          k1_grid: Sequence[int] = (10, 20), k2: int = 6,
                          lambda_grid: Sequence[float] = (0.0, 0.2), penalty_grid: Sequence[float] = (0.0, 0.3),
                          methods: Sequence[str] = ("dbscan", "average"),
                          ) -> tuple[ClusterParams, list[dict[str, Any]]]:
    """The parameters with the best B-cubed F on these labelled identities, and every tried setting with its
    scores, best first. Meant for identities other than the ones the clustering will be used on. The camera
    options (centring, same-camera penalty) are tried only when cameras are given."""
    rows = []
    cameras = camids is not None and np.unique(camids).size > 1
    for camera_aware, penalty in itertools.product((True, False) if cameras else (False,),
                                                   penalty_grid if cameras else (0.0,)):
        feats = camera_centred(features, camids) if camera_aware else features
        for k1 in k1_grid:
            graph = jaccard_graph(feats, k1, k2, camids=camids, same_camera_penalty=penalty)
            settings = [(m, ms) for m in methods for ms in (min_samples_grid if m == "dbscan" else (1,))]
            for lam, (method, min_samples), eps in itertools.product(lambda_grid, settings, eps_grid):
                params = ClusterParams(float(eps), int(min_samples), int(k1), k2, camera_aware, float(lam),
                                       float(penalty), method)
                labels = (average_linkage_labels(graph, params.eps, params.lambda_value) if method == "average"
                          else dbscan_labels(graph, params.eps, params.min_samples, params.lambda_value))
                rows.append({**asdict(params), "bcubed_f": bcubed_f(pids, labels), "labels": labels})
    rows.sort(key=lambda r: -r["bcubed_f"])
    best = rows[0]
    best.update(clustering_scores(pids, best.pop("labels")))
    for row in rows[1:]:
        del row["labels"]
    return ClusterParams(**{k: best[k] for k in asdict(DEFAULT_PARAMS)}), rows


# ------------------------------------------------------------------------------------------------ the verb

@dataclass
class ClusterResult:
    """paths[i] belongs to labels[i] (-1 unassigned); where the outputs went and where the parameters came from."""

    paths: list[str]
    labels: np.ndarray
    params: ClusterParams
    params_source: str
    num_clusters: int
    num_unassigned: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    csv: Path | None = None
    sheets: list[Path] = field(default_factory=list)
    export: Path | None = None
    cameras_known: bool = False


def image_paths(paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The images of a folder (recursively, sorted) or a list of paths as given."""
    if isinstance(paths_or_folder, (str, os.PathLike)):
        folder = Path(paths_or_folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder" + ("" if folder.exists() else " (does not exist)"))
        paths = sorted(str(p) for p in folder.rglob("*") if p.is_file() and is_image_name(p.name))
        where = str(folder)
    else:
        paths, where = [os.fspath(p) for p in paths_or_folder], "the image list"
    if len(paths) < 2:
        raise DataError(f"{where}: holds {len(paths)} image(s); clustering needs at least 2 crops")
    return paths


def cameras_from_names(paths: Sequence[str]) -> np.ndarray | None:
    """Camera ids from `_c<N>` in every file name (Market/Duke/MSMT naming), or None if any name lacks one."""
    found = [_CAMERA_RE.search(os.path.basename(p)) for p in paths]
    if not all(found):
        return None
    return np.array([int(m.group(1)) for m in found], dtype=np.int64)


def resolve_params(model: str | os.PathLike, threshold: float | None, calibrated: bool,
                   record: dict[str, Any] | None) -> tuple[ClusterParams, str]:
    stored = (record or {}).get("cluster")
    if calibrated and stored is None:
        raise ConfigError(f"--calibrated: {model} has no stored clustering threshold (run `reidkit calibrate "
                          "--model MODEL --data VALIDATION_FOLDER` with an embedding model first)")
    if stored is not None:
        # calibrations stored before lambda_value / same_camera_penalty existed get their off values
        params = ClusterParams(**{k: stored.get(k, v) for k, v in asdict(DEFAULT_PARAMS).items()})
        source = (f"validated: chosen by `reidkit calibrate` on {stored.get('identities', '?')} identities of "
                  f"{stored.get('chosen_on', '?')} (B-cubed F {stored.get('bcubed_f', float('nan')):.3f})")
    else:
        params, source = ClusterParams(**asdict(DEFAULT_PARAMS)), "built-in default (not validated for this model)"
    if threshold is not None:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"--threshold {threshold}: a Jaccard distance radius must be in (0, 1)")
        params.eps, source = float(threshold), "given on the command line"
    return params, source


def cluster(paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike], model: str | os.PathLike,
            out: str | os.PathLike | None = None, threshold: float | None = None, calibrated: bool = False,
            export: bool = False, device: str = "auto", batch_size: int = 64, flip: bool | None = None,
            show_progress: bool = False) -> ClusterResult:
    """Cluster the crops of a folder (or a list of paths) into identities with an embedding model.

    out: folder for clusters.csv (path,cluster; -1 unassigned), sheets/cluster_*.png (the `MAX_SHEETS` largest
    clusters, up to `MAX_PER_SHEET` crops each) and, with export=True, market/bounding_box_train/ (pid = cluster
    id + 1, unassigned crops left out). Unreadable images are skipped, counted, warned about and listed in
    unreadable.txt.
    """
    from .calibration import load_calibration
    from .verify import EmbeddingScorer, embed_images, model_task

    paths = image_paths(paths_or_folder)
    if model_task(model) == "pair":
        raise ModelError(f"{model}: a pair network cannot cluster: it gives no embedding, only a score per pair "
                         f"(clustering {len(paths)} crops would take {len(paths) * (len(paths) - 1) // 2} pair "
                         "passes); use an embedding model")
    record = load_calibration(model)
    params, source = resolve_params(model, threshold, calibrated, record)
    use_flip = bool((record or {}).get("flip", False)) if flip is None else flip
    scorer = EmbeddingScorer(model, device=device, flip=use_flip, batch_size=batch_size)
    features, ok, bad = embed_images(scorer.extractor, paths, show_progress, skip_unreadable=True)
    if bad:
        logger.warning("%d unreadable image(s) skipped (listed in unreadable.txt), e.g. %s", len(bad), bad[0][1])
    kept = [p for p, good in zip(paths, ok, strict=True) if good]
    if len(kept) < 2:
        raise DataError(f"only {len(kept)} readable image(s) of {len(paths)}; clustering needs at least 2")
    camids = cameras_from_names(kept)
    labels = cluster_features(features, params, camids, show_progress)
    result = ClusterResult(kept, labels, params, source, int(np.unique(labels[labels >= 0]).size),
                           int(np.sum(labels < 0)), bad, cameras_known=camids is not None)
    if out is not None:
        write_outputs(result, Path(out), export, camids, show_progress)
    return result


# ------------------------------------------------------------------------------------------------ outputs

def write_outputs(result: ClusterResult, out: Path, export: bool, camids: np.ndarray | None,
                  show_progress: bool = False) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "cluster"])
    writer.writerows(zip(result.paths, result.labels.tolist(), strict=True))
    result.csv = out / "clusters.csv"
    atomic_write_text(buffer.getvalue(), result.csv)
    if result.unreadable:
        atomic_write_text("".join(f"{reason}\n" for _, reason in result.unreadable), out / "unreadable.txt")
    result.sheets = contact_sheets(result.paths, result.labels, out / "sheets", show_progress)
    if export:
        result.export = export_market(result.paths, result.labels, camids, out / "market", show_progress)


def contact_sheets(paths: Sequence[str], labels: np.ndarray, folder: Path, show_progress: bool = False
                   ) -> list[Path]:
    """One PNG per cluster (largest first, at most `MAX_SHEETS`), up to `MAX_PER_SHEET` thumbnails each."""
    from PIL import Image, ImageDraw

    written = []
    clusters = [c for c in range(int(labels.max(initial=-1)) + 1)][:MAX_SHEETS]  # labels are numbered by size
    columns = 8
    for c in progress(clusters, desc="contact sheets", enabled=show_progress):
        members = np.flatnonzero(labels == c)
        shown = members[:MAX_PER_SHEET]
        rows = -(-len(shown) // columns)
        height, width = THUMB
        sheet = Image.new("RGB", (columns * (width + 4) + 4, rows * (height + 4) + 24), "white")
        draw = ImageDraw.Draw(sheet)
        more = f" (first {len(shown)} shown)" if len(members) > len(shown) else ""
        draw.text((4, 4), f"cluster {c}: {len(members)} crops{more}", fill="black")
        for k, i in enumerate(shown):
            try:
                thumb = Image.fromarray(image_array(paths[i], THUMB))
            except DataError:  # a file that vanished since embedding: leave its cell blank
                continue
            sheet.paste(thumb, (4 + (k % columns) * (width + 4), 24 + (k // columns) * (height + 4)))
        path = folder / f"cluster_{c:05d}.png"
        with atomic_path(path) as tmp:
            sheet.save(tmp, format="PNG")
        written.append(path)
    return written


def export_market(paths: Sequence[str], labels: np.ndarray, camids: np.ndarray | None, root: Path,
                  show_progress: bool = False) -> Path:
    """Copy clustered crops to root/bounding_box_train/ as `<pid>_c<cam>s1_<index>_00<ext>` with pid = cluster + 1
    (Market pid 0 means distractor); unassigned crops are not exported. Cameras default to 1 when unknown."""
    folder = root / "bounding_box_train"
    folder.mkdir(parents=True, exist_ok=True)
    for i in progress(np.flatnonzero(labels >= 0), desc="exporting", enabled=show_progress):
        cam = int(camids[i]) if camids is not None else 1
        target = folder / f"{int(labels[i]) + 1:05d}_c{max(cam, 1)}s1_{i:06d}_00{Path(paths[i]).suffix.lower()}"
        with atomic_path(target) as tmp:
            shutil.copyfile(paths[i], tmp)
    return root
