"""Miners against plain-loop enumerations and hand-worked examples."""

from __future__ import annotations

import importlib
import itertools
import math
import sys

import pytest
import torch

from reidkit.errors import ConfigError, TrainingError
from reidkit.miners import (
    AllPairsMiner,
    AllTripletsMiner,
    BatchHardMiner,
    HardestPairMiner,
    Pairs,
    QuadrupletMiner,
    Quadruplets,
    SemiHardMiner,
    Triplets,
    as_pairs,
    as_quadruplets,
    as_triplets,
    build_miner,
    softmax_weights,
)

# Hand-worked batch: 1-D embeddings (as (B, 1)); identity 2 is a singleton (no positive).
#   index:   0    1    2    3    4     5
#   x:       0    1    3    3.5  10    6
#   label:   0    0    0    1    1     2
LINE_X = torch.tensor([[0.0], [1.0], [3.0], [3.5], [10.0], [6.0]])
LINE_LABELS = torch.tensor([0, 0, 0, 1, 1, 2])


def random_batch(seed: int, labels: list[int], dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), dim, generator=generator, dtype=torch.float64), torch.tensor(labels)


def naive_distance(x: torch.Tensor) -> list[list[float]]:
    rows = x.tolist()
    return [[math.dist(a, b) for b in rows] for a in rows]


def as_set(indices: tuple) -> set[tuple[int, ...]]:
    return set(zip(*(t.tolist() for t in indices)))


BATCH_LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 3]  # includes a singleton identity (3)


def test_all_triplets_equals_enumeration() -> None:
    x, labels = random_batch(0, BATCH_LABELS)
    y = labels.tolist()
    expected = {
        (a, p, n) for a, p, n in itertools.product(range(len(y)), repeat=3) if a != p and y[a] == y[p] and y[n] != y[a]
    }
    mined = AllTripletsMiner()(x, labels)
    assert isinstance(mined, Triplets)
    assert as_set(mined) == expected
    assert len(mined.anchor) == len(expected)  # no duplicates


def test_batch_hard_hand_worked_example() -> None:
    mined = BatchHardMiner()(LINE_X, LINE_LABELS)
    # anchor 5 (singleton) has no positive and is dropped
    assert mined.anchor.tolist() == [0, 1, 2, 3, 4]
    assert mined.positive.tolist() == [2, 2, 0, 4, 3]
    assert mined.negative.tolist() == [3, 3, 3, 2, 5]


def test_batch_hard_equals_loops_on_random_batch() -> None:
    x, labels = random_batch(1, BATCH_LABELS)
    d, y = naive_distance(x), labels.tolist()
    expected = []
    for a in range(len(y)):
        positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        if positives and negatives:
            expected.append((a, max(positives, key=lambda p: d[a][p]), min(negatives, key=lambda n: d[a][n])))
    assert sorted(as_set(BatchHardMiner()(x, labels))) == expected


def test_semi_hard_equals_condition_loops() -> None:
    x, labels = random_batch(2, BATCH_LABELS)
    d, y, margin = naive_distance(x), labels.tolist(), 0.8
    expected = {
        (a, p, n)
        for a, p, n in itertools.product(range(len(y)), repeat=3)
        if a != p and y[a] == y[p] and y[n] != y[a] and d[a][p] < d[a][n] < d[a][p] + margin
    }
    assert expected  # the example must contain some semi-hard triplets to be meaningful
    assert as_set(SemiHardMiner(margin=margin)(x, labels)) == expected


def test_semi_hard_hand_worked_example() -> None:
    # Worked by hand with margin 3; boundary cases are excluded (strict inequalities): e.g. (0, 2, 5) has
    # d(0,5) = 6 = d(0,2) + 3 and (2, 0, 5) has d(2,5) = 3 = d(2,0).
    expected = {(0, 1, 3), (0, 2, 3), (1, 0, 3), (1, 2, 3), (2, 1, 5), (4, 3, 1), (4, 3, 2)}
    assert as_set(SemiHardMiner(margin=3.0)(LINE_X, LINE_LABELS)) == expected


def test_all_pairs_equals_enumeration() -> None:
    x, labels = random_batch(3, BATCH_LABELS)
    y = labels.tolist()
    pairs = AllPairsMiner()(x, labels)
    assert isinstance(pairs, Pairs)
    positives = {(i, j) for i, j in itertools.combinations(range(len(y)), 2) if y[i] == y[j]}
    negatives = {(i, j) for i, j in itertools.combinations(range(len(y)), 2) if y[i] != y[j]}
    assert as_set(pairs[:2]) == positives and len(pairs.positive) == len(positives)
    assert as_set(pairs[2:]) == negatives and len(pairs.negative) == len(negatives)


