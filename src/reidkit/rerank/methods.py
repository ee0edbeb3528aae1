"""Re-ranking of query-gallery distances.

* k-reciprocal encoding (Zhong et al., CVPR 2017):
  - `re_ranking` takes the three distance matrices and returns the same numbers as the authors' public
    Python function (python-version/re_ranking_ranklist.py, also torchreid's `utils/rerank.py`), vectorised;
  - `re_ranking_features` computes the same result from features without ever holding an (n, n) matrix
    (n = queries + gallery), so it scales to MSMT17-size problems;
  - `k_reciprocal_neighbours` gives the neighbour ranks and the sparse encodings themselves (for graph methods
    such as `reidkit.analysis.cluster`), from the exact tile scan or any `NeighbourSource`.
* alpha-weighted average query expansion and database-side augmentation (`query_expansion`).
* SSM: diffusion on a kNN affinity graph with the tensor-product update (`ssm_diffusion`, `ssm_rerank`).
* the registered re-rankers `k_reciprocal`, `aqe` and `ssm` (rerank.base) wrap them with validated parameters.

Quirks of the public k-reciprocal function that both k-reciprocal functions reproduce (docs/reranking.md):

1. Input distances are **squared** (`np.power(d, 2)`), then rounded to float32. Pass plain euclidean
   distances, as the authors do, not already-squared ones.
2. The (n, n) matrix is divided by its **column maxima** and transposed, so row i of the "original distance"
   is d_ij ** 2 / max_k d_ki ** 2. The final `lambda_value * original` term uses this normalisation.
3. The half-size neighbourhood used to expand the k-reciprocal set has `int(np.around(k1 / 2))` neighbours:
   numpy rounds halves to even, so k1 = 5 gives 2 and k1 = 7 gives 4.
4. Local query expansion averages the encodings of the `k2` nearest items (including the item itself) and is
   skipped when k2 == 1; k1 and k2 must be integers (the public code slices with them).
5. The Jaccard distance of a query is computed against all n items, then the gallery columns are kept.

Exact ties between distances are broken by item index here; the public code's unstable quicksort may order
tied items differently, so results can differ only where distances tie exactly (e.g. duplicate images).
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from ..distance import compute_distance_matrix
from ..errors import ConfigError, DataError
from ..utils import progress
from .base import Reranker, RerankInputs, build_reranker, register

# Extra candidates kept by the float32 top-k pass and re-sorted on exact float64 distances: float32 rounding
# (~1e-6 relative) can swap nearly equal neighbours around the k-th place; the margin lets the exact re-sort
# restore the true order.
_TOPK_MARGIN = 4
# Default working-set size (bytes) of one chunk of an (rows, n) distance block.
_CHUNK_BYTES = 256 * 2**20
# Default side of the square distance tiles of `re_ranking_features` (a 64 MB float32 block).
_DEFAULT_TILE = 4096
# Elements (pairs x dim) per exact-distance block: small blocks stay in cache and avoid the page faults of fresh
# large temporaries (measured 5x faster than 64 MB blocks).
_PAIR_BLOCK_ELEMENTS = 2**18

ArrayLike = np.ndarray | torch.Tensor
PairDistance = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: cannot convert to an array ({exc})") from exc
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise DataError(f"{name}: expected real numbers, got dtype {array.dtype}")
    return array


def _check_matrix(x: ArrayLike, name: str, shape: tuple[int | None, int | None] = (None, None)) -> np.ndarray:
    array = _to_numpy(x, name)
    if array.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array, got shape {tuple(array.shape)}")
    for axis, want in enumerate(shape):
        if want is not None and array.shape[axis] != want:
            raise DataError(f"{name}: expected shape {shape} (None = any), got {tuple(array.shape)}")
    if array.size == 0:
        raise DataError(f"{name}: empty array of shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    return array


def _check_distances(x: ArrayLike, name: str, shape: tuple[int | None, int | None]) -> np.ndarray:
    array = _check_matrix(x, name, shape)
    if array.min() < -1e-4:
        raise DataError(f"{name}: distances must be non-negative (min {array.min():.4g}); "
                        "pass distances, not similarities")
    return array


def _check_features(query_features: ArrayLike, gallery_features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    query = _check_matrix(query_features, "query_features")
    gallery = _check_matrix(gallery_features, "gallery_features")
    if query.shape[1] != gallery.shape[1]:
        raise DataError(f"query_features has dimension {query.shape[1]} but gallery_features has "
                        f"{gallery.shape[1]}")
    return query, gallery


def _check_int(value: object, name: str, minimum: int) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    return number


def _check_k_reciprocal_params(k1: int, k2: int, lambda_value: float) -> tuple[int, int, float]:
    k1 = _check_int(k1, "k1", 1)
    k2 = _check_int(k2, "k2", 1)
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ConfigError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    return k1, k2, float(lambda_value)


def _check_fraction(value: float, name: str, *, closed_right: bool) -> float:
    value = float(value)
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        raise ConfigError(f"{name} must be in [0, {'1]' if closed_right else '1)'}, got {value!r}")
    return value


def _rows_per_chunk(row_length: int, chunk_size: int | None, bytes_per_element: int = 4) -> int:
    if chunk_size is not None:
        return _check_int(chunk_size, "chunk_size", 1)
    return max(1, _CHUNK_BYTES // (bytes_per_element * max(row_length, 1)))


# ----------------------------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------------------------


def _augmented_pair(centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right) with left[i] . right[j] = ||x_i||^2 + ||x_j||^2 - 2 x_i . x_j: one matmul per distance block
    and no extra passes over it. left = [x, ||x||^2, 1], right = [-2 x, 1, ||x||^2]."""
    n, dim = centred.shape
    left, right = torch.empty(n, dim + 2), torch.empty(n, dim + 2)
    left[:, :dim] = centred
    torch.mul(centred, -2.0, out=right[:, :dim])
    left[:, dim] = right[:, dim + 1] = (centred * centred).sum(dim=1)
    left[:, dim + 1] = right[:, dim] = 1.0
    return left, right


