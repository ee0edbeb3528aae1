"""XQDA: cross-view quadratic discriminant analysis (Liao et al., CVPR 2015; the authors' XQDA.m).

Pair differences x_i - x_j of the same identity (intra-personal, covariance Sigma_I) and of different identities
(extra-personal, Sigma_E) are modelled as zero-mean Gaussians. XQDA learns a subspace W whose columns are the
generalised eigenvectors of Sigma_E w = lambda Sigma_I w with lambda > 1 (where the two classes differ most),
then the kernel M = inv(W^T Sigma_I W) - inv(W^T Sigma_E W), and ranks by d(x, z) = (x - z)^T W M W^T (x - z).
Sigma_I gets the regulariser 0.001 I, as XQDA.m.

Pairs: "cross-view" = images of different cameras (the two views of XQDA.m) when cameras are given, otherwise all
pairs of distinct images. Every such pair is used: the scatter of all pairs within groups (identity, camera,
both) is 2 sum_g (n_g S_g - s_g s_g^T), so inclusion-exclusion over those groups gives the intra / extra scatters
with a few matrix products (no loop over pairs). With more dimensions than images (LOMO: 26,960 vs a few
thousand), XQDA.m first moves to the span of the training images (QR there, the Gram matrix here), which
changes nothing.
scipy.linalg.eigh solves the symmetric-definite generalised eigenproblem (XQDA.m uses svd(Sigma_I \\ Sigma_E)).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.linalg import eigh

from ..errors import ReIDError

SPAN_CHUNK = 2048  # input dimensions converted to float64 at a time (LOMO: 26,960 in 14 slices)


def _as_matrix(values, name: str, keep_float32: bool = False) -> np.ndarray:
    array = np.asarray(values)
    if not (keep_float32 and array.dtype == np.float32):
        array = array.astype(np.float64, copy=False)
    if array.ndim != 2:
        raise ReIDError(f"{name}: expected a 2-D (images, dims) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ReIDError(f"{name}: contains NaN or infinite values")
    return array


def _group_scatter(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum over ordered pairs (i, j) in the same group (i = j included: a zero difference) of
    (x_i - x_j)(x_i - x_j)^T, and the number of such pairs."""
    _, inverse, counts = np.unique(groups, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), x.shape[1]))
    np.add.at(sums, inverse, x)
    weighted = x * counts[inverse][:, None]
    return 2.0 * (weighted.T @ x - sums.T @ sums), int((counts.astype(np.int64) ** 2).sum())