def test_hardest_pair_hand_worked_example() -> None:
    # positive pairs: (0,1)=1, (0,2)=3, (1,2)=2, (3,4)=6.5 -> farthest (3,4); closest negative pair: (2,3)=0.5
    assert tuple(t.tolist() for t in HardestPairMiner()(LINE_X, LINE_LABELS)) == ([3], [4], [2], [3])


def test_hardest_pair_equals_loops_on_random_batch() -> None:
    x, labels = random_batch(4, BATCH_LABELS)
    d, y = naive_distance(x), labels.tolist()
    pairs = list(itertools.combinations(range(len(y)), 2))
    hardest_positive = max((p for p in pairs if y[p[0]] == y[p[1]]), key=lambda p: d[p[0]][p[1]])
    hardest_negative = min((p for p in pairs if y[p[0]] != y[p[1]]), key=lambda p: d[p[0]][p[1]])
    a1, p, a2, n = HardestPairMiner()(x, labels)
    assert (a1.item(), p.item()) == hardest_positive and (a2.item(), n.item()) == hardest_negative


def test_hardest_pair_without_positives_is_empty() -> None:
    mined = HardestPairMiner()(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    assert mined.anchor_pos.numel() == 0 and mined.anchor_neg.numel() == 1


def test_quadruplet_all_equals_enumeration() -> None:
    x, labels = random_batch(5, [0, 0, 1, 1, 2, 2, 3])
    y = labels.tolist()
    expected = {
        (a, p, n, m)
        for a, p, n, m in itertools.product(range(len(y)), repeat=4)
        if a != p and y[a] == y[p] and y[n] != y[a] and y[m] != y[a] and y[m] != y[n]
    }
    mined = QuadrupletMiner("all")(x, labels)
    assert isinstance(mined, Quadruplets)
    assert as_set(mined) == expected and len(mined.anchor) == len(expected)


def test_quadruplet_batch_hard_hand_worked_example() -> None:
    # n2 must have a third label: for anchors 0-3 only item 5 qualifies; anchor 4 (label 1) has n = 5
    # (label 2), so n2 is the label-0 item closest to x=6, i.e. item 2 (x=3).
    mined = QuadrupletMiner("batch_hard")(LINE_X, LINE_LABELS)
    assert mined.anchor.tolist() == [0, 1, 2, 3, 4]
    assert mined.positive.tolist() == [2, 2, 0, 4, 3]
    assert mined.negative.tolist() == [3, 3, 3, 2, 5]
    assert mined.negative2.tolist() == [5, 5, 5, 5, 2]


def test_quadruplet_batch_hard_equals_loops_on_random_batch() -> None:
    x, labels = random_batch(6, BATCH_LABELS)
    d, y = naive_distance(x), labels.tolist()
    expected = []
    for a in range(len(y)):
        positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        if not positives or not negatives:
            continue
        n = min(negatives, key=lambda k: d[a][k])
        thirds = [m for m in range(len(y)) if y[m] not in (y[a], y[n])]
        if thirds:
            expected.append((a, max(positives, key=lambda p: d[a][p]), n, min(thirds, key=lambda m: d[n][m])))
    assert sorted(as_set(QuadrupletMiner("batch_hard")(x, labels))) == expected


def test_quadruplet_all_refuses_huge_batches() -> None:
    x, labels = random_batch(7, [0, 0, 1, 1, 2, 2])
    with pytest.raises(TrainingError, match="max_quadruplets"):
        QuadrupletMiner("all", max_quadruplets=10)(x, labels)


def test_softmax_weights_equal_explicit_exponentials() -> None:
    x, labels = random_batch(8, BATCH_LABELS)
    d, y = naive_distance(x), labels.tolist()
    positive_weights, negative_weights = softmax_weights(torch.tensor(d, dtype=torch.float64), labels)
    for a in range(len(y)):
        positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        z_pos = sum(math.exp(d[a][p]) for p in positives)
        z_neg = sum(math.exp(-d[a][n]) for n in negatives)
        for b in range(len(y)):
            want_pos = math.exp(d[a][b]) / z_pos if b in positives else 0.0
            want_neg = math.exp(-d[a][b]) / z_neg if b in negatives else 0.0
            assert positive_weights[a, b].item() == pytest.approx(want_pos, abs=1e-12)
            assert negative_weights[a, b].item() == pytest.approx(want_neg, abs=1e-12)


def test_softmax_weights_singleton_rows_are_zero_without_nan_gradient() -> None:
    x, labels = random_batch(9, BATCH_LABELS)
    dist = torch.tensor(naive_distance(x), dtype=torch.float64, requires_grad=True)
    positive_weights, _ = softmax_weights(dist, labels)
    assert positive_weights[8].abs().sum().item() == 0.0  # identity 3 has a single image
    (positive_weights * dist).sum().backward()
    assert torch.isfinite(dist.grad).all()


def test_miners_return_long_indices_without_graph() -> None:
    x = torch.randn(6, 4, requires_grad=True)
    for miner in (AllTripletsMiner(), BatchHardMiner(), SemiHardMiner(), AllPairsMiner(), HardestPairMiner()):
        for t in miner(x, LINE_LABELS):
            assert t.dtype == torch.long and not t.requires_grad


def test_mine_uses_the_given_distance_matrix() -> None:
    # A distance matrix that contradicts the embeddings' geometry: the miner must follow the matrix.
    dist = torch.tensor([[0.0, 1.0, 9.0, 2.0], [1.0, 0.0, 3.0, 8.0], [9.0, 3.0, 0.0, 1.0], [2.0, 8.0, 1.0, 0.0]])
    mined = BatchHardMiner().mine(dist, torch.tensor([0, 0, 1, 1]))
    assert as_set(mined) == {(0, 1, 3), (1, 0, 2), (2, 3, 1), (3, 2, 0)}


def test_index_tuple_conversions() -> None:
    a, p, n, m = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), torch.tensor([3]))
    assert as_triplets(Quadruplets(a, p, n, m), 4, "t") == Triplets(a, p, n)
    assert as_pairs(Triplets(a, p, n), 4, "t") == Pairs(a, p, a, n)
    assert as_quadruplets((a, p, n, m), 4, "t") == Quadruplets(a, p, n, m)
    with pytest.raises(TrainingError, match="Pairs"):
        as_triplets(Pairs(a, p, a, n), 4, "t")
    with pytest.raises(TrainingError, match=r"outside \[0, 3\)"):
        as_triplets((a, p, m), 3, "t")
    with pytest.raises(TrainingError, match="equal lengths"):
        as_triplets((a, torch.tensor([1, 2]), n), 4, "t")
    with pytest.raises(TrainingError, match="quadruplets"):
        as_quadruplets(Pairs(a, p, a, n), 4, "t")


