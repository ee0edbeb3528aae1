"""Re-ranking against independent references: the authors' published function (transcribed below), naive
loops for query expansion and the kNN graph, and the Kronecker-product closed form for the SSM diffusion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from reidkit.errors import ConfigError, DataError
from reidkit.rerank.methods import (
    knn_transition,
    query_expansion,
    re_ranking,
    re_ranking_features,
    rerank,
    ssm_diffusion,
    ssm_rerank,
)


def public_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """Direct transcription of the published re_ranking (zhunzhong07/person-re-ranking,
    python-version/re_ranking_ranklist.py; identical to torchreid/utils/rerank.py): the independent reference."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1),
         np.concatenate([q_g_dist.T, g_g_dist], axis=1)],
        axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1. * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)

    query_num = q_g_dist.shape[0]
    gallery_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    all_num = gallery_num

    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate, :int(np.around(k1 / 2.)) + 1]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index,
                                                            :int(np.around(k1 / 2.)) + 1]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > \
                    2. / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index,
                                                         candidate_k_reciprocal_index)

        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1. * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
        del V_qe
    del initial_rank
    invIndex = []
    for i in range(gallery_num):
        invIndex.append(np.where(V[:, i] != 0)[0])

    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(V[i, indNonZero[j]],
                                                                               V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2. - temp_min)

    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def naive_euclidean(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            out[i, j] = np.sqrt(np.sum((x[i].astype(np.float64) - y[j]) ** 2))
    return out


def random_features(num_query: int, num_gallery: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num_query, dim)), rng.normal(size=(num_gallery, dim))


def clustered_features(num_query: int, num_gallery: int, dim: int, seed: int,
                       num_ids: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Identity clusters with a varying spread and a large common offset (tests float32 cancellation)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim)) * 3.0
    ids = rng.integers(0, num_ids, size=num_query + num_gallery)
    noise = rng.normal(size=(len(ids), dim)) * rng.uniform(0.3, 1.5, size=(len(ids), 1))
    feats = centres[ids] + noise + 10.0
    return feats[:num_query], feats[num_query:]


def three_distances(query: np.ndarray, gallery: np.ndarray):
    return naive_euclidean(query, gallery), naive_euclidean(query, query), naive_euclidean(gallery, gallery)


CASES = [
    ("random", random_features, 25, 95, 16, 20, 6, 0.3, 0),
    ("random", random_features, 30, 70, 8, 7, 1, 0.5, 1),      # k1 odd: round(3.5) = 4; k2 = 1: no QE
    ("clustered", clustered_features, 30, 110, 32, 20, 6, 0.3, 2),
    ("clustered", clustered_features, 20, 80, 4, 5, 3, 0.0, 3),  # round(2.5) = 2 (half to even); Jaccard only
    ("random", random_features, 3, 6, 4, 20, 6, 0.3, 4),        # k1 + 1 > n: neighbourhoods are everything
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{c[0]}-n={c[2] + c[3]}-k1={c[5]}-k2={c[6]}" for c in CASES])
def case(request):
    _, make, nq, ng, dim, k1, k2, lam, seed = request.param
    query, gallery = make(nq, ng, dim, seed)
    dists = three_distances(query, gallery)
    expected = public_re_ranking(*dists, k1=k1, k2=k2, lambda_value=lam)
    return query, gallery, dists, (k1, k2, lam), expected


def test_re_ranking_equals_published_function(case):
    _, _, dists, (k1, k2, lam), expected = case
    got = re_ranking(*dists, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_re_ranking_features_equals_published_function(case):
    query, gallery, _, (k1, k2, lam), expected = case
    # Small chunks so several distance and Jaccard blocks are exercised.
    got = re_ranking_features(query, gallery, k1=k1, k2=k2, lambda_value=lam, chunk_size=17)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_re_ranking_features_accepts_torch_and_float32():
    torch = pytest.importorskip("torch")
    query, gallery = random_features(10, 40, 6, seed=7)
    query32, gallery32 = query.astype(np.float32), gallery.astype(np.float32)
    expected = public_re_ranking(*three_distances(query32, gallery32), k1=6, k2=3)
    got = re_ranking_features(torch.from_numpy(query32), torch.from_numpy(gallery32), k1=6, k2=3)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_re_ranking_lambda_one_is_normalised_squared_distance():
    # With lambda = 1 only the original term is left: d^2 / (max over the item's column of d^2), by hand.
    q_g = np.array([[1.0, 2.0]])
    q_q = np.array([[0.0]])
    g_g = np.array([[0.0, 3.0], [3.0, 0.0]])
    got = re_ranking(q_g, q_q, g_g, k1=1, k2=1, lambda_value=1.0)
    np.testing.assert_allclose(got, [[1.0 / 4.0, 4.0 / 4.0]], rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"k1": 0}, ConfigError, "k1"),
        ({"k2": 2.5}, ConfigError, "k2"),
        ({"lambda_value": 1.5}, ConfigError, "lambda_value"),
    ],
)
def test_re_ranking_rejects_bad_parameters(kwargs, error, needle):
    dists = three_distances(*random_features(3, 5, 2, seed=0))
    with pytest.raises(error, match=needle):
        re_ranking(*dists, **kwargs)


