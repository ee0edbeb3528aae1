"""reidkit.metrics against independent references: per-query loops transcribing torchreid's definitions
(stable order for ties), the Market-1501 MATLAB AP loop, hand-computed values and naive distance loops."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import cdist

from reidkit.cli.main import main
from reidkit.distance import METRICS, pairwise_distance
from reidkit.errors import DataError, ReIDError
from reidkit.metrics import (
    compute_distance_matrix,
    evaluate_rank,
    evaluate_rank_full,
    plot_cmc,
    ranked_list_grid,
    summarize,
)
from reidkit.metrics.plots import (
    BACKGROUND,
    OTHER_COLOUR,
    QUERY_COLOUR,
    SAME_COLOUR,
    UNKNOWN_COLOUR,
    RankedCell,
    RankedLayout,
    cmc_figure,
    draw_ranked_lists,
)

# ------------------------------------------------------------------------------------ loop references


def _reference_kept_matches(distmat, q_pids, g_pids, q_camids, g_camids, q_idx):
    """torchreid's per-query filtering, with a stable sort: returns (raw_cmc 0/1 list, kept gallery pids)."""
    order = np.argsort(distmat[q_idx], kind="stable")
    raw_cmc, kept_pids = [], []
    for g in order:
        if g_pids[g] == q_pids[q_idx] and g_camids[g] == q_camids[q_idx]:
            continue  # junk: same identity seen by the query's own camera
        raw_cmc.append(int(g_pids[g] == q_pids[q_idx]))
        kept_pids.append(g_pids[g])
    return raw_cmc, kept_pids


def _reference_ap(raw_cmc, definition):
    num_rel, hits, total = sum(raw_cmc), 0, 0.0
    if definition == "torchreid":
        for i, is_hit in enumerate(raw_cmc):
            if is_hit:
                hits += 1
                total += hits / (i + 1)
        return total / num_rel
    # Market-1501 compute_AP.m: trapezoids between consecutive kept positions' recall/precision.
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    for j, is_hit in enumerate(raw_cmc):
        hits += is_hit
        recall, precision = hits / num_rel, hits / (j + 1)
        ap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
    return ap


def _reference_inp(raw_cmc):
    last = max(i for i, is_hit in enumerate(raw_cmc) if is_hit)
    return sum(raw_cmc) / (last + 1)


def reference_market(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, ap="torchreid"):
    max_rank = min(max_rank, distmat.shape[1])
    all_cmc, all_ap, all_inp, skipped = [], [], [], []
    for q in range(distmat.shape[0]):
        raw_cmc, _ = _reference_kept_matches(distmat, q_pids, g_pids, q_camids, g_camids, q)
        if not any(raw_cmc):
            skipped.append(q)
            continue
        cmc, seen = [], 0
        for k in range(max_rank):
            seen = seen or (k < len(raw_cmc) and raw_cmc[k])
            cmc.append(1.0 if seen else 0.0)
        all_cmc.append(cmc)
        all_ap.append(_reference_ap(raw_cmc, ap))
        all_inp.append(_reference_inp(raw_cmc))
    return np.mean(all_cmc, axis=0), np.mean(all_ap), np.mean(all_inp), skipped


def reference_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, seed, num_repeats=10):
    """torchreid's eval_cuhk03 loop, drawing with np.random.RandomState(seed).choice in the same order."""
    rng = np.random.RandomState(seed)
    max_rank = min(max_rank, distmat.shape[1])
    all_cmc, all_ap = [], []
    for q in range(distmat.shape[0]):
        raw_cmc, kept_pids = _reference_kept_matches(distmat, q_pids, g_pids, q_camids, g_camids, q)
        if not any(raw_cmc):
            continue
        positions_by_pid = defaultdict(list)
        for position, pid in enumerate(kept_pids):
            positions_by_pid[pid].append(position)
        cmc = np.zeros(max_rank)
        for _ in range(num_repeats):
            chosen = sorted(rng.choice(positions) for positions in positions_by_pid.values())
            single_shot = [raw_cmc[p] for p in chosen]
            first_hit = single_shot.index(1)
            cmc += [1.0 if k >= first_hit else 0.0 for k in range(max_rank)]
        all_cmc.append(cmc / num_repeats)
        all_ap.append(_reference_ap(raw_cmc, "torchreid"))
    return np.mean(all_cmc, axis=0), np.mean(all_ap)


