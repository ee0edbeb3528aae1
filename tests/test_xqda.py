"""XQDA (reidkit.classic.xqda) against a direct linear-algebra solution written here: covariances by explicit
loops over pairs, the subspace from numpy.linalg.eig of inv(Sigma_I) Sigma_E, M = inv(W' S_I W) - inv(W' S_E W)."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.classic import CLASSIC_METHODS, XQDA
from reidkit.cli.evaluate import CLASSIC_CHOICES
from reidkit.errors import ReIDError


def reference_kernel(x, pids, camids=None, regulariser=0.001):
    """W M W^T by the textbook route: every ordered pair of distinct images, one at a time."""
    d = x.shape[1]
    s_i, s_e, n_i, n_e = np.zeros((d, d)), np.zeros((d, d)), 0, 0
    for i in range(len(x)):
        for j in range(len(x)):
            if i == j or (camids is not None and camids[i] == camids[j]):
                continue
            diff = (x[i] - x[j])[:, None]
            if pids[i] == pids[j]:
                s_i += diff @ diff.T
                n_i += 1
            else:
                s_e += diff @ diff.T
                n_e += 1
    s_i = s_i / n_i + regulariser * np.eye(d)
    s_e = s_e / n_e
    values, vectors = np.linalg.eig(np.linalg.inv(s_i) @ s_e)
    values, vectors = values.real, vectors.real
    w = vectors[:, values > 1]
    m = np.linalg.inv(w.T @ s_i @ w) - np.linalg.inv(w.T @ s_e @ w)
    return w @ m @ w.T, int((values > 1).sum()), s_i, s_e


def toy_problem(num_ids=6, per_id=4, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim)) * np.linspace(2.0, 0.2, dim)  # a few discriminative directions
    pids = np.repeat(np.arange(num_ids), per_id)
    camids = np.tile(np.arange(per_id) % 2, num_ids)
    x = centres[pids] + 0.3 * rng.normal(size=(len(pids), dim))
    return x, pids, camids


def direct_distances(kernel, q, g):
    return np.array([[(a - b) @ kernel @ (a - b) for b in g] for a in q])


@pytest.mark.parametrize("cameras", [True, False])
def test_matches_direct_solution(cameras):
    x, pids, camids = toy_problem()
    cams = camids if cameras else None
    kernel, rank, _, _ = reference_kernel(x, pids, cams)
    xqda = XQDA().fit(x, pids, cams)
    assert xqda.W.shape[1] == rank
    np.testing.assert_allclose(xqda.W @ xqda.M @ xqda.W.T, kernel, atol=1e-6, rtol=1e-6)
    q, g = x[:5] + 0.1, x[7:15] - 0.2
    expected = direct_distances(kernel, q, g)
    np.testing.assert_allclose(xqda.distance(q, g), expected, atol=1e-6, rtol=1e-6)
    embedded_q, embedded_g = xqda.transform(q).astype(np.float64), xqda.transform(g).astype(np.float64)
    squared_l2 = ((embedded_q[:, None] - embedded_g[None]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_l2, expected, rtol=1e-4, atol=1e-4)  # float32 embedding


def test_pair_counts_and_covariances():
    x, pids, camids = toy_problem(num_ids=3, per_id=4, dim=3)
    _, _, s_i, s_e = reference_kernel(x, pids, camids)
    xqda = XQDA().fit(x, pids, camids)
    # 3 ids x (2 cam-0 x 2 cam-1 images) x 2 orders intra; 12 x 6 cross-camera pairs in all, ordered.
    assert (xqda.num_intra, xqda.num_extra) == (24, 12 * 6 - 24)
    from reidkit.classic.xqda import pair_covariances

    intra, extra, _, _ = pair_covariances(x, pids, camids)
    np.testing.assert_allclose(intra + 0.001 * np.eye(3), s_i, atol=1e-10)
    np.testing.assert_allclose(extra, s_e, atol=1e-10)


def test_more_dimensions_than_images_uses_the_span():
    """LOMO's case (d >> n): the QR route must give the full-space solution's distances."""
    x, pids, camids = toy_problem(num_ids=4, per_id=3, dim=30, seed=3)
    kernel, _, _, _ = reference_kernel(x, pids, camids)
    xqda = XQDA().fit(x, pids, camids)
    q, g = x[:3], x[3:9]
    np.testing.assert_allclose(xqda.distance(q, g), direct_distances(kernel, q, g), rtol=1e-6, atol=1e-6)


def test_bad_input_names_the_argument():
    x, pids, camids = toy_problem()
    with pytest.raises(ReIDError, match="features: empty training set"):
        XQDA().fit(np.zeros((0, 5)), [])
    with pytest.raises(ReIDError, match="pids: a single identity"):
        XQDA().fit(x, np.zeros(len(x), dtype=int))
    with pytest.raises(ReIDError, match="pids: 3 labels for 24"):
        XQDA().fit(x, pids[:3])
    with pytest.raises(ReIDError, match="camids: 2 cameras for 24"):
        XQDA().fit(x, pids, camids[:2])
    with pytest.raises(ReIDError, match="pids: no two images of one identity"):
        XQDA().fit(x[::4], pids[::4])
    fitted = XQDA().fit(x, pids, camids)
    with pytest.raises(ReIDError, match="gallery: 4 dimensions, but XQDA was fitted on 5"):
        fitted.distance(x[:2], x[:2, :4])
    with pytest.raises(ReIDError, match="features: 6 dimensions"):
        fitted.transform(np.zeros((2, 6)))
    with pytest.raises(ReIDError, match="call fit"):
        XQDA().distance(x, x)


def test_cli_choices_are_the_registered_methods():
    assert sorted(CLASSIC_CHOICES) == CLASSIC_METHODS.names()