def _exact_squared_distances(features: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 ||f[rows] - f[cols]||^2 for index pairs, in blocks (never loops over single pairs).

    Rows are gathered in the stored dtype (float32 features: half the memory traffic) and subtracted in float64.
    """
    out = np.empty(len(rows), dtype=np.float64)
    step = max(1, _PAIR_BLOCK_ELEMENTS // features.shape[1])
    for start in range(0, len(rows), step):
        diff = features[rows[start:start + step]].astype(np.float64)
        diff -= features[cols[start:start + step]]
        out[start:start + step] = np.einsum("ij,ij->i", diff, diff)
    return out


# ----------------------------------------------------------------------------------------------------------
# k-reciprocal encoding: sparse core shared by the dense and the feature-based versions
# ----------------------------------------------------------------------------------------------------------


def _stable_prefix(candidates: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    """The `width` smallest candidates of each row ordered by (value, index): ties broken by item index."""
    by_index = np.argsort(candidates, axis=1, kind="stable")
    candidates = np.take_along_axis(candidates, by_index, axis=1)
    values = np.take_along_axis(values, by_index, axis=1)
    by_value = np.argsort(values, axis=1, kind="stable")[:, :width]
    return np.take_along_axis(candidates, by_value, axis=1)


def _neighbour_graph(ranks: np.ndarray, width: int, value: float = 1.0) -> sp.csr_array:
    """Sparse (n, n) matrix with `value` at (i, ranks[i, :width])."""
    n = ranks.shape[0]
    width = min(width, ranks.shape[1])
    cols = ranks[:, :width].ravel().copy()  # scipy keeps (and sorts in place) the index array it is given
    indptr = np.arange(0, n * width + 1, width, dtype=np.int64)
    graph = sp.csr_array((np.full(n * width, value), cols, indptr), shape=(n, n))
    graph.sort_indices()
    return graph


def _reciprocal_neighbours(ranks: np.ndarray, k: int) -> sp.csr_array:
    """R[i, j] = 1 iff j is among the k+1 nearest of i and i among the k+1 nearest of j."""
    forward = _neighbour_graph(ranks, k + 1)
    return sp.csr_array(forward.multiply(forward.T))


def _expanded_neighbours(ranks: np.ndarray, k1: int) -> sp.csr_array:
    """Binary pattern of the expanded k-reciprocal sets R*(i) (the paper's eq. 6).

    A candidate c in R(i, k1) adds its half-size reciprocal set R(c, round(k1/2)) when more than 2/3 of that
    set lies in R(i, k1).
    """
    reciprocal = _reciprocal_neighbours(ranks, k1)
    half = _reciprocal_neighbours(ranks, int(np.around(k1 / 2.0)))
    # overlap[i, c] = |R(i) & H(c)|, kept only for candidates c in R(i).
    overlap = sp.coo_array(sp.csr_array(reciprocal @ half.T).multiply(reciprocal))
    half_sizes = half.sum(axis=1)
    # Same float expression as the public code (2. / 3 * len), so boundary cases agree.
    accepted = overlap.data > 2.0 / 3 * half_sizes[overlap.col]
    n = ranks.shape[0]
    accept = sp.csr_array((np.ones(int(accepted.sum())), (overlap.row[accepted], overlap.col[accepted])),
                          shape=(n, n))
    expanded = sp.csr_array(reciprocal + accept @ half)
    expanded.data[:] = 1.0
    expanded.sort_indices()
    return expanded


def _gaussian_encoding(pattern: sp.csr_array, pair_distance: PairDistance) -> sp.csr_array:
    """V[i, j] = exp(-d(i, j)) / sum_j' exp(-d(i, j')) over the expanded set of i (eq. 7)."""
    n = pattern.shape[0]
    rows = np.repeat(np.arange(n), np.diff(pattern.indptr))
    weights = np.exp(-pair_distance(rows, pattern.indices))
    row_sums = np.bincount(rows, weights=weights, minlength=n)
    return sp.csr_array((weights / row_sums[rows], pattern.indices.copy(), pattern.indptr.copy()), shape=(n, n))


def _local_query_expansion(encoding: sp.csr_array, ranks: np.ndarray, k2: int) -> sp.csr_array:
    """Average the encodings of each item's k2 nearest neighbours (itself included); k2 == 1 keeps V."""
    if k2 == 1:
        return encoding
    width = min(k2, ranks.shape[1])
    return sp.csr_array(_neighbour_graph(ranks, width, 1.0 / width) @ encoding)