def random_case(seed, num_query=40, num_gallery=120, num_ids=15, num_cams=3, integer_distances=True):
    """Ties (small integer distances), distractors (pid 0), junk, and queries with no valid match."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, num_ids, num_gallery)  # pid 0 = distractors
    g_camids = rng.integers(0, num_cams, num_gallery)
    q_pids = rng.integers(1, num_ids + 3, num_query)  # some identities absent from the gallery
    q_camids = rng.integers(0, num_cams, num_query)
    # Some queries whose identity appears only under their own camera (every match is junk).
    lonely_pid = num_ids + 5
    g_pids[:3], g_camids[:3] = lonely_pid, 0
    q_pids[:2], q_camids[:2] = lonely_pid, 0
    if integer_distances:
        distmat = rng.integers(0, 6, (num_query, num_gallery)).astype(np.float32)
    else:
        distmat = rng.random((num_query, num_gallery))
    return distmat, q_pids, g_pids, q_camids, g_camids


# --------------------------------------------------------------------------------------- rank metrics


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ap", ["torchreid", "market-official"])
def test_market_matches_loop_reference(seed, ap):
    case = random_case(seed, integer_distances=seed % 2 == 0)
    ref_cmc, ref_map, ref_minp, ref_skipped = reference_market(*case, max_rank=20, ap=ap)
    result = evaluate_rank_full(*case, max_rank=20, ap=ap, chunk_size=7)  # several chunks
    np.testing.assert_allclose(result.cmc, ref_cmc, atol=1e-6)
    assert result.mAP == pytest.approx(ref_map, abs=1e-12)
    assert result.mINP == pytest.approx(ref_minp, abs=1e-12)
    assert result.skipped_queries.tolist() == ref_skipped
    assert result.num_valid_queries == case[0].shape[0] - len(ref_skipped)
    assert result.num_skipped_queries >= 2  # the lonely queries are reported, not silently dropped


def test_heavy_ties_and_infinite_distances():
    distmat, q_pids, g_pids, q_camids, g_camids = random_case(11, integer_distances=True)
    distmat = (distmat > 2).astype(np.float64)  # only two distinct distances
    distmat[:, ::7] = np.inf
    ref_cmc, ref_map, ref_minp, _ = reference_market(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    result = evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    np.testing.assert_allclose(result.cmc, ref_cmc, atol=1e-6)
    assert (result.mAP, result.mINP) == pytest.approx((ref_map, ref_minp), abs=1e-12)


def test_binned_bucket_counts_equal_naive_counts():
    from reidkit.metrics.rank import _binned_bucket

    rng = np.random.default_rng(0)
    num_rows, width, num_items = 6, 5, 300
    num_real = rng.integers(1, width + 1, num_rows)
    thresholds = np.sort(rng.integers(0, 40, (num_rows, width)), axis=1).astype(np.float64) / 4
    for r in range(num_rows):  # padding after the real thresholds repeats the row's largest one
        thresholds[r, num_real[r]:] = thresholds[r, num_real[r] - 1]
    items = rng.integers(-4, 48, (num_rows, num_items)).astype(np.float64) / 4  # exact hits on thresholds
    items[:, :3] = [-np.inf, np.inf, 1e300]
    bucket = _binned_bucket(torch.from_numpy(thresholds), torch.from_numpy(num_real), torch.from_numpy(items))
    assert bucket is not None  # the binned path really ran
    for r in range(num_rows):
        for g in range(num_items):
            assert bucket[r, g] == sum(t <= items[r, g] for t in thresholds[r, :num_real[r]]), (r, g)


def test_searchsorted_fallback_gives_the_same_numbers(monkeypatch):
    import reidkit.metrics.rank as rank

    case = random_case(5, integer_distances=False)
    monkeypatch.setattr(rank, "_binned_bucket", lambda *args: None)
    result = evaluate_rank_full(*case, max_rank=20)
    ref_cmc, ref_map, ref_minp, _ = reference_market(*case, max_rank=20)
    np.testing.assert_allclose(result.cmc, ref_cmc, atol=1e-6)
    assert (result.mAP, result.mINP) == pytest.approx((ref_map, ref_minp), abs=1e-12)


def test_ties_only_among_true_matches():
    distmat, q_pids, g_pids, q_camids, g_camids = random_case(12, integer_distances=False)
    for q in range(len(q_pids)):  # all of a query's true matches at one distance; other items never equal it
        matches = np.flatnonzero((g_pids == q_pids[q]) & (g_camids != q_camids[q]))
        distmat[q, matches] = distmat[q, matches[:1]] if matches.size else distmat[q, matches]
    ref_cmc, ref_map, ref_minp, _ = reference_market(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    result = evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    np.testing.assert_allclose(result.cmc, ref_cmc, atol=1e-6)
    assert (result.mAP, result.mINP) == pytest.approx((ref_map, ref_minp), abs=1e-12)


def test_evaluate_rank_is_torchreid_shaped_and_accepts_tensors():
    case = random_case(3, integer_distances=False)
    tensors = [torch.as_tensor(a) for a in case]
    cmc, mAP = evaluate_rank(*tensors, max_rank=10, use_metric_cuhk03=False, use_cython=False)
    ref_cmc, ref_map, _, _ = reference_market(*case, max_rank=10)
    assert isinstance(cmc, np.ndarray) and cmc.dtype == np.float32 and cmc.shape == (10,)
    assert isinstance(mAP, float)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert mAP == pytest.approx(ref_map, abs=1e-12)


def test_thread_setting_is_restored_after_evaluation():
    before = torch.get_num_threads()
    evaluate_rank(*random_case(2), max_rank=5, num_threads=1)
    assert torch.get_num_threads() == before


def test_max_rank_larger_than_gallery_warns_and_clips():
    distmat, q_pids, g_pids, q_camids, g_camids = random_case(4, num_gallery=30)
    with pytest.warns(UserWarning, match="max_rank=50 exceeds the gallery size 30"):
        cmc, _ = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)
    ref_cmc, *_ = reference_market(distmat, q_pids, g_pids, q_camids, g_camids, 30)
    assert cmc.shape == (30,)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert cmc[-1] == pytest.approx(1.0)  # every valid query is matched by the end of its kept list


def test_hand_computed_ap_both_definitions():
    # Ranked gallery: hit, junk, miss, hit, miss, hit (the junk item is dropped before ranking).
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    g_pids = np.array([7, 7, 3, 7, 0, 7])
    g_camids = np.array([2, 1, 2, 2, 2, 2])
    q_pids, q_camids = np.array([7]), np.array([1])
    # Kept list: hit, miss, hit, miss, hit -> hits at ranks 1, 3, 5.
    expected_torchreid = (1 / 1 + 2 / 3 + 3 / 5) / 3
    expected_official = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 4 + 3 / 5) / 2) / 3
    for ap, expected in (("torchreid", expected_torchreid), ("market-official", expected_official)):
        result = evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=5, ap=ap)
        assert result.mAP == pytest.approx(expected, abs=1e-12)
        assert result.mINP == pytest.approx(3 / 5)
        np.testing.assert_array_equal(result.cmc, [1, 1, 1, 1, 1])
    assert expected_official == pytest.approx(0.711111, abs=1e-6)
    assert expected_torchreid == pytest.approx(0.755556, abs=1e-6)


def test_ties_follow_gallery_index_order():
    distmat = np.array([[1.0, 1.0, 1.0]])
    q = (np.array([5]), np.array([0]))
    first_wrong = evaluate_rank_full(distmat, q[0], np.array([2, 5, 5]), q[1], np.array([1, 1, 1]), max_rank=3)
    np.testing.assert_array_equal(first_wrong.cmc, [0, 1, 1])
    assert first_wrong.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_cmc_padding_when_kept_list_is_shorter_than_max_rank():
    # 4 gallery items, 3 of them junk for the query: the kept list has 1 item.
    distmat = np.array([[0.4, 0.1, 0.2, 0.3]])
    result = evaluate_rank_full(distmat, np.array([1]), np.array([1, 1, 1, 1]), np.array([0]),
                                np.array([1, 0, 0, 0]), max_rank=4)
    np.testing.assert_array_equal(result.cmc, [1, 1, 1, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cuhk03_classic_matches_loop_reference(seed):
    case = random_case(seed + 20, num_query=25, num_gallery=80, integer_distances=seed != 1)
    ref_cmc, ref_map = reference_cuhk03(*case, max_rank=15, seed=seed)
    result = evaluate_rank_full(*case, max_rank=15, use_metric_cuhk03=True, seed=seed, chunk_size=4)
    np.testing.assert_allclose(result.cmc, ref_cmc, atol=1e-6)
    assert result.mAP == pytest.approx(ref_map, abs=1e-12)
    assert result.protocol == "cuhk03"


def test_cuhk03_is_reproducible_and_seed_none_uses_global_generator():
    case = random_case(30, num_query=20, num_gallery=60)
    first = evaluate_rank(*case, max_rank=10, use_metric_cuhk03=True)
    second = evaluate_rank(*case, max_rank=10, use_metric_cuhk03=True)
    np.testing.assert_array_equal(first[0], second[0])
    np.random.seed(5)
    from_global = evaluate_rank(*case, max_rank=10, use_metric_cuhk03=True, seed=None)
    np.testing.assert_array_equal(from_global[0], evaluate_rank(*case, max_rank=10, use_metric_cuhk03=True,
                                                                seed=5)[0])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: (c[0][:, :0], *c[1:]), "empty"),
        (lambda c: (c[0][0], *c[1:]), "2-D"),
        (lambda c: (c[0], c[1][:-1], *c[2:]), "q_pids"),
        (lambda c: (*c[:4], c[4][:-1]), "g_camids"),
        (lambda c: (np.where(c[0] > 4, np.nan, c[0]), *c[1:]), "NaN"),
        (lambda c: (c[0], c[1] + 1000, *c[2:]), "no query has a valid match"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, message):
    case = random_case(1)
    with pytest.raises(ReIDError, match=message) as info:
        evaluate_rank(*mutate(case))
    assert isinstance(info.value, ValueError)


def test_unknown_ap_definition_is_rejected():
    with pytest.raises(ReIDError, match="ap: unknown"):
        evaluate_rank_full(*random_case(1), ap="interpolated")


# ------------------------------------------------------------------------------------------ distances


def _naive_distances(a, b, metric):
    """Plain loop over pairs, straight from the definitions in reidkit.distance's docstring."""
    out = np.empty((len(a), len(b)))
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            if metric == "cosine":
                out[i, j] = 1 - x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
            else:
                squared = sum((x - y) ** 2)
                out[i, j] = squared if metric == "sqeuclidean" else np.sqrt(squared)
    return out