def pair_covariances(x: np.ndarray, pids: np.ndarray, camids: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(Sigma_I, Sigma_E, intra pairs, extra pairs): mean outer products of the differences of ordered pairs of
    distinct images, same identity / different identity; with `camids`, of different cameras only."""
    extra, all_count = _group_scatter(x, np.zeros(len(x), dtype=np.int64))
    intra, id_count = _group_scatter(x, pids)
    extra -= intra  # in place: a few n x n matrices at most (n = 6,000: 290 MB each)
    if camids is None:
        num_intra, num_extra = id_count - len(x), all_count - id_count
    else:
        cam_scatter, cam_count = _group_scatter(x, camids)
        extra -= cam_scatter
        del cam_scatter
        both_scatter, both_count = _group_scatter(x, np.stack([pids, camids], axis=1))
        intra -= both_scatter
        extra += both_scatter
        del both_scatter
        num_intra, num_extra = id_count - both_count, all_count - cam_count - id_count + both_count
    if num_intra == 0:
        raise ReIDError("pids: no two images of one identity" + (" from different cameras (camids)" if camids
                                                                  is not None else "")
                        + ": XQDA needs same-identity pairs")
    if num_extra == 0:
        raise ReIDError("pids: no pair of different identities" + (" from different cameras (camids)" if camids
                                                                    is not None else ""))
    return intra / num_intra, extra / num_extra, num_intra, num_extra


def _span_coordinates(x: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Coordinates of the n rows of x (n < d) in an orthonormal basis of their span, and the map from vectors in
    those coordinates back to d dimensions.

    XQDA.m takes a QR decomposition of x^T; the Gram matrix x x^T = U S U^T gives the same span with an n x n
    problem and no d x n basis in memory (LOMO on 6,000 images: the basis alone would take 1.3 GB): coordinates
    U S^(1/2), basis x^T U S^(-1/2). Directions with S below 1e-12 of the largest (duplicate images) are dropped.
    """
    chunks = [slice(a, a + SPAN_CHUNK) for a in range(0, x.shape[1], SPAN_CHUNK)]  # float64 a slice at a time
    gram = np.zeros((len(x), len(x)))
    for c in chunks:
        part = x[:, c].astype(np.float64)
        gram += part @ part.T
    values, vectors = np.linalg.eigh(gram)
    del gram
    keep = values > values.max() * 1e-12
    values, vectors = values[keep], vectors[:, keep]
    scale = vectors / np.sqrt(values)

    def to_input_space(v: np.ndarray) -> np.ndarray:
        a = scale @ v
        return np.concatenate([x[:, c].T.astype(np.float64) @ a for c in chunks], axis=0)

    return vectors * np.sqrt(values), to_input_space


class XQDA:
    """`XQDA().fit(features, pids, camids)`, then `distance(query, gallery)` (Q x G) or `transform(x)`: the
    embedding whose squared Euclidean distances equal the XQDA distances (so re-rankers and indexes apply)."""

    def __init__(self, regulariser: float = 0.001, dims: int | None = None):
        if regulariser < 0:
            raise ReIDError(f"XQDA regulariser {regulariser}: must be >= 0")
        if dims is not None and dims < 1:
            raise ReIDError(f"XQDA dims {dims}: must be >= 1 (None = eigenvalues > 1)")
        self.regulariser, self.dims = regulariser, dims
        self.W: np.ndarray | None = None  # (input dims, r) subspace
        self.M: np.ndarray | None = None  # (r, r) kernel
        self.eigenvalues: np.ndarray | None = None  # all generalised eigenvalues, descending
        self.num_intra = self.num_extra = 0

    def fit(self, features, pids, camids=None) -> XQDA:
        x = _as_matrix(features, "features", keep_float32=True)  # float64 copies are made a slice at a time
        pids = np.asarray(pids).reshape(-1)
        if len(x) == 0:
            raise ReIDError("features: empty training set (0 images)")
        if len(pids) != len(x):
            raise ReIDError(f"pids: {len(pids)} labels for {len(x)} feature rows")
        if len(np.unique(pids)) < 2:
            raise ReIDError(f"pids: a single identity ({pids[0]!r}) in the training set; XQDA needs at least two "
                            "(extra-personal pairs)")
        if camids is not None:
            camids = np.asarray(camids).reshape(-1)
            if len(camids) != len(x):
                raise ReIDError(f"camids: {len(camids)} cameras for {len(x)} feature rows")
        to_span = None
        if x.shape[1] > len(x):  # XQDA.m: work in the span of the training images
            x, to_span = _span_coordinates(x)
        x = x.astype(np.float64, copy=False)
        sigma_i, sigma_e, self.num_intra, self.num_extra = pair_covariances(x, pids, camids)
        sigma_i = sigma_i + self.regulariser * np.eye(len(sigma_i))
        try:
            values, vectors = eigh(sigma_e, sigma_i)
        except np.linalg.LinAlgError as exc:
            raise ReIDError(f"XQDA: the intra-personal covariance is singular ({exc}); use a regulariser > 0") \
                from exc
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
        keep = max(1, int((values > 1).sum())) if self.dims is None else min(self.dims, len(values))
        v = vectors[:, :keep]
        self.eigenvalues = values
        self.M = np.linalg.inv(v.T @ sigma_i @ v) - np.linalg.inv(v.T @ sigma_e @ v)
        self.M = (self.M + self.M.T) / 2
        self.W = v if to_span is None else to_span(v)
        return self

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.W is None or self.M is None:
            raise ReIDError("XQDA: call fit(features, pids) first")
        return self.W, self.M

    def _project(self, values, name: str) -> np.ndarray:
        w, _ = self._fitted()
        x = _as_matrix(values, name)
        if x.shape[1] != w.shape[0]:
            raise ReIDError(f"{name}: {x.shape[1]} dimensions, but XQDA was fitted on {w.shape[0]}")
        return x @ w

    def distance(self, query, gallery) -> np.ndarray:
        """(Q, G) XQDA distances (x - z)^T W M W^T (x - z) = u_x + u_z - 2 x^T W M W^T z."""
        _, m = self._fitted()
        pq, pg = self._project(query, "query"), self._project(gallery, "gallery")
        mq = pq @ m
        dist = (mq * pq).sum(1)[:, None] + ((pg @ m) * pg).sum(1)[None, :] - 2.0 * mq @ pg.T
        return np.maximum(dist, 0.0)

    def transform(self, features) -> np.ndarray:
        """x -> M^(1/2) W^T x (float32): squared Euclidean distances of the outputs are the XQDA distances.
        M is positive semi-definite here (eigenvalues > 1 give inv(Sigma_I') > inv(Sigma_E')); a negative
        eigenvalue from another `dims` choice is clipped at 0."""
        _, m = self._fitted()
        values, vectors = np.linalg.eigh(m)
        root = vectors * np.sqrt(np.clip(values, 0.0, None))
        return (self._project(features, "features") @ root).astype(np.float32)
