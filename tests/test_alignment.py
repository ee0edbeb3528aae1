"""AlignedReID alignment against independent references: hand-computed squashing values, a plain recursive
shortest path with memo, plain loops for stripe distances and the local branch."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch

from reidkit.errors import DataError, ModelError
from reidkit.metrics.alignment import (
    aligned_distance_matrix,
    local_distance,
    local_distance_pairs,
    shortest_path,
    squash_distance,
)
from reidkit.models.aligned import LocalBranch


def recursive_shortest_path(grid: np.ndarray) -> tuple[float, set[tuple[int, int]]]:
    """Cheapest right/down path cost from (0, 0) to (m-1, n-1) by plain recursion with memo, and its cells."""

    @cache
    def best(i: int, j: int) -> tuple[float, tuple[tuple[int, int], ...]]:
        if i == 0 and j == 0:
            return float(grid[0, 0]), ((0, 0),)
        options = []
        if i > 0:
            options.append(best(i - 1, j))
        if j > 0:
            options.append(best(i, j - 1))
        cost, path = min(options, key=lambda option: option[0])
        return cost + float(grid[i, j]), path + ((i, j),)

    cost, path = best(grid.shape[0] - 1, grid.shape[1] - 1)
    return cost, set(path)


def naive_local_distance(x: np.ndarray, y: np.ndarray) -> float:
    grid = np.zeros((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            e = math.exp(math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], y[j], strict=True))))
            grid[i, j] = (e - 1.0) / (e + 1.0)
    return recursive_shortest_path(grid)[0]


def test_squash_distance_hand_values():
    # (e^1 - 1) / (e^1 + 1) = 1.718281828 / 3.718281828 = 0.4621171573; x = 0 -> 0; large x -> 1 (no overflow).
    got = squash_distance(torch.tensor([0.0, 1.0, 1000.0], dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), [0.0, 0.46211715726000974, 1.0], rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (3, 3), (8, 8), (5, 7), (7, 4)])
def test_shortest_path_matches_recursive_reference(shape):
    rng = np.random.default_rng(sum(shape))
    grids = rng.uniform(0.0, 1.0, size=(6, *shape))
    got = shortest_path(torch.from_numpy(grids))
    expected = [recursive_shortest_path(g)[0] for g in grids]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_shortest_path_hand_example():
    # Right along the cheap top row, then down the cheap last column: 1 + 1 + 1 + 1 + 1 = 5.
    grid = torch.tensor([[1.0, 1.0, 1.0], [9.0, 9.0, 1.0], [9.0, 9.0, 1.0]])
    assert shortest_path(grid).item() == pytest.approx(5.0)


def test_shortest_path_keeps_batch_shape_and_gradient_marks_path():
    rng = np.random.default_rng(3)
    grids = torch.tensor(rng.uniform(size=(2, 3, 5, 6)), requires_grad=True)
    cost = shortest_path(grids)
    assert cost.shape == (2, 3)
    cost.sum().backward()
    # d(path cost)/d(cell) is 1 on the optimal path and 0 elsewhere.
    for a in range(2):
        for b in range(3):
            _, path = recursive_shortest_path(grids[a, b].detach().numpy())
            indicator = np.zeros((5, 6))
            for i, j in path:
                indicator[i, j] = 1.0
            np.testing.assert_array_equal(grids.grad[a, b].numpy(), indicator)


def test_local_distance_pairs_matches_naive():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 6, 3))
    y = rng.normal(size=(5, 4, 3))
    got = local_distance_pairs(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(got.numpy(), [naive_local_distance(a, b) for a, b in zip(x, y, strict=True)],
                               rtol=1e-9)


def test_local_distance_all_pairs_matches_naive_and_is_chunk_independent():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 5, 4)).astype(np.float32)
    y = rng.normal(size=(9, 6, 4)).astype(np.float32)
    expected = np.array([[naive_local_distance(a, b) for b in y] for a in x])
    for chunk in (None, 1, 3):
        got = local_distance(torch.from_numpy(x), torch.from_numpy(y), chunk_size=chunk)
        assert got.shape == (7, 9)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_local_distance_identical_and_unequal_stripes_by_hand():
    # Only right/down moves: even x against itself pays for one off-diagonal cell, here
    # (0,0) -> (0,1) -> (1,1) = 0 + tanh(|0 - 1| / 2) + 0.
    x = torch.tensor([[[0.0], [1.0]]])
    assert local_distance_pairs(x, x).item() == pytest.approx(math.tanh(0.5), rel=1e-6)
    # x = [0, 1], y = [0, 0, 1]: squashed grid rows [0, 0, t], [t, t, 0] with t = tanh(1/2). Every path
    # crosses from row 0 to row 1 in some column j, paying d(0, j) + d(1, j) = t; all other cells cost 0.
    y = torch.tensor([[[0.0], [0.0], [1.0]]])
    assert local_distance_pairs(x, y).item() == pytest.approx(math.tanh(0.5), rel=1e-6)


def test_aligned_distance_matrix_global_plus_weighted_local():
    rng = np.random.default_rng(6)
    qg, gg = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    ql, gl = rng.normal(size=(3, 4, 2)), rng.normal(size=(4, 4, 2))
    global_only = np.array([[np.linalg.norm(q - g) for g in gg] for q in qg])
    local = np.array([[naive_local_distance(a, b) for b in gl] for a in ql])
    t = [torch.from_numpy(v) for v in (qg, gg, ql, gl)]
    np.testing.assert_allclose(aligned_distance_matrix(*t, weight=0.0).numpy(), global_only, atol=1e-5)
    np.testing.assert_allclose(aligned_distance_matrix(*t, weight=0.5).numpy(), global_only + 0.5 * local,
                               atol=1e-5)


def test_alignment_rejects_bad_shapes():
    with pytest.raises(DataError, match="x_local"):
        local_distance(torch.zeros(2, 3), torch.zeros(2, 3, 4))
    with pytest.raises(DataError, match="feature dimension"):
        local_distance(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(DataError, match="equal counts"):
        local_distance_pairs(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))
    with pytest.raises(DataError, match="required"):
        aligned_distance_matrix(torch.zeros(2, 4), torch.zeros(3, 4), weight=1.0)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_local_branch_matches_manual_computation(pool):
    torch.manual_seed(0)
    branch = LocalBranch(in_channels=6, local_dim=4, pool=pool).eval()
    with torch.no_grad():
        branch.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        branch.bn.running_var.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
    feature_map = torch.randn(2, 6, 5, 3)
    got = branch(feature_map)
    assert got.shape == (2, 5, 4)

    weight = branch.reduce.weight.detach()[:, :, 0, 0].numpy()  # (4, 6)
    bn = branch.bn
    fmap = feature_map.numpy()
    for n in range(2):
        for h in range(5):
            row = fmap[n, :, h, :]
            pooled = row.max(axis=1) if pool == "max" else row.mean(axis=1)
            for k in range(4):
                z = sum(weight[k, c] * pooled[c] for c in range(6))
                z = (z - bn.running_mean[k].item()) / math.sqrt(bn.running_var[k].item() + bn.eps)
                z = z * bn.weight[k].item() + bn.bias[k].item()
                assert got[n, h, k].item() == pytest.approx(max(z, 0.0), abs=1e-5)


def test_local_branch_rejects_bad_input():
    branch = LocalBranch(in_channels=8)
    with pytest.raises(ModelError, match=r"\(N, 8, H, W\)"):
        branch(torch.zeros(2, 7, 4, 2))
    with pytest.raises(ModelError, match="pool"):
        LocalBranch(8, pool="median")
