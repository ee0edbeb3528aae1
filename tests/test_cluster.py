"""N:N clustering: scores against naive loops and scikit-learn, the sparse Jaccard against the dense re-ranking,
recovery of well-separated synthetic identities, and the `cluster` verb on good and bad input."""

from __future__ import annotations

import csv
import importlib
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.analysis.cluster import (
    ClusterParams,
    camera_centred,
    choose_cluster_params,
    cluster_features,
    jaccard_graph,
    neighbourhood_sizes,
)
from reidkit.checkpoint import save_checkpoint
from reidkit.cli.main import main
from reidkit.data import load_dataset
from reidkit.metrics.clustering import bcubed_f, clustering_scores
from reidkit.rerank import re_ranking_features
from reidkit.rerank.methods import k_reciprocal_neighbours


def _naive_scores(true: list[int], pred: list[int]) -> dict[str, float]:
    """Pairwise and B-cubed precision/recall by loops over crops and pairs; -1 = its own singleton."""
    pred = [p if p >= 0 else -(i + 10) for i, p in enumerate(pred)]
    n = len(true)
    both = same_pred = same_true = 0
    for i, j in itertools.combinations(range(n), 2):
        same_pred += pred[i] == pred[j]
        same_true += true[i] == true[j]
        both += pred[i] == pred[j] and true[i] == true[j]
    bc_p = bc_r = 0.0
    for i in range(n):
        cluster = [j for j in range(n) if pred[j] == pred[i]]
        identity = [j for j in range(n) if true[j] == true[i]]
        correct = sum(true[j] == true[i] for j in cluster)
        bc_p += correct / len(cluster)
        bc_r += correct / len(identity)
    return {"pairwise_precision": both / same_pred, "pairwise_recall": both / same_true,
            "bcubed_precision": bc_p / n, "bcubed_recall": bc_r / n}


def test_scores_match_naive_loops_and_sklearn():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(0)
    true = rng.integers(0, 8, 60)
    pred = np.where(rng.random(60) < 0.7, true, rng.integers(-1, 10, 60))  # mostly right, some noise, some -1
    got = clustering_scores(true, pred)
    naive = _naive_scores(true.tolist(), pred.tolist())
    for key, value in naive.items():
        assert got[key] == pytest.approx(value), key
    p, r = naive["bcubed_precision"], naive["bcubed_recall"]
    assert got["bcubed_f"] == pytest.approx(2 * p * r / (p + r))
    singletons = [q if q >= 0 else -(i + 10) for i, q in enumerate(pred.tolist())]
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(true, singletons))
    assert got["ari"] == pytest.approx(adjusted_rand_score(true, singletons))
    assert got["num_unassigned"] == int(np.sum(pred < 0)) and got["num_true"] == 8
    assert bcubed_f(true, pred) == pytest.approx(got["bcubed_f"])
    # the first version's import path still works (the scores moved to reidkit.metrics.clustering)
    cluster_module = importlib.import_module("reidkit.analysis.cluster")  # the package exports a function `cluster`
    assert cluster_module.clustering_scores is clustering_scores and cluster_module.bcubed_f is bcubed_f