@pytest.mark.parametrize("metric", METRICS)
def test_distance_matrix_matches_naive_loop_and_scipy(metric):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(9, 5)), rng.normal(size=(13, 5))
    expected = _naive_distances(a, b, metric)
    np.testing.assert_allclose(cdist(a, b, metric), expected, atol=1e-12)  # the loop reads the names as scipy
    got = compute_distance_matrix(a, b, metric=metric, chunk_size=4)
    assert isinstance(got, np.ndarray) and got.shape == (9, 13)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    got_t = compute_distance_matrix(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32),
                                    metric=metric)
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32
    np.testing.assert_allclose(got_t.numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_training_and_evaluation_distances_mean_the_same(metric):
    # The differentiable entry point (losses, miners) against scipy: one vocabulary, whoever computes it.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(7, 4))
    x = torch.tensor(a, requires_grad=True)
    got = pairwise_distance(x, torch.tensor(b), metric)
    np.testing.assert_allclose(got.detach().numpy(), cdist(a, b, metric), atol=1e-9)
    got.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_euclidean_is_the_square_root_of_sqeuclidean():
    # The old trap: "euclidean" meant squared L2 in evaluation but true L2 in training.
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[3.0, 4.0]])
    np.testing.assert_allclose(compute_distance_matrix(a, b, "euclidean"), [[5.0], [np.sqrt(13.0)]])
    np.testing.assert_allclose(compute_distance_matrix(a, b, "sqeuclidean"), [[25.0], [13.0]])
    # The zero vector has no direction: it is normalised to 0, so it is at cosine distance 1 from everything.
    np.testing.assert_allclose(compute_distance_matrix(a, b, "cosine"), [[1.0], [1 - 7 / (5 * np.sqrt(2))]],
                               atol=1e-12)