def _jaccard_block(query_rows: sp.csr_array, gallery_columns: sp.csc_array) -> np.ndarray:
    """1 - s / (2 - s), s = sum_k min(Vq[i, k], Vg[g, k]), for a block of query rows against all gallery.

    Sparse "min-product" via the inverted index of gallery encodings (like the public code), vectorised:
    every query non-zero (i, k) is joined with every gallery non-zero of column k.
    """
    num_rows, num_gallery = query_rows.shape[0], gallery_columns.shape[0]
    q_row = np.repeat(np.arange(num_rows), np.diff(query_rows.indptr))
    q_col, q_val = query_rows.indices, query_rows.data
    starts = gallery_columns.indptr[q_col]
    counts = gallery_columns.indptr[q_col + 1] - starts
    owner = np.repeat(np.arange(len(q_col)), counts)
    offsets = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    positions = starts[owner] + offsets
    mins = np.minimum(q_val[owner], gallery_columns.data[positions])
    flat = q_row[owner] * num_gallery + gallery_columns.indices[positions]
    shared = np.bincount(flat, weights=mins, minlength=num_rows * num_gallery).reshape(num_rows, num_gallery)
    return 1.0 - shared / (2.0 - shared)


def _k_reciprocal_encoding(ranks: np.ndarray, pair_distance: PairDistance, k1: int, k2: int) -> sp.csr_array:
    pattern = _expanded_neighbours(ranks, k1)
    return _local_query_expansion(_gaussian_encoding(pattern, pair_distance), ranks, k2)


def _combine_blocks(encoding: sp.csr_array, original: np.ndarray, out: np.ndarray, lambda_value: float,
                    rows_per_block: int, show_progress: bool) -> np.ndarray:
    """out = jaccard * (1 - lambda) + original * lambda for query rows x gallery columns, block by block.

    `original` is the (Q, G) normalised original distance; `out` may be the same array (updated in place).
    """
    num_query = original.shape[0]
    gallery_columns = sp.csc_array(encoding[num_query:])
    starts = range(0, num_query, rows_per_block)
    for start in progress(starts, desc="re-ranking: jaccard", enabled=show_progress):
        stop = min(start + rows_per_block, num_query)
        jaccard = _jaccard_block(sp.csr_array(encoding[start:stop]), gallery_columns)
        out[start:stop] = jaccard * (1.0 - lambda_value) + original[start:stop] * lambda_value
    return out