def test_re_ranking_rejects_bad_inputs():
    q_g, q_q, g_g = three_distances(*random_features(3, 5, 2, seed=0))
    with pytest.raises(DataError, match="g_g_dist"):
        re_ranking(q_g, q_q, g_g[:4, :4])
    with pytest.raises(DataError, match="similarities"):
        re_ranking(-q_g, q_q, g_g)
    bad = q_g.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        re_ranking(bad, q_q, g_g)
    with pytest.raises(DataError, match="dimension"):
        re_ranking_features(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(DataError, match="distance 0"):
        re_ranking_features(np.ones((2, 3)), np.ones((4, 3)))


# ----------------------------------------------------------------------------------------------------------
# alpha-QE / DBA
# ----------------------------------------------------------------------------------------------------------


def naive_alpha_qe(targets, database, top_k, alpha, exclude_self):
    def unit(v):
        return v / np.linalg.norm(v)

    targets = [unit(t) for t in targets]
    database = [unit(d) for d in database]
    out = []
    for i, t in enumerate(targets):
        sims = [(float(t @ d), j) for j, d in enumerate(database) if not (exclude_self and j == i)]
        sims.sort(key=lambda pair: -pair[0])
        total = t.copy()
        for s, j in sims[:top_k]:
            total = total + max(s, 0.0) ** alpha * database[j]
        out.append(unit(total))
    return np.array(out)


def test_query_expansion_matches_naive_formula():
    query, gallery = clustered_features(6, 30, 8, seed=5)
    got_q, got_g = query_expansion(query, gallery, top_k=4, alpha=3.0, chunk_size=4)
    np.testing.assert_allclose(got_q, naive_alpha_qe(query, gallery, 4, 3.0, False), atol=1e-5)
    np.testing.assert_allclose(got_g, gallery / np.linalg.norm(gallery, axis=1, keepdims=True), atol=1e-6)


def test_query_expansion_with_database_augmentation():
    query, gallery = clustered_features(5, 25, 8, seed=6)
    got_q, got_g = query_expansion(query, gallery, top_k=3, alpha=2.0, expand_gallery=True, chunk_size=7)
    augmented = naive_alpha_qe(gallery, gallery, 3, 2.0, True)
    np.testing.assert_allclose(got_g, augmented, atol=1e-5)
    np.testing.assert_allclose(got_q, naive_alpha_qe(query, augmented, 3, 2.0, False), atol=1e-5)


def test_query_expansion_hand_example():
    # q = (1, 0); gallery g1 = (1, 1)/sqrt2 (cos 1/sqrt2), g2 = (0, 1) (cos 0); top_k = 1, alpha = 2:
    # q' = normalise((1, 0) + 0.5 * (1, 1)/sqrt2).
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 1.0], [0.0, 1.0]])
    got_q, _ = query_expansion(q, g, top_k=1, alpha=2.0)
    raw = np.array([1.0 + 0.5 / np.sqrt(2), 0.5 / np.sqrt(2)])
    np.testing.assert_allclose(got_q[0], raw / np.linalg.norm(raw), atol=1e-6)


def test_query_expansion_rejects_bad_top_k():
    with pytest.raises(ConfigError, match="top_k"):
        query_expansion(np.ones((2, 3)), np.ones((3, 3)), top_k=3, expand_gallery=True)


# ----------------------------------------------------------------------------------------------------------
# SSM diffusion
# ----------------------------------------------------------------------------------------------------------