def test_public_k_reciprocal_neighbours_give_the_dense_re_ranking_jaccard():
    x, _ = _blobs(ids=6, per=5, dim=16)
    ranks, encoding = k_reciprocal_neighbours(x, k1=6, k2=3)
    m = 12  # queries = the first 12 items, gallery = the rest: stacked they are exactly x
    dense = re_ranking_features(x[:m], x[m:], k1=6, k2=3, lambda_value=0.0)  # the public function's numbers
    v = encoding.toarray()
    shared = np.minimum(v[:m, None, :], v[None, m:, :]).sum(axis=2)  # naive min-sum over the query x gallery pairs
    np.testing.assert_allclose(1.0 - shared / (2.0 - shared), dense, atol=1e-5)
    sq = ((x[:, None] - x[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(ranks[:, 0], np.arange(len(x)))  # each item is its own nearest
    assert np.all(np.diff(np.take_along_axis(sq, ranks, axis=1), axis=1) >= -1e-6)


def _blobs(ids: int = 12, per: int = 6, dim: int = 32, spread: float = 0.15, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    labels = np.repeat(np.arange(ids), per)
    x = centres[labels] + spread * rng.normal(size=(ids * per, dim))
    order = rng.permutation(len(x))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x[order], labels[order]


def test_sparse_jaccard_equals_the_dense_re_ranking():
    x, _ = _blobs(ids=10, per=7)
    graph = jaccard_graph(x, k1=8, k2=3)
    m = 30  # queries = the first 30 items, gallery = the rest: stacked they are exactly x
    dense = re_ranking_features(x[:m], x[m:], k1=8, k2=3, lambda_value=0.0)
    cross = (graph.first < m) & (graph.second >= m)
    assert cross.sum() > 50
    np.testing.assert_allclose(graph.jaccard[cross], dense[graph.first[cross], graph.second[cross] - m], atol=1e-6)
    # the edges are the k1 nearest neighbours (cosine) of every item, unordered and without self-pairs
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1)[:, :8]
    expected = {(min(i, j), max(i, j)) for i in range(len(x)) for j in nearest[i]}
    assert set(zip(graph.first.tolist(), graph.second.tolist(), strict=True)) == expected


def test_recovers_well_separated_identities():
    x, labels = _blobs(ids=15, per=6)
    # here same-identity Jaccard distances stay below 0.24 and different-identity ones above 0.35
    predicted = cluster_features(x, ClusterParams(eps=0.3, min_samples=2, k1=10, k2=4, camera_aware=False))
    scores = clustering_scores(labels, predicted)
    assert scores["ari"] == pytest.approx(1.0) and scores["num_clusters"] == 15
    assert np.bincount(predicted).max() == 6  # clusters are numbered by size, each holding one identity


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_folder_of_few_crops_per_person_comes_out_right(seed):
    # 6 people x 3 crops (a small track folder): with k1 = 20 >= n every crop was every other's reciprocal
    # neighbour and ONE cluster came out at every radius; with a validated min_samples of 4 all would be noise.
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), 3)
    x = rng.normal(size=(6, 64))[labels] + 0.3 * rng.normal(size=(18, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    assert neighbourhood_sizes(18, 20, 6) == (3, 1) and neighbourhood_sizes(5000, 20, 6) == (20, 6)
    from sklearn.metrics import adjusted_rand_score

    for eps in (0.3, 0.45, 0.55, 0.65):
        for stored in (ClusterParams(eps, 2, 20, 6, False), ClusterParams(eps, 4, 10, 6, True),
                       ClusterParams(eps, 1, 20, 6, True, 0.2, 0.3, "average")):
            assert adjusted_rand_score(labels, cluster_features(x, stored)) == 1.0, (eps, stored)


def test_camera_centring_removes_each_cameras_mean():
    x, _ = _blobs()
    cams = np.arange(len(x)) % 3
    out = camera_centred(x, cams)
    for cam in range(3):  # hand formula: subtract the camera mean, then L2-normalise
        rows = x[cams == cam]
        expected = rows - rows.mean(axis=0)
        np.testing.assert_allclose(out[cams == cam], expected / np.linalg.norm(expected, axis=1, keepdims=True),
                                   atol=1e-5)
    assert camera_centred(x, None) is x


def test_parameter_choice_prefers_the_best_bcubed_setting():
    x, labels = _blobs(ids=10, per=5, spread=0.3)
    params, table = choose_cluster_params(x, labels, None, eps_grid=(0.05, 0.5, 0.99), min_samples_grid=(2,),
                                          k1_grid=(8,))
    assert table[0]["bcubed_f"] == max(row["bcubed_f"] for row in table)
    assert params.eps == table[0]["eps"] and params.eps != 0.99  # 0.99 merges everything reachable


# ------------------------------------------------------------------------------------------------ the verb

@pytest.fixture
def crops(tiny_market, tmp_path) -> Path:
    folder = tmp_path / "crops"
    shutil.copytree(tiny_market / "bounding_box_test", folder)
    return folder


def test_cluster_verb_writes_csv_sheets_and_market_export(crops, small_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["cluster", str(crops), "--model", str(small_checkpoint), "--out", str(out), "--export",
                 "--threshold", "0.6", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "given on the command line" in text and "camera-aware" in text
    rows = list(csv.DictReader((out / "clusters.csv").open()))
    images = sorted(str(p) for p in crops.rglob("*.jpg"))
    assert sorted(r["path"] for r in rows) == images
    labels = np.array([int(r["cluster"]) for r in rows])
    assert labels.min() >= -1
    clustered = labels[labels >= 0]
    assert len(list((out / "sheets").glob("cluster_*.png"))) == min(np.unique(clustered).size, 100)
    exported = load_dataset(out / "market" / "bounding_box_train")
    assert len(exported.train) == clustered.size
    assert sorted({r.pid for r in exported.train}) == sorted((np.unique(clustered) + 1).tolist())


def test_cluster_default_threshold_is_said_not_validated(crops, small_checkpoint, tmp_path, capsys):
    assert main(["cluster", str(crops), "--model", str(small_checkpoint), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "not validated" in captured.out
    assert "embedding" in captured.err and "%|" in captured.err  # progress bars (with ETA) on stderr
    assert main(["cluster", str(crops), "--model", str(small_checkpoint), "--out", str(tmp_path / "p"),
                 "--calibrated"]) == 2
    assert "no stored clustering threshold" in capsys.readouterr().err


def test_cluster_folder_with_one_image_is_refused(crops, small_checkpoint, tmp_path, capsys):
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(next(crops.glob("*.jpg")), single / "only.jpg")
    assert main(["cluster", str(single), "--model", str(small_checkpoint), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(single) in err and "holds 1 image" in err and "at least 2" in err


def test_cluster_skips_and_reports_an_unreadable_image(crops, small_checkpoint, tmp_path, capsys):
    (crops / "0001_c1s1_000000_00.jpg").write_bytes(b"broken")
    out = tmp_path / "o"
    assert main(["cluster", str(crops), "--model", str(small_checkpoint), "--out", str(out), "--quiet"]) == 0
    assert "1 unreadable image(s) skipped" in capsys.readouterr().out
    assert "0001_c1s1_000000_00.jpg" in (out / "unreadable.txt").read_text()
    assert "0001_c1s1_000000_00.jpg" not in (out / "clusters.csv").read_text()


def test_cluster_refuses_a_pair_network_clearly(crops, tmp_path, capsys):
    from reidkit.models import build_model

    cfg = {"input_size": [64, 32]}
    path = tmp_path / "pair.pt"
    torch.manual_seed(0)
    save_checkpoint(path, model=build_model("idla", **cfg), model_name="idla", model_cfg=cfg, epoch=0)
    assert main(["cluster", str(crops), "--model", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pair network cannot cluster" in err and "pair.pt" in err and "embedding model" in err


def test_camera_penalty_and_lambda_edges_match_naive_formulas():
    from reidkit.analysis.cluster import _CameraPenalised
    from reidkit.rerank.methods import FeatureDistances

    x, _ = _blobs(ids=8, per=5, dim=16)
    cams = np.arange(len(x)) % 2
    sq = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(axis=2)
    penalised = sq + 0.5 * (cams[:, None] == cams[None, :])
    np.fill_diagonal(penalised, -1.0)  # the item itself first
    source = _CameraPenalised(FeatureDistances(x, 4096, False), cams, 0.5)
    ranks = source.scan(6, np.empty((0, len(x)), dtype=np.float32))
    np.testing.assert_array_equal(ranks, np.argsort(penalised, axis=1, kind="stable")[:, :6])
    graph = jaccard_graph(x, k1=6, k2=2, camids=cams, same_camera_penalty=0.5)
    original = (sq / sq.max(axis=1, keepdims=True))[graph.first, graph.second]  # re-ranking's original term
    mixed = graph.matrix(0.3)[graph.first, graph.second]
    np.testing.assert_allclose(mixed, 0.7 * graph.jaccard + 0.3 * (original + 0.5 * (
        cams[graph.first] == cams[graph.second]) / sq.max(axis=1)[graph.first]), atol=1e-6)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_sparse_average_linkage_equals_scipy_on_the_dense_matrix(threshold):
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    from sklearn.metrics import adjusted_rand_score

    from reidkit.analysis.cluster import JaccardGraph, average_linkage_labels

    x, _ = _blobs(ids=8, per=5, dim=16, spread=0.4)
    graph = jaccard_graph(x, k1=6, k2=2)
    dense = np.ones((len(x), len(x)))  # absent pairs: distance 1
    dense[graph.first, graph.second] = dense[graph.second, graph.first] = np.maximum(graph.jaccard, 0.0)
    np.fill_diagonal(dense, 0.0)
    reference = fcluster(linkage(squareform(dense, checks=False), "average"), threshold, criterion="distance")
    got = average_linkage_labels(graph, threshold)
    singles = got < 0
    got[singles] = got.max() + 1 + np.arange(singles.sum())  # unassigned = a cluster of its own
    assert adjusted_rand_score(reference, got) == 1.0
    assert isinstance(graph, JaccardGraph)