def _jaccard_rows_per_block(num_gallery: int) -> int:
    # One float64 (rows, gallery) accumulator of ~32 MB per block.
    return max(1, 2**22 // max(num_gallery, 1))


# ----------------------------------------------------------------------------------------------------------
# k-reciprocal: public entry points
# ----------------------------------------------------------------------------------------------------------


def _transposed_squared_distances(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> np.ndarray:
    """float32 (d ** 2).T of the full [[q_q, q_g], [q_g.T, g_g]] matrix, filled block by block.

    Squaring happens in the input dtype and is then rounded to float32, exactly like the public code.
    """
    num_query, num_gallery = q_g.shape
    n = num_query + num_gallery
    out = np.empty((n, n), dtype=np.float32)
    out[:num_query, :num_query] = np.square(q_q.T)
    out[:num_query, num_query:] = np.square(q_g)
    step = max(1, _CHUNK_BYTES // (8 * n))
    for start in range(0, num_gallery, step):
        rows = slice(num_query + start, num_query + min(start + step, num_gallery))
        out[rows, :num_query] = np.square(q_g.T[start:start + step])
        out[rows, num_query:] = np.square(g_g.T[start:start + step])
    return out


def _dense_ranks(original: np.ndarray, width: int) -> np.ndarray:
    """Indices of the `width` smallest entries of each row, ordered by (value, index)."""
    n = original.shape[0]
    take = min(width + _TOPK_MARGIN, n)
    ranks = np.empty((n, min(width, n)), dtype=np.int64)
    step = _rows_per_chunk(n, None)
    for start in range(0, n, step):
        block = torch.from_numpy(original[start:start + step])
        values, candidates = torch.topk(block, take, dim=1, largest=False, sorted=True)
        ranks[start:start + step] = _stable_prefix(candidates.numpy(), values.numpy(), width)
    return ranks


def re_ranking(q_g_dist: ArrayLike, q_q_dist: ArrayLike, g_g_dist: ArrayLike, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) with the public Python function's inputs and outputs.

    Args:
        q_g_dist: (Q, G) query-gallery distances; q_q_dist: (Q, Q); g_g_dist: (G, G). Plain (not squared)
            distances, e.g. euclidean; see the module docstring for what the public code does with them.
        k1: size of the k-reciprocal neighbourhood; k2: size of the local query expansion (1 disables it).
        lambda_value: weight of the original distance in the final one (0 = Jaccard only).

    Returns:
        (Q, G) float32 re-ranked distances, equal to the public function's (within float32 rounding).

    Holds one (n, n) float32 matrix (n = Q + G) plus sparse encodings; for large problems where that does not
    fit, use `re_ranking_features`.
    """
    k1, k2, lambda_value = _check_k_reciprocal_params(k1, k2, lambda_value)
    q_g = _check_distances(q_g_dist, "q_g_dist", (None, None))
    num_query, num_gallery = q_g.shape
    q_q = _check_distances(q_q_dist, "q_q_dist", (num_query, num_query))
    g_g = _check_distances(g_g_dist, "g_g_dist", (num_gallery, num_gallery))

    original = _transposed_squared_distances(q_g, q_q, g_g)
    column_max = original.max(axis=1, keepdims=True)  # column maxima of the untransposed matrix
    if (column_max <= 0).any():
        raise DataError("re_ranking: some item has distance 0 to every item; the column-max normalisation of the "
                        "public code would divide by zero")
    original /= column_max
    ranks = _dense_ranks(original, max(k1 + 1, k2))

    def pair_distance(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return original[rows, cols].astype(np.float64)

    encoding = _k_reciprocal_encoding(ranks, pair_distance, k1, k2)
    final = np.empty((num_query, num_gallery), dtype=np.float32)
    return _combine_blocks(encoding, original[:num_query, num_query:], final, lambda_value,
                           _jaccard_rows_per_block(num_gallery), show_progress=False)


def _block_summary(block: torch.Tensor, col0: int, take: int) -> tuple[torch.Tensor, ...]:
    """(values, column indices) of the `take` smallest entries per row, and the largest entry per row."""
    values, index = torch.topk(block, min(take, block.shape[1]), dim=1, largest=False, sorted=False)
    return values, index + col0, block.amax(dim=1, keepdim=True)


class _FeatureDistances:
    """Distances among the n = Q + G stacked features without an (n, n) matrix.

    The distance matrix is symmetric, so it is computed tile by tile over the upper triangle only: each
    (I, J) block yields the top-k candidates and the maximum of the rows of I and, transposed, of J. float32
    matmuls find the candidates and the column maxima (a scale factor: float32 is accurate enough); exact
    float64 differences then decide the neighbour order and give the values that enter the encoding, so results
    match a float64 distance matrix.
    """

    def __init__(self, features: np.ndarray, tile: int, show_progress: bool) -> None:
        self.exact = features if features.dtype in (np.float32, np.float64) else features.astype(np.float64)
        mean = features.mean(axis=0, dtype=np.float64)
        centred = np.empty(features.shape, dtype=np.float32)
        for start in range(0, len(features), tile):  # no (n, dim) float64 temporary
            centred[start:start + tile] = features[start:start + tile] - mean
        self.left, self.right = _augmented_pair(torch.from_numpy(centred))
        self.tile = tile
        self.show_progress = show_progress
        self.column_max = np.empty(len(features), dtype=np.float64)

    def scan(self, width: int, query_gallery: np.ndarray) -> np.ndarray:
        """The sorted `width` nearest items of every item; also fills the column maxima (by symmetry, row
        maxima) and the normalised query x gallery distances (written into `query_gallery`)."""
        n, num_query = len(self.exact), len(query_gallery)
        width = min(width, n)
        take = min(width + _TOPK_MARGIN, n)
        starts = list(range(0, n, self.tile))
        # Per row tile: the candidates and maxima found in each block, merged once at the end (few tensor ops).
        found: dict[int, list[tuple[torch.Tensor, ...]]] = {start: [] for start in starts}
        pairs = [(i, j) for i in starts for j in starts if j >= i]
        for i0, j0 in progress(pairs, desc="re-ranking: neighbours", enabled=self.show_progress):
            i1, j1 = min(i0 + self.tile, n), min(j0 + self.tile, n)
            block = self.left[i0:i1] @ self.right[j0:j1].T  # squared distances (may dip below 0 near 0)
            found[i0].append(_block_summary(block, j0, take))
            if i0 != j0:
                found[j0].append(_block_summary(block.T.contiguous(), i0, take))
            if i0 < num_query < j1:  # (query rows, gallery columns) part: the original term of the output
                q1, g0 = min(i1, num_query), max(j0, num_query)
                query_gallery[i0:q1, g0 - num_query:j1 - num_query] = block[:q1 - i0, g0 - j0:].clamp(min=0).numpy()
            del block
        candidates = np.empty((n, take), dtype=np.int64)
        for start, summaries in found.items():
            values, index, maxima = (torch.cat(parts, dim=1) for parts in zip(*summaries, strict=True))
            keep = torch.topk(values, take, dim=1, largest=False, sorted=False).indices
            candidates[start:start + len(values)] = index.gather(1, keep).numpy()
            self.column_max[start:start + len(values)] = maxima.amax(dim=1).numpy()
        self._finish_maxima(query_gallery)
        return self._exact_ranks(candidates, width)

    def _finish_maxima(self, query_gallery: np.ndarray) -> None:
        # Identical items everywhere would give a zero maximum; the public code then divides by zero.
        if (self.column_max <= 0).any():
            raise DataError("re_ranking_features: some item has distance 0 to every other item "
                            "(all features identical?); the column-max normalisation is undefined")
        num_query = len(query_gallery)
        scale = self.column_max[:num_query, None].astype(np.float32)
        for start in range(0, num_query, self.tile):
            query_gallery[start:start + self.tile] /= scale[start:start + self.tile]

    def _exact_ranks(self, candidates: np.ndarray, width: int) -> np.ndarray:
        n, take = candidates.shape
        ranks = np.empty((n, width), dtype=np.int64)
        for start in range(0, n, self.tile):
            block = candidates[start:start + self.tile]
            rows = np.repeat(np.arange(start, start + len(block)), take)
            exact = _exact_squared_distances(self.exact, rows, block.ravel()).reshape(-1, take)
            ranks[start:start + len(block)] = _stable_prefix(block, exact, width)
        return ranks

    def normalised_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return _exact_squared_distances(self.exact, rows, cols) / self.column_max[rows]


def re_ranking_features(query_features: ArrayLike, gallery_features: ArrayLike, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3, *, chunk_size: int | None = None,
                        show_progress: bool = False) -> np.ndarray:
    """k-reciprocal re-ranking from features, equal to `re_ranking` on their euclidean distances.

    Never materialises an (n, n) matrix (n = Q + G): distances are computed in square tiles over the upper
    triangle (float32 torch matmuls; the matrix is symmetric), each row keeps only its running top-(k + margin)
    candidates (finally re-sorted on exact float64 distances) and maximum, and the query x gallery tiles go to
    the output; k-reciprocal sets, the Gaussian encodings and the local query expansion are sparse (scipy CSR,
    ~k1 * k2 non-zeros per item) and the Jaccard distance is computed for query rows only. Peak memory is
    O(n * (k1 + dim) + chunk^2) plus the (Q, G) float32 output.

    Args:
        query_features: (Q, D) features; gallery_features: (G, D). Any scale (not normalised here).
        k1, k2, lambda_value: as in `re_ranking`.
        chunk_size: side of the square distance tiles; default 4096 (one 64 MB float32 block).
        show_progress: show tqdm progress bars.

    Returns:
        (Q, G) float32 re-ranked distances.
    """
    k1, k2, lambda_value = _check_k_reciprocal_params(k1, k2, lambda_value)
    query, gallery = _check_features(query_features, gallery_features)
    features = np.concatenate([query, gallery])
    # Filled with the normalised original distances by the scan, then turned into the final distances in place.
    final = np.empty((len(query), len(gallery)), dtype=np.float32)
    with torch.no_grad():
        tile = _DEFAULT_TILE if chunk_size is None else _check_int(chunk_size, "chunk_size", 1)
        distances = _FeatureDistances(features, tile, show_progress)
        ranks = distances.scan(max(k1 + 1, k2), final)
        encoding = _k_reciprocal_encoding(ranks, distances.normalised_pairs, k1, k2)
        del ranks
        return _combine_blocks(encoding, final, final, lambda_value, _jaccard_rows_per_block(len(gallery)),
                               show_progress)


class NeighbourSource(Protocol):
    """What `k_reciprocal_neighbours` needs from a distance source: `scan(width, query_gallery)` -> (n, width)
    neighbour indices sorted by distance (the item itself first), and `normalised_pairs(rows, cols)` -> the
    squared distances divided by each row item's largest squared distance (the public code's normalisation)."""

    def scan(self, width: int, query_gallery: np.ndarray) -> np.ndarray: ...

    def normalised_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray: ...


def k_reciprocal_neighbours(features: ArrayLike, k1: int = 20, k2: int = 6, *, chunk_size: int | None = None,
                            source: NeighbourSource | None = None,
                            show_progress: bool = False) -> tuple[np.ndarray, sp.csr_array]:
    """The k-reciprocal neighbourhoods of a set of features, for graph methods (clustering) that need the
    encodings rather than a query x gallery distance matrix.

    Args:
        features: (n, D) features, n >= 2; k1 <= n - 1 (the reciprocal set), k2 <= n (the query expansion).
        chunk_size: side of the square distance tiles (default 4096), as in `re_ranking_features`.
        source: where the neighbours and distances come from; default: the exact tile scan of
            `re_ranking_features` (`FeatureDistances`). An approximate source (e.g. on a projection) fits here.
        show_progress: tqdm progress bars.

    Returns:
        (ranks, encoding): ranks (n, max(k1 + 1, k2)) sorted nearest items of each item (itself first);
        encoding (n, n) sparse CSR, row i = V_i after the local query expansion (Zhong et al. eqs. 6-7 and
        sec. 3.4). The Jaccard distance of items i, j is 1 - s / (2 - s), s = sum_k min(V[i, k], V[j, k]):
        the numbers `re_ranking_features(x, x, k1, k2, lambda_value=0)` gives.
    """
    k1, k2, _ = _check_k_reciprocal_params(k1, k2, 0.0)
    feats = _check_matrix(features, "features")
    if len(feats) < 2:
        raise DataError(f"k_reciprocal_neighbours: needs at least 2 features, got {len(feats)}")
    if k1 > len(feats) - 1 or k2 > len(feats):
        raise ConfigError(f"k_reciprocal_neighbours: k1={k1} must be <= n - 1 and k2={k2} <= n (n = {len(feats)})")
    with torch.no_grad():
        if source is None:
            tile = _DEFAULT_TILE if chunk_size is None else _check_int(chunk_size, "chunk_size", 1)
            source = FeatureDistances(feats, tile, show_progress)
        ranks = source.scan(max(k1 + 1, k2), np.empty((0, len(feats)), dtype=np.float32))
        return ranks, _k_reciprocal_encoding(ranks, source.normalised_pairs, k1, k2)


# Public names of the pieces other modules build on (documented where they are defined).
FeatureDistances = _FeatureDistances
exact_squared_distances = _exact_squared_distances
stable_prefix = _stable_prefix


# ----------------------------------------------------------------------------------------------------------
# alpha-weighted query expansion / database-side augmentation
# ----------------------------------------------------------------------------------------------------------


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _expand(targets: torch.Tensor, database: torch.Tensor, top_k: int, alpha: float, rows_per_chunk: int,
            exclude_self: bool) -> torch.Tensor:
    """normalise(t + sum over the top_k most similar database items of max(s, 0) ** alpha * item)."""
    out = torch.empty_like(targets)
    for start in range(0, len(targets), rows_per_chunk):
        chunk = targets[start:start + rows_per_chunk]
        sims = chunk @ database.T
        if exclude_self:
            rows = torch.arange(len(chunk))
            sims[rows, rows + start] = -torch.inf
        top_sims, top_idx = torch.topk(sims, top_k, dim=1)
        weights = top_sims.clamp_min(0.0).pow(alpha)
        out[start:start + rows_per_chunk] = chunk + torch.einsum("rk,rkd->rd", weights, database[top_idx])
    return _l2_normalise(out)


def query_expansion(query_features: ArrayLike, gallery_features: ArrayLike, top_k: int = 10,
                    alpha: float = 3.0, *, expand_gallery: bool = False,
                    chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """alpha-weighted average query expansion (alpha-QE, Radenovic et al., TPAMI 2018), optionally with DBA.

    Features are L2-normalised and compared by cosine similarity s. Each query q becomes

        q' = normalise(q + sum_{g in top_k(q)} max(s(q, g), 0) ** alpha * g),

    i.e. the query itself has weight 1 and its top_k gallery neighbours weight s ** alpha (alpha = 0 is
    plain average QE). With `expand_gallery=True`, database-side augmentation (DBA) first replaces every
    gallery item by the same weighted sum over its top_k *other* gallery items, and queries are then expanded
    against the augmented gallery. Rank with euclidean (or cosine) distance on the returned features.

    Returns:
        (query', gallery') float32 L2-normalised features (gallery' is the normalised input without DBA).
    """
    top_k = _check_int(top_k, "top_k", 1)
    if not math.isfinite(float(alpha)) or float(alpha) < 0:
        raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}")
    query_np, gallery_np = _check_features(query_features, gallery_features)
    if top_k > len(gallery_np) - int(expand_gallery):
        raise ConfigError(f"top_k={top_k} exceeds the number of gallery neighbours available "
                          f"({len(gallery_np) - int(expand_gallery)})")
    query = _l2_normalise(torch.from_numpy(query_np.astype(np.float32)))
    gallery = _l2_normalise(torch.from_numpy(gallery_np.astype(np.float32)))
    rows = _rows_per_chunk(len(gallery), chunk_size)
    with torch.no_grad():
        if expand_gallery:
            gallery = _expand(gallery, gallery, top_k, float(alpha), rows, exclude_self=True)
        query = _expand(query, gallery, top_k, float(alpha), rows, exclude_self=False)
    return query.numpy(), gallery.numpy()


# ----------------------------------------------------------------------------------------------------------
# SSM: diffusion on a kNN affinity graph (Bai, Bai and Tian, CVPR 2017)
# ----------------------------------------------------------------------------------------------------------


def ssm_diffusion(transition: np.ndarray | sp.sparray | sp.spmatrix, prior: np.ndarray, alpha: float = 0.9, *,
                  tol: float = 1e-6, max_iter: int = 1000) -> tuple[np.ndarray, int]:
    """Iterate Q <- alpha * P Q P^T + (1 - alpha) * L from Q = L until the update is below tol.

    The fixed point is vec(Q*) = (1 - alpha) (I - alpha P kron P)^-1 vec(L); with a row-stochastic P it exists
    for alpha < 1 and the error shrinks by a factor alpha per step (about log(tol) / log(alpha) steps).
    Each step costs two sparse-dense products, 2 * nnz(P) * n multiply-adds; Q is dense, n * n float64.

    Returns:
        (Q, number of iterations done). Warns if max_iter ran out before convergence.
    """
    alpha = _check_fraction(alpha, "alpha", closed_right=False)
    max_iter = _check_int(max_iter, "max_iter", 1)
    P = sp.csr_array(transition, dtype=np.float64)
    n = P.shape[0]
    L = _check_matrix(prior, "prior", (n, n)).astype(np.float64)
    if P.shape != (n, n):
        raise DataError(f"transition: expected a square matrix, got shape {P.shape}")
    Q = L.copy()
    for iteration in range(1, max_iter + 1):
        updated = alpha * (P @ (P @ Q).T).T + (1.0 - alpha) * L
        change = np.abs(updated - Q).max()
        Q = updated
        if change <= tol * max(np.abs(Q).max(), 1e-300):
            return Q, iteration
    warnings.warn(f"ssm_diffusion: no convergence to tol={tol} within max_iter={max_iter}", stacklevel=2)
    return Q, max_iter


def knn_transition(distances: np.ndarray, n_neighbors: int, sigma: float | None = None) -> sp.csr_array:
    """Row-stochastic P = D^-1 W of the kNN Gaussian affinity graph used by `ssm_rerank`.

    W[i, j] = exp(-d_ij^2 / sigma^2) for the n_neighbors nearest j of i (i itself included, ties by index),
    0 elsewhere; W is not symmetrised. sigma defaults to the mean distance over the kept non-self pairs.
    """
    n = distances.shape[0]
    width = min(n_neighbors, n)
    ranks = _dense_ranks(np.ascontiguousarray(distances, dtype=np.float32), width)
    rows = np.repeat(np.arange(n), width)
    kept = distances[rows, ranks.ravel()].astype(np.float64)
    if sigma is None:
        others = kept[rows != ranks.ravel()]
        sigma = float(others.mean()) if others.size else 1.0
    if not sigma > 0:
        raise ConfigError(f"sigma must be > 0, got {sigma!r} (all neighbour distances zero?)")
    weights = np.exp(-(kept / sigma) ** 2)
    row_sums = np.bincount(rows, weights=weights, minlength=n)
    return sp.csr_array((weights / row_sums[rows], (rows, ranks.ravel())), shape=(n, n))


def ssm_rerank(q_g_dist: ArrayLike, q_q_dist: ArrayLike, g_g_dist: ArrayLike, *, alpha: float = 0.9,
               n_neighbors: int = 20, sigma: float | None = None, prior: np.ndarray | None = None,
               tol: float = 1e-6, max_iter: int = 1000) -> np.ndarray:
    """Re-rank by diffusion on the smoothed manifold (the unsupervised SSM iteration of Bai et al.).

    Builds P = `knn_transition` over all n = Q + G items, runs `ssm_diffusion` with prior L (default the
    identity: every item is only similar to itself; pass an (n, n) matrix, e.g. known same-identity pairs, for
    a supervised prior) and returns distances 1 - Q*[q, g] / max(Q*[queries, gallery]) (order-preserving per
    query, in [0, 1]).

    Limits: the diffusion needs the full dense (n, n) Q (the update at (q, g) reads the neighbourhoods of both,
    so after t steps the whole graph), i.e. O(n^2) memory and O(iterations * n_neighbors * n^2) time; practical
    up to n of about 10,000 on a 24 GB, 2-core machine.
    """
    q_g = _check_distances(q_g_dist, "q_g_dist", (None, None))
    num_query, num_gallery = q_g.shape
    q_q = _check_distances(q_q_dist, "q_q_dist", (num_query, num_query))
    g_g = _check_distances(g_g_dist, "g_g_dist", (num_gallery, num_gallery))
    n_neighbors = _check_int(n_neighbors, "n_neighbors", 1)
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    n = len(full)
    L = np.eye(n) if prior is None else _check_matrix(prior, "prior", (n, n))
    Q, _ = ssm_diffusion(knn_transition(full, n_neighbors, sigma), L, alpha, tol=tol, max_iter=max_iter)
    block = Q[:num_query, num_query:]
    return (1.0 - block / max(block.max(), 1e-300)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Registered re-rankers (rerank.base): the functions above with typed, validated parameters
# ----------------------------------------------------------------------------------------------------------


def _euclidean(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return compute_distance_matrix(query, gallery, "euclidean")


@register("k_reciprocal")
@dataclass
class KReciprocal(Reranker):
    """k-reciprocal encoding (`re_ranking_features`): Jaccard distance of the k1-reciprocal sets, locally
    expanded over k2 neighbours, mixed with lambda_value x the original distance."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self) -> None:
        self.k1, self.k2, self.lambda_value = _check_k_reciprocal_params(self.k1, self.k2, self.lambda_value)

    @property
    def min_gallery(self) -> int:
        return self.k1 + 1

    def rerank(self, inputs: RerankInputs) -> np.ndarray:
        query, gallery = inputs.features("k_reciprocal")
        return re_ranking_features(query, gallery, self.k1, self.k2, self.lambda_value)


@register("aqe")
@dataclass
class QueryExpansion(Reranker):
    """alpha-weighted average query expansion over each query's top_k gallery neighbours (`query_expansion`),
    then euclidean distances; dba=True also augments the gallery (database-side augmentation)."""

    top_k: int = 10
    alpha: float = 3.0
    dba: bool = False

    def __post_init__(self) -> None:
        self.top_k = _check_int(self.top_k, "top_k", 1)
        if not math.isfinite(float(self.alpha)) or float(self.alpha) < 0:
            raise ConfigError(f"alpha must be a finite number >= 0, got {self.alpha!r}")

    @property
    def min_gallery(self) -> int:
        return self.top_k + int(self.dba)

    def rerank(self, inputs: RerankInputs) -> np.ndarray:
        query, gallery = inputs.features("aqe")
        return _euclidean(*query_expansion(query, gallery, self.top_k, self.alpha, expand_gallery=self.dba))


@register("ssm")
@dataclass
class SmoothedManifold(Reranker):
    """SSM diffusion on the kNN graph of queries + gallery (`ssm_rerank` on euclidean distances)."""

    alpha: float = 0.9
    neighbours: int = 20

    def __post_init__(self) -> None:
        self.alpha = _check_fraction(self.alpha, "alpha", closed_right=False)
        self.neighbours = _check_int(self.neighbours, "neighbours", 1)

    def rerank(self, inputs: RerankInputs) -> np.ndarray:
        query, gallery = _check_features(*inputs.features("ssm"))
        pairs = ((query, gallery), (query, query), (gallery, gallery))
        return ssm_rerank(*(_euclidean(a, b) for a, b in pairs), alpha=self.alpha, n_neighbors=self.neighbours)


def rerank(query_features: ArrayLike, gallery_features: ArrayLike, method: str = "k_reciprocal",
           **params) -> np.ndarray:
    """(Q, G) distances after the named re-ranker (`build_reranker(method, **params)`); "none": euclidean."""
    if method == "none":
        return _euclidean(*_check_features(query_features, gallery_features))
    return build_reranker(method, **params)(_to_numpy(query_features, "query_features"),
                                            _to_numpy(gallery_features, "gallery_features"))