def closed_form(P: np.ndarray, L: np.ndarray, alpha: float) -> np.ndarray:
    """vec(Q*) = (1 - alpha) (I - alpha P kron P)^-1 vec(L) (row-major vec: vec(P Q P^T) = (P kron P) vec(Q))."""
    n = len(P)
    vec = np.linalg.solve(np.eye(n * n) - alpha * np.kron(P, P), L.ravel())
    return (1.0 - alpha) * vec.reshape(n, n)


def naive_knn_transition(dist: np.ndarray, k: int) -> np.ndarray:
    n = len(dist)
    neighbours = [sorted(range(n), key=lambda j, i=i: (dist[i, j], j))[:k] for i in range(n)]
    kept = [dist[i, j] for i in range(n) for j in neighbours[i] if j != i]
    sigma = sum(kept) / len(kept)
    W = np.zeros((n, n))
    for i in range(n):
        for j in neighbours[i]:
            W[i, j] = np.exp(-(dist[i, j] / sigma) ** 2)
    return W / W.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_ssm_diffusion_converges_to_closed_form(alpha):
    rng = np.random.default_rng(8)
    n = 7
    W = rng.uniform(0.1, 1.0, size=(n, n))
    P = W / W.sum(axis=1, keepdims=True)
    L = np.eye(n)
    Q, iterations = ssm_diffusion(sp.csr_array(P), L, alpha, tol=1e-12, max_iter=5000)
    np.testing.assert_allclose(Q, closed_form(P, L, alpha), atol=1e-9)
    assert iterations > 1


def test_ssm_rerank_matches_closed_form_pipeline():
    query, gallery = clustered_features(3, 5, 4, seed=9, num_ids=3)
    q_g, q_q, g_g = three_distances(query, gallery)
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    P = naive_knn_transition(full, 4)
    np.testing.assert_allclose(knn_transition(full, 4).toarray(), P, atol=1e-12)
    Q = closed_form(P, np.eye(len(full)), 0.8)[:3, 3:]
    got = ssm_rerank(q_g, q_q, g_g, alpha=0.8, n_neighbors=4, tol=1e-12, max_iter=5000)
    np.testing.assert_allclose(got, 1.0 - Q / Q.max(), atol=1e-6)


def test_rerank_dispatch():
    query, gallery = random_features(6, 20, 5, seed=10)
    np.testing.assert_allclose(rerank(query, gallery, "none"), naive_euclidean(query, gallery), atol=1e-4)
    expected = public_re_ranking(*three_distances(query, gallery), k1=5, k2=2)
    np.testing.assert_allclose(rerank(query, gallery, "k_reciprocal", k1=5, k2=2), expected, atol=1e-4)
    qe_q, qe_g = query_expansion(query, gallery, top_k=3)
    np.testing.assert_allclose(rerank(query, gallery, "aqe", top_k=3), naive_euclidean(qe_q, qe_g), atol=1e-5)
    with pytest.raises(ConfigError, match="unknown re-ranker .magic.; available: aqe, k_reciprocal, pair, ssm"):
        rerank(query, gallery, "magic")


def test_cli_evaluate_rerank_matches_published_function_then_loop_evaluation(tmp_path):
    from reidkit.cli.main import main
    from reidkit.metrics import evaluate_rank

    rng = np.random.default_rng(5)
    query, gallery = clustered_features(20, 60, 8, seed=5)
    q_pids, g_pids = rng.integers(1, 6, 20), rng.integers(1, 6, 60)
    q_camids, g_camids = np.zeros(20, dtype=int), np.ones(60, dtype=int)
    path = tmp_path / "features.npz"
    np.savez(path, query_features=query, gallery_features=gallery, q_pids=q_pids, g_pids=g_pids,
             q_camids=q_camids, g_camids=g_camids)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--features", str(path), "--rerank", "k_reciprocal", "--max-rank", "10",
                 "--out", str(out), "--quiet"]) == 0
    reference = public_re_ranking(*three_distances(query, gallery))
    cmc, mAP = evaluate_rank(reference, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    report = json.loads(out.read_text())
    assert report["mAP"] == pytest.approx(100 * mAP, abs=1e-3)
    assert report["rank1"] == pytest.approx(100 * cmc[0], abs=1e-3)
