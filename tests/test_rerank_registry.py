"""The re-ranker registry (reidkit.rerank): validated parameters, pair fusion against plain loops, the candidate
pool of a search against the full problem, and `evaluate` / `search` giving the same pair-fusion ranking as a
naive reference on a small synthetic dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.errors import ConfigError, ModelError
from reidkit.models import build_model
from reidkit.rerank import Chain, build_reranker, reranker_names
from reidkit.rerank.candidates import rerank_pool
from reidkit.rerank.pair import pair_network_scorer, rerank_top_k
from test_reranking import public_re_ranking, three_distances


class MeanColourPairNet:
    """A stand-in pair network: same-person score = -|mean(a) - mean(b)| of the uint8 images."""

    input_size = (4, 2)

    def __init__(self):
        self.calls: list[int] = []

    def image_pair_scores(self, images1, images2, index1, index2, batch_size=512, symmetric=False, flip=False):
        self.calls.append(int(index1.numel()))
        m1, m2 = images1.float().mean(dim=(1, 2, 3)), images2.float().mean(dim=(1, 2, 3))
        return -(m1[index1] - m2[index2]).abs()

    def to(self, device):
        return self

    def eval(self):
        return self


def naive_fusion(dist_row: np.ndarray, score, k: int, weight: float) -> list[int]:
    """The documented rule, by hand: top-k by distance, ranked by pair score, fused by rank, then the rest."""
    by_distance = sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))
    top = by_distance[:k]
    by_pair = sorted(top, key=lambda j: (-score(j), top.index(j)))
    fused = {j: (1 - weight) * top.index(j) + weight * by_pair.index(j) for j in top}
    return sorted(top, key=lambda j: (fused[j], top.index(j))) + by_distance[k:]


# ------------------------------------------------------------------------------------------- registry

def test_registry_names_match_the_cli_choices():
    from reidkit.cli.options import RERANK_CHOICES

    assert RERANK_CHOICES == ("none", "k_reciprocal", "aqe", "ssm", "pair")
    assert sorted(RERANK_CHOICES[1:]) == reranker_names()


@pytest.mark.parametrize(("name", "params", "message"), [
    ("k_reciprocal", {"k1": 0}, "k1 must be >= 1"),
    ("k_reciprocal", {"k2": 2.5}, "k2 must be an integer"),
    ("k_reciprocal", {"lambda_value": 1.5}, "lambda_value must be in"),
    ("aqe", {"top_k": 0}, "top_k must be >= 1"),
    ("aqe", {"alpha": -1}, "alpha must be a finite number"),
    ("ssm", {"alpha": 1.0}, "alpha must be in"),
    ("ssm", {"neighbours": 0}, "neighbours must be >= 1"),
    ("pair", {"model": MeanColourPairNet(), "weight": 2}, "--pair-weight"),
    ("pair", {"model": MeanColourPairNet(), "top": 0}, "--rerank-top"),
    ("pair", {}, "needs a pair network"),
    ("k_reciprocal", {"k": 3}, "unknown parameter"),
    ("magic", {}, "unknown re-ranker 'magic'"),
])
def test_build_reranker_refuses_bad_parameters(name, params, message):
    with pytest.raises(ConfigError, match=message):
        build_reranker(name, **params)


def test_pair_fusion_refuses_a_model_that_is_not_a_pair_network():
    embedding = build_model("embedding", backbone="simple_cnn", pretrained=False)
    with pytest.raises(ModelError, match="not a pair network"):
        build_reranker("pair", model=embedding)


def test_registered_k_reciprocal_equals_the_public_function():
    rng = np.random.default_rng(1)
    query, gallery = rng.normal(size=(5, 6)), rng.normal(size=(30, 6))
    got = build_reranker("k_reciprocal", k1=6, k2=3, lambda_value=0.2)(query, gallery)
    expected = public_re_ranking(*three_distances(query, gallery), k1=6, k2=3, lambda_value=0.2)
    np.testing.assert_allclose(got, expected, atol=1e-5)


# --------------------------------------------------------------------------------- pair fusion (moved)

def test_rerank_top_k_reorders_only_the_top_k_like_a_plain_loop():
    rng = np.random.default_rng(6)
    dist = rng.random((4, 9))
    pair_score = rng.normal(size=(4, 9))
    out = rerank_top_k(dist, lambda q, g: pair_score[q, g], k=3)
    for i in range(4):
        by_distance = sorted(range(9), key=lambda j: dist[i, j])
        top = sorted(by_distance[:3], key=lambda j: -pair_score[i, j])
        assert sorted(range(9), key=lambda j: out[i, j]) == top + by_distance[3:]
        np.testing.assert_array_equal(out[i, by_distance[3:]], dist[i, by_distance[3:]])


@pytest.mark.parametrize("pair_weight", [0.0, 0.3, 0.5, 0.8])
def test_rerank_top_k_fuses_embedding_and_pair_ranks_like_a_plain_loop(pair_weight):
    rng = np.random.default_rng(9)
    dist = rng.random((5, 12))
    pair_score = rng.integers(0, 4, size=(5, 12)).astype(float)  # ties on purpose
    out = rerank_top_k(dist, lambda q, g: pair_score[q, g], k=6, pair_weight=pair_weight)
    for i in range(5):
        expected = naive_fusion(dist[i], lambda j, i=i: pair_score[i, j], 6, pair_weight)
        assert sorted(range(12), key=lambda j: out[i, j]) == expected
    with pytest.raises(ConfigError, match="pair_weight"):
        rerank_top_k(dist, lambda q, g: pair_score[q, g], pair_weight=1.5)


def test_pair_network_scorer_matches_forward_on_each_pair():
    model = build_model("idla", input_size=(40, 24)).eval()
    gen = torch.Generator().manual_seed(7)
    query = torch.randint(0, 255, (2, 3, 40, 24), generator=gen, dtype=torch.uint8)
    gallery = torch.randint(0, 255, (5, 3, 40, 24), generator=gen, dtype=torch.uint8)
    scorer = pair_network_scorer(model, query, gallery)
    q_index, g_index = np.array([1, 0, 1]), np.array([4, 2, 0])
    got = scorer(q_index, g_index)
    with torch.no_grad():
        for value, i, j in zip(got, q_index, g_index):
            logits = model(model.prepare(query[i:i + 1]), model.prepare(gallery[j:j + 1]))[0]
            assert value == pytest.approx((logits[1] - logits[0]).item(), abs=1e-4)


def test_pair_network_scorer_test_time_views_average_forward_over_orders_and_mirrors():
    model = build_model("idla", input_size=(40, 24)).eval()
    gen = torch.Generator().manual_seed(8)
    query = torch.randint(0, 255, (2, 3, 40, 24), generator=gen, dtype=torch.uint8)
    gallery = torch.randint(0, 255, (4, 3, 40, 24), generator=gen, dtype=torch.uint8)
    q_index, g_index = np.array([1, 0, 1, 0]), np.array([3, 2, 0, 3])
    got = pair_network_scorer(model, query, gallery, symmetric=True, flip=True)(q_index, g_index)

    def log_odds(a, b):
        logits = model(model.prepare(a), model.prepare(b))[0]
        return (logits[1] - logits[0]).item()

    with torch.no_grad():
        for value, i, j in zip(got, q_index, g_index):
            q, g = query[i:i + 1], gallery[j:j + 1]
            qm, gm = q.flip(-1), g.flip(-1)
            expected = (log_odds(q, g) + log_odds(g, q) + log_odds(qm, gm) + log_odds(gm, qm)) / 4
            assert value == pytest.approx(expected, abs=1e-4)


def test_pair_fusion_decodes_paths_like_tensors(tmp_path):
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (7, 4, 2, 3), dtype=np.uint8)
    paths = []
    for i, p in enumerate(pixels):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(p).save(paths[-1])
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    q_feat, g_feat = rng.normal(size=(2, 3)), rng.normal(size=(5, 3))
    fusion = build_reranker("pair", model=MeanColourPairNet(), top=4, weight=0.5)
    from_paths = fusion(q_feat, g_feat, query_images=paths[:2], gallery_images=np.array(paths[2:]))
    from_tensors = fusion(q_feat, g_feat, query_images=tensor[:2], gallery_images=tensor[2:])
    np.testing.assert_array_equal(from_paths, from_tensors)


# ------------------------------------------------------------------------------- candidate pool vs full

def _normalised(rng, n, dim=5):
    x = rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pair_fusion_on_a_search_pool_equals_the_full_problem_and_a_plain_loop():
    rng = np.random.default_rng(12)
    queries, gallery = _normalised(rng, 4), _normalised(rng, 40)
    images = torch.from_numpy(rng.integers(0, 256, (44, 3, 4, 2), dtype=np.uint8))
    net = MeanColourPairNet()
    fusion = build_reranker("pair", model=net, top=6, weight=0.6)
    cosine = 1.0 - queries @ gallery.T
    full = fusion(queries, gallery, distances=cosine, query_images=images[:4], gallery_images=images[4:])
    first_stage = np.argsort(cosine, axis=1, kind="stable")[:, :10]  # what an exact search returns (top 10)
    rows, distances = rerank_pool(fusion, queries, gallery, first_stage, k=8, query_images=images[:4],
                                  gallery_images=images[4:])
    means = images.float().mean(dim=(1, 2, 3)).numpy()
    for i in range(4):
        expected = naive_fusion(cosine[i], lambda j, i=i: -abs(means[i] - means[4 + j]), 6, 0.6)
        assert list(np.argsort(full[i], kind="stable")) == expected
        assert list(rows[i]) == expected[:8]
    assert np.all(np.diff(distances, axis=1) > 0)
    assert net.calls[-1] == 4 * 6  # the pool run scored each query's top-6 pairs only


def test_k_reciprocal_then_pair_fusion_is_the_composition():
    rng = np.random.default_rng(3)
    queries, gallery = _normalised(rng, 3), _normalised(rng, 25)
    images = torch.from_numpy(rng.integers(0, 256, (28, 3, 4, 2), dtype=np.uint8))
    kr = build_reranker("k_reciprocal", k1=5, k2=2)
    fusion = build_reranker("pair", model=MeanColourPairNet(), top=5)
    chained = Chain((kr, fusion))(queries, gallery, query_images=images[:3], gallery_images=images[3:])
    kr_dist = public_re_ranking(*three_distances(queries, gallery), k1=5, k2=2)
    means = images.float().mean(dim=(1, 2, 3)).numpy()
    for i in range(3):
        expected = naive_fusion(kr_dist[i], lambda j, i=i: -abs(means[i] - means[3 + j]), 5, 1.0)
        assert list(np.argsort(chained[i], kind="stable"))[:5] == expected[:5]