def test_bad_inputs_raise_clear_errors() -> None:
    x = torch.randn(4, 2)
    with pytest.raises(TrainingError, match="labels must be a 1-D tensor of length 4"):
        BatchHardMiner()(x, torch.tensor([0, 0, 1]))
    with pytest.raises(TrainingError, match="integer"):
        BatchHardMiner()(x, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(TrainingError, match="2-D"):
        BatchHardMiner()(torch.randn(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(TrainingError, match="square"):
        BatchHardMiner().mine(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ConfigError, match="unknown distance"):
        BatchHardMiner(metric="manhattan")
    with pytest.raises(ConfigError, match="margin"):
        SemiHardMiner(margin=0.0)
    with pytest.raises(ConfigError, match="strategy"):
        QuadrupletMiner("random")


def test_build_miner_by_name_and_mapping() -> None:
    assert isinstance(build_miner("batch_hard"), BatchHardMiner)
    miner = build_miner({"name": "semi_hard", "margin": 0.2, "metric": "sqeuclidean"})
    assert isinstance(miner, SemiHardMiner) and miner.margin == 0.2 and miner.metric == "sqeuclidean"
    with pytest.raises(ConfigError, match="unknown miner 'hard'; available: all_pairs"):
        build_miner("hard")
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['margn'\]"):
        build_miner("semi_hard", margn=0.2)


@pytest.mark.parametrize("first", ["reidkit.miners", "reidkit.losses"])
def test_packages_import_in_either_order(first: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # losses import miners and both use reidkit.distance: guard against an import cycle by importing
    # afresh (monkeypatch restores the original modules afterwards, so other tests keep their classes).
    for name in [m for m in sys.modules if m.startswith(("reidkit.losses", "reidkit.miners"))]:
        monkeypatch.delitem(sys.modules, name)
    importlib.import_module(first)
    assert "triplet_batch_hard" in importlib.import_module("reidkit.losses").list_losses()