def test_distance_matrix_rejects_bad_input():
    with pytest.raises(ReIDError, match="feature sizes differ"):
        compute_distance_matrix(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ReIDError, match="metric"):
        compute_distance_matrix(np.zeros((2, 3)), np.zeros((2, 3)), metric="l2")  # not a name in reidkit
    with pytest.raises(ReIDError, match="2-D"):
        compute_distance_matrix(np.zeros(3), np.zeros((2, 3)))


# ------------------------------------------------------------------------------------- summary, plots


def test_summarize_reports_percentages():
    cmc = np.array([0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.86, 0.87, 0.88, 0.9, 0.95], dtype=np.float32)
    summary = summarize(cmc, 0.4, 0.25)
    assert summary["rank1"] == pytest.approx(50.0)
    assert summary["rank5"] == pytest.approx(80.0)
    assert summary["rank10"] == pytest.approx(90.0)
    assert summary["mAP"] == pytest.approx(40.0)
    assert summary["mINP"] == pytest.approx(25.0)
    short = summarize(cmc[:3], 0.4, 0.25)  # gallery smaller than 10: the curve is flat after its end
    assert short["rank10"] == pytest.approx(70.0)


def test_cmc_figure_shows_named_curves_in_percent_over_integer_ranks(tmp_path):
    untrained, trained = np.linspace(0.05, 0.6, 20), np.linspace(0.5, 1.0, 20)
    figure = cmc_figure({"untrained": untrained, "trained": trained}, title="test")
    figure.canvas.draw()
    axes = figure.axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    # Legend entries carry rank-1 in percent, computed by hand from the first entries (0.05, 0.5).
    assert set(lines) == {"untrained: rank-1 5.0%", "trained: rank-1 50.0%"}
    np.testing.assert_allclose(lines["trained: rank-1 50.0%"].get_ydata(), 100 * trained)
    np.testing.assert_array_equal(lines["trained: rank-1 50.0%"].get_xdata(), np.arange(1, 21))
    ticks = axes.get_xticks()
    assert 1 in ticks and all(float(t).is_integer() and 1 <= t <= 20 for t in ticks)
    assert all(label.get_text().endswith("%") for label in axes.get_yticklabels() if label.get_text())
    assert axes.get_xlabel() and axes.get_ylabel() and axes.get_title() == "test"
    path = plot_cmc({"a": untrained}, tmp_path / "plots" / "cmc.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100


def _write_images(tmp_path, names_colours):
    paths = []
    for name, colour in names_colours:
        Image.new("RGB", (16, 32), colour).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths


def _frame_runs(picture, y, x_end):
    """Colours of the frames crossed by the row y, left to right (one entry per frame)."""
    frame_colours = {QUERY_COLOUR, SAME_COLOUR, OTHER_COLOUR}
    runs, previous = [], None
    for x in range(x_end):
        pixel = picture.getpixel((x, y))
        if pixel in frame_colours and pixel != previous:
            runs.append(pixel)
        previous = pixel if pixel in frame_colours else None
    return runs


def test_ranked_list_grid_frames_images_and_cell_count(tmp_path):
    q_colours = [(0, 0, 255), (255, 255, 0)]
    q_paths = _write_images(tmp_path, [(f"q{i}.png", c) for i, c in enumerate(q_colours)])
    g_colours = [(20 * i, 10, 10) for i in range(5)]
    g_paths = _write_images(tmp_path, [(f"g{i}.png", c) for i, c in enumerate(g_colours)])
    q_pids, q_camids = np.array([1, 2]), np.array([0, 0])
    g_pids, g_camids = np.array([1, 2, 1, 3, 2]), np.array([0, 1, 1, 1, 1])
    distmat = np.array([[0.0, 0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2, 0.1]])
    out = tmp_path / "grid.png"
    ranked_list_grid(q_paths, g_paths, distmat, q_pids, g_pids, q_camids, g_camids, out, topk=10,
                     num_queries=2, cell_size=(32, 16), border=2, gap=2)
    # By hand: query 0 drops g0 (pid 1, camera 0 = its own: junk) -> g1 other, g2 same, g3 other, g4 other;
    # query 1 keeps all five -> g4 same, g3 other, g2 other, g1 same, g0 other. topk=10 > what is left.
    expected = [[1, 2, 3, 4], [4, 3, 2, 1, 0]]
    layout = RankedLayout(cell_size=(32, 16), border=2, gap=2)
    with Image.open(out) as grid:
        grid = grid.convert("RGB")
        for row, shown in enumerate(expected):
            left, top, right, bottom = layout.frame_box(row, 0)
            assert grid.getpixel((left, top)) == QUERY_COLOUR
            assert _close(grid.getpixel(((left + right) // 2, (top + bottom) // 2)), q_colours[row])
            frames = _frame_runs(grid, top, grid.width)
            assert len(frames) == 1 + len(shown)  # the query + one cell per remaining gallery image
            for col, g in enumerate(shown, start=1):
                left, top, right, bottom = layout.frame_box(row, col)
                same = g_pids[g] == q_pids[row]
                assert grid.getpixel((left, top)) == (SAME_COLOUR if same else OTHER_COLOUR), (row, col)
                assert frames[col] == (SAME_COLOUR if same else OTHER_COLOUR)
                assert _close(grid.getpixel(((left + right) // 2, (top + bottom) // 2)), g_colours[g])


def test_search_picture_uses_the_same_drawing_with_unknown_identities(tmp_path):
    from reidkit.search.picture import ranked_list_picture

    a, b = _write_images(tmp_path, [("a.png", (0, 0, 0)), ("b.png", (200, 200, 0))])
    hits = [[{"rank": 1, "score": 0.9, "path": a, "pid": 5}, {"rank": 2, "score": 0.5, "path": b, "pid": 6},
             {"rank": 3, "score": 0.4, "path": str(tmp_path / "gone.png"), "pid": None}],
            [{"rank": 1, "score": 0.7, "path": b, "pid": 6}]]
    layout = RankedLayout(cell_size=(40, 20), border=3, gap=3)
    out = ranked_list_picture([a, b], hits, tmp_path / "r.png", query_pids=[5, None], cell_size=(40, 20),
                              border=3, gap=3)
    with Image.open(out) as picture:
        picture = picture.convert("RGB")
        corner = [[picture.getpixel(layout.frame_box(r, c)[:2]) for c in range(1 + len(h))]
                  for r, h in enumerate(hits)]
        # Row 0: query pid 5 -> same, other, unknown (no pid; its file is missing: a grey tile, no error).
        # Row 1: the query's pid is unknown, so nothing can be called same or different.
        assert corner == [[QUERY_COLOUR, SAME_COLOUR, OTHER_COLOUR, UNKNOWN_COLOUR], [QUERY_COLOUR, UNKNOWN_COLOUR]]
        left, top, right, bottom = layout.frame_box(0, 3)
        assert picture.getpixel(((left + right) // 2, (top + bottom) // 2)) == UNKNOWN_COLOUR
        left, top, _, _ = layout.frame_box(1, 2)  # row 1 has one hit: the second result cell stays empty
        assert picture.getpixel((left + 5, top + 5)) == BACKGROUND


def test_ranked_lists_name_an_unreadable_image_when_strict(tmp_path):
    rows = [(RankedCell(str(tmp_path / "missing.jpg"), "query"), [])]
    with pytest.raises(DataError, match="missing.jpg: cannot read image"):
        draw_ranked_lists(rows, tmp_path / "x.png", "title")
    assert not (tmp_path / "x.png").exists()


def _close(a, b, tol=3):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------ CLI


def _save_case(tmp_path, **overrides):
    distmat, q_pids, g_pids, q_camids, g_camids = random_case(8, integer_distances=False)
    arrays = dict(distmat=distmat, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids)
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / "case.npz"
    np.savez(path, **arrays)
    return path, (distmat, q_pids, g_pids, q_camids, g_camids)


def test_cli_evaluate_distmat_writes_json(tmp_path, capsys):
    path, case = _save_case(tmp_path)
    out = tmp_path / "report" / "metrics.json"
    assert main(["evaluate", "--distmat", str(path), "--out", str(out), "--ap", "market-official"]) == 0
    ref_cmc, ref_map, ref_minp, ref_skipped = reference_market(*case, max_rank=50, ap="market-official")
    report = json.loads(out.read_text())
    assert report["rank1"] == pytest.approx(100 * ref_cmc[0], abs=1e-4)
    assert report["rank5"] == pytest.approx(100 * ref_cmc[4], abs=1e-4)
    assert report["mAP"] == pytest.approx(100 * ref_map, abs=1e-9)
    assert report["mINP"] == pytest.approx(100 * ref_minp, abs=1e-9)
    assert report["skipped_queries"] == ref_skipped
    assert (out.parent / "metrics_cmc.png").is_file()  # named after the JSON
    printed = capsys.readouterr().out
    assert "R1" in printed and "mINP" in printed and f"{len(ref_skipped)} skipped" in printed


def test_cli_evaluate_features(tmp_path):
    rng = np.random.default_rng(2)
    qf, gf = rng.normal(size=(12, 6)).astype(np.float32), rng.normal(size=(40, 6)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 5, 12), rng.integers(0, 5, 40)
    q_camids, g_camids = rng.integers(0, 2, 12), rng.integers(0, 2, 40)
    paths = []
    for i in range(52):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.new("RGB", (8, 16), (i * 4, 0, 0)).save(paths[-1])
    path = tmp_path / "features.npz"
    np.savez(path, query_features=qf, gallery_features=gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
             g_camids=g_camids, q_paths=np.array(paths[:12]), g_paths=np.array(paths[12:]))
    out = tmp_path / "metrics.json"
    args = ["evaluate", "--features", str(path), "--metric", "cosine", "--max-rank", "20", "--out", str(out)]
    assert main(args) == 0
    distmat = _naive_distances(qf.astype(np.float64), gf.astype(np.float64), "cosine")
    ref_cmc, ref_map, _, _ = reference_market(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    report = json.loads(out.read_text())
    assert report["mAP"] == pytest.approx(100 * ref_map, abs=1e-4)
    assert report["rank1"] == pytest.approx(100 * ref_cmc[0], abs=1e-4)
    assert report["metric"] == "cosine" and len(report["cmc"]) == 20
    with Image.open(tmp_path / "metrics_ranked.png") as grid:
        assert grid.width > 0


def test_cli_bad_npz_exit_code_2(tmp_path, capsys):
    path, _ = _save_case(tmp_path, g_camids=None)
    assert main(["evaluate", "--distmat", str(path)]) == 2
    err = capsys.readouterr().err
    assert "g_camids" in err and str(path) in err
    missing = tmp_path / "nope.npz"
    assert main(["evaluate", "--distmat", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("hello")
    assert main(["evaluate", "--distmat", str(not_npz)]) == 2
    assert str(not_npz) in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "model.pt")]) == 2
    assert "--data" in capsys.readouterr().err


def test_cli_evaluate_checkpoint_on_dataset(tiny_market, tmp_path, monkeypatch):
    import reidkit.inference.extractor as extractor
    from reidkit.checkpoint import save_checkpoint
    from reidkit.models import build_model

    extracted = {}

    def spy(*args, **kwargs):  # record what the command evaluates, without extracting twice
        extracted.update(real_extract(*args, **kwargs))
        return extracted

    real_extract = extractor.extract_split_features
    monkeypatch.setattr(extractor, "extract_split_features", spy)
    torch.manual_seed(0)
    model_cfg = {"backbone": "simple_cnn", "pooling": "avg", "input_size": (64, 32)}
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model=build_model("embedding", **model_cfg), model_name="embedding",
                    model_cfg=model_cfg, epoch=0)
    out = tmp_path / "eval" / "metrics.json"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(tiny_market), "--out", str(out), "--quiet",
            "--device", "cpu", "--max-rank", "5"]
    assert main(args) == 0
    # Same float32 distances as the command (the distance function has its own test against a naive loop),
    # so near-ties of an untrained model order identically; the metrics come from the loop reference.
    distmat = compute_distance_matrix(extracted["query_features"], extracted["gallery_features"], "sqeuclidean")
    ref_cmc, ref_map, _, _ = reference_market(distmat, extracted["q_pids"], extracted["g_pids"],
                                              extracted["q_camids"], extracted["g_camids"], 5)
    report = json.loads(out.read_text())
    assert report["mAP"] == pytest.approx(100 * ref_map, abs=1e-3)
    assert report["rank1"] == pytest.approx(100 * ref_cmc[0], abs=1e-3)
    assert (out.parent / "metrics_ranked.png").is_file()
