"""Every loss against a plain-loop evaluation of its paper formula, plus gradcheck and stop-gradient checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn
from torch.autograd import gradcheck

from reidkit.errors import ConfigError, TrainingError
from reidkit.losses import (
    AlignedTripletLoss,
    BatchHardTripletLoss,
    CenterLoss,
    ContrastiveLoss,
    CrossEntropyLabelSmooth,
    ImprovedTripletLoss,
    MarginSampleMiningLoss,
    MutualLearningLoss,
    QuadrupletLoss,
    SoftHardTripletLoss,
    TripletLoss,
    build_loss,
    list_losses,
    loss_parameters,
    pairwise_distance,
)
from reidkit.miners import AllPairsMiner, Pairs, QuadrupletMiner, SemiHardMiner, Triplets

LABELS = [0, 0, 0, 1, 1, 2, 2, 3]  # P x K-like batch with a singleton identity (3)


def batch(seed: int, labels: list[int] = LABELS, dim: int = 4, scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(len(labels), dim, generator=generator, dtype=torch.float64)
    return x.requires_grad_(), torch.tensor(labels)


# ---------------------------------------------------------------- plain-loop references
def dist_table(x: torch.Tensor, squared: bool = False) -> list[list[float]]:
    rows = x.tolist()
    return [[math.dist(a, b) ** (2 if squared else 1) for b in rows] for a in rows]


def hinge(v: float) -> float:
    return max(v, 0.0)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def reduce(values: list[float], reduction: str = "mean") -> float:
    if not values:
        return 0.0
    if reduction == "sum":
        return sum(values)
    if reduction == "nonzero_mean":
        return sum(values) / max(1, sum(v > 0 for v in values))
    return sum(values) / len(values)


def all_triplets(y: list[int]):
    return [
        (a, p, n) for a, p, n in itertools.product(range(len(y)), repeat=3) if a != p and y[a] == y[p] and y[n] != y[a]
    ]


def batch_hard_triplets(d, y: list[int]):
    triplets = []
    for a in range(len(y)):
        positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        if positives and negatives:
            triplets.append((a, max(positives, key=lambda p: d[a][p]), min(negatives, key=lambda n: d[a][n])))
    return triplets


def ref_triplet(x, labels, margin, soft=False, hard=False, reduction="mean"):
    d, y = dist_table(x), labels.tolist()
    triplets = batch_hard_triplets(d, y) if hard else all_triplets(y)
    terms = [softplus(d[a][p] - d[a][n]) if soft else hinge(d[a][p] - d[a][n] + margin) for a, p, n in triplets]
    return reduce(terms, reduction), terms


def ref_improved(x, labels, margin, beta, weight):
    d, y = dist_table(x), labels.tolist()
    terms = [hinge(d[a][p] - d[a][n] + margin) + weight * hinge(d[a][p] - beta) for a, p, n in all_triplets(y)]
    return reduce(terms)


def ref_contrastive(x, labels, margin):
    d, y = dist_table(x), labels.tolist()
    terms = []
    for i, j in itertools.combinations(range(len(y)), 2):
        terms.append(0.5 * d[i][j] ** 2 if y[i] == y[j] else 0.5 * hinge(margin - d[i][j]) ** 2)
    return reduce(terms)


def ref_msml(x, labels, margin):
    d, y = dist_table(x), labels.tolist()
    pairs = list(itertools.combinations(range(len(y)), 2))
    farthest_positive = max(d[i][j] for i, j in pairs if y[i] == y[j])
    closest_negative = min(d[i][j] for i, j in pairs if y[i] != y[j])
    return hinge(farthest_positive - closest_negative + margin)


def ref_soft_hard(x, labels, margin=None):
    d, y = dist_table(x), labels.tolist()
    terms = []
    for a in range(len(y)):
        positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        if not positives or not negatives:
            continue
        z_pos = sum(math.exp(d[a][p]) for p in positives)
        z_neg = sum(math.exp(-d[a][n]) for n in negatives)
        d_pos = sum(math.exp(d[a][p]) / z_pos * d[a][p] for p in positives)
        d_neg = sum(math.exp(-d[a][n]) / z_neg * d[a][n] for n in negatives)
        terms.append(softplus(d_pos - d_neg) if margin is None else hinge(d_pos - d_neg + margin))
    return reduce(terms)


def all_quadruplets(y: list[int]):
    return [
        (a, p, n, m)
        for a, p, n, m in itertools.product(range(len(y)), repeat=4)
        if a != p and y[a] == y[p] and y[n] != y[a] and y[m] != y[a] and y[m] != y[n]
    ]


def ref_quadruplet(x, labels, alpha, beta, quadruplets=None, adaptive=False):
    d, y = dist_table(x, squared=True), labels.tolist()
    if adaptive:  # paper's OHNM margins: w (mean negative-pair d^2 - mean positive-pair d^2), w = 1 and 0.5
        pos = [d[i][j] for i, j in itertools.permutations(range(len(y)), 2) if y[i] == y[j]]
        neg = [d[i][j] for i, j in itertools.permutations(range(len(y)), 2) if y[i] != y[j]]
        gap = sum(neg) / len(neg) - sum(pos) / len(pos)
        alpha, beta = max(gap, 0.0), max(0.5 * gap, 0.0)
    quadruplets = all_quadruplets(y) if quadruplets is None else quadruplets
    terms = [hinge(d[a][p] - d[a][n] + alpha) + hinge(d[a][p] - d[n][m] + beta) for a, p, n, m in quadruplets]
    return reduce(terms, "nonzero_mean" if adaptive else "mean")


def part_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Stand-in for the alignment distance: mean over parts of the part-to-part Euclidean distance."""
    return (x - y).pow(2).sum(-1).add(1e-12).sqrt().mean(-1)


def softmax_rows(rows: list[list[float]], temperature: float) -> list[list[float]]:
    out = []
    for row in rows:
        z = sum(math.exp(v / temperature) for v in row)
        out.append([math.exp(v / temperature) / z for v in row])
    return out


def ref_part_distance(u: list[list[float]], v: list[list[float]]) -> float:
    return sum(math.dist(a, b) for a, b in zip(u, v)) / len(u)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- distance
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_pairwise_distance_equals_loops(metric: str) -> None:
    x, _ = batch(0)
    y = torch.randn(5, 4, dtype=torch.float64)
    got = pairwise_distance(x, y, metric)
    for i, a in enumerate(x.tolist()):
        for j, b in enumerate(y.tolist()):
            if metric == "cosine":
                want = 1 - sum(p * q for p, q in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))
            else:
                want = math.dist(a, b) ** (2 if metric == "sqeuclidean" else 1)
            assert got[i, j].item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_self_distance_has_exact_zero_diagonal_and_survives_autocast() -> None:
    x = 5 * torch.randn(32, 64, generator=torch.Generator().manual_seed(30))
    reference = [[math.dist(a, b) for b in x.tolist()] for a in x.tolist()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pairwise_distance(x)
    assert got.dtype == torch.float32 and torch.all(got.diagonal() == 0)
    assert torch.allclose(got.double(), torch.tensor(reference, dtype=torch.float64), rtol=1e-5, atol=1e-3)
    assert torch.all(pairwise_distance(x, x).diagonal() == 0)


def test_euclidean_gradient_is_finite_at_zero_distance() -> None:
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)  # a duplicate row
    pairwise_distance(x).sum().backward()
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- triplet family
@pytest.mark.parametrize("reduction", ["mean", "sum", "nonzero_mean"])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_all_triplets_equals_loops(reduction: str, soft: bool) -> None:
    x, labels = batch(1)
    expected, _ = ref_triplet(x, labels, 0.5, soft=soft, reduction=reduction)
    close(TripletLoss(margin=0.5, soft_margin=soft, reduction=reduction)(x, labels), expected)


@pytest.mark.parametrize("soft", [False, True])
def test_batch_hard_equals_loops(soft: bool) -> None:
    x, labels = batch(2)
    expected, _ = ref_triplet(x, labels, 0.3, soft=soft, hard=True)
    close(BatchHardTripletLoss(margin=0.3, soft_margin=soft)(x, labels), expected)


def test_triplet_on_given_triplets_equals_loops() -> None:
    x, labels = batch(3)
    d = dist_table(x)
    triplets = SemiHardMiner(margin=1.0)(x, labels)
    assert len(triplets.anchor) > 0
    expected = reduce([hinge(d[a][p] - d[a][n] + 1.0) for a, p, n in zip(*(t.tolist() for t in triplets))])
    close(TripletLoss(margin=1.0)(x, labels, triplets), expected)


def easy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three identities, tight clusters 10 apart: every triplet is satisfied with room to spare."""
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    jitter = 0.05 * torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (centres[labels] + jitter).requires_grad_(), labels


def hard_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Each identity's two images 10 apart, next to the other identity's: every triplet violates margin 0.3."""
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 1.0], [10.0, 1.0]], dtype=torch.float64)
    return x.requires_grad_(), torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize("hard", [False, True])
def test_triplet_losses_on_all_easy_batch_are_zero(hard: bool) -> None:
    x, labels = easy_batch()
    loss = BatchHardTripletLoss(0.3) if hard else TripletLoss(0.3)
    assert loss(x, labels).item() == 0.0
    assert ImprovedTripletLoss(margin=0.3, beta=1.0)(x, labels).item() == 0.0
    assert MarginSampleMiningLoss(0.3)(x, labels).item() == 0.0
    assert ContrastiveLoss(margin=5.0)(x, labels).item() == pytest.approx(ref_contrastive(x, labels, 5.0))
    assert QuadrupletLoss(alpha=0.3, beta=0.3)(x, labels).item() == 0.0


def test_triplet_losses_on_all_hard_batch_equal_loops() -> None:
    x, labels = hard_batch()
    expected, terms = ref_triplet(x, labels, 0.3)
    assert all(t > 0 for t in terms)  # the construction really is all-hard
    close(TripletLoss(0.3)(x, labels), expected)
    close(TripletLoss(0.3, reduction="nonzero_mean")(x, labels), expected)
    expected_hard, hard_terms = ref_triplet(x, labels, 0.3, hard=True)
    assert len(hard_terms) == 4 and all(t > 0 for t in hard_terms)
    close(BatchHardTripletLoss(0.3)(x, labels), expected_hard)
    close(MarginSampleMiningLoss(0.3)(x, labels), ref_msml(x, labels, 0.3))
    close(SoftHardTripletLoss(margin=0.3)(x, labels), ref_soft_hard(x, labels, 0.3))


def test_improved_triplet_equals_loops() -> None:
    x, labels = batch(4)
    close(
        ImprovedTripletLoss(margin=1.0, beta=0.8, intra_weight=0.5)(x, labels), ref_improved(x, labels, 1.0, 0.8, 0.5)
    )


def test_improved_triplet_differs_from_paper_form_by_a_constant() -> None:
    # Cheng et al.: max(d_ap - d_an, tau1) + beta_p * max(d_ap, tau2), tau1 = -1, tau2 = 0.01, beta_p = 0.002
    x, labels = batch(5)
    d, y = dist_table(x), labels.tolist()
    triplets = all_triplets(y)
    paper = sum(max(d[a][p] - d[a][n], -1.0) + 0.002 * max(d[a][p], 0.01) for a, p, n in triplets) / len(triplets)
    ours = ImprovedTripletLoss(margin=1.0, beta=0.01, intra_weight=0.002)(x, labels).item()
    assert ours == pytest.approx(paper - (-1.0 + 0.002 * 0.01), rel=1e-9)


@pytest.mark.parametrize("margin", [None, 0.3])
def test_soft_hard_equals_loops(margin: float | None) -> None:
    x, labels = batch(6)
    close(SoftHardTripletLoss(margin=margin)(x, labels), ref_soft_hard(x, labels, margin))


def test_soft_hard_soft_margin_is_softplus_whatever_the_margin() -> None:
    x, labels = batch(6)
    close(SoftHardTripletLoss(margin=0.3, soft_margin=True)(x, labels), ref_soft_hard(x, labels, None))


def test_soft_hard_detached_weights_change_only_the_gradient() -> None:
    x, labels = batch(7)
    attached, detached = SoftHardTripletLoss()(x, labels), SoftHardTripletLoss(detach_weights=True)(x, labels)
    assert attached.item() == pytest.approx(detached.item(), rel=1e-12)
    (g1,) = torch.autograd.grad(attached, x)
    (g2,) = torch.autograd.grad(detached, x)
    assert not torch.allclose(g1, g2)


# ---------------------------------------------------------------- pair losses
def test_contrastive_equals_loops() -> None:
    x, labels = batch(8)
    close(ContrastiveLoss(margin=2.0)(x, labels), ref_contrastive(x, labels, 2.0))


def test_contrastive_accepts_triplets_as_pairs() -> None:
    x, labels = batch(9)
    d = dist_table(x)
    triplets = Triplets(torch.tensor([0, 3]), torch.tensor([1, 4]), torch.tensor([5, 0]))
    expected = (
        0.5 * d[0][1] ** 2 + 0.5 * d[3][4] ** 2 + 0.5 * hinge(2 - d[0][5]) ** 2 + 0.5 * hinge(2 - d[3][0]) ** 2
    ) / 4
    close(ContrastiveLoss(margin=2.0)(x, labels, triplets), expected)


def test_msml_equals_loops() -> None:
    x, labels = batch(10)
    close(MarginSampleMiningLoss(margin=2.0)(x, labels), ref_msml(x, labels, 2.0))
    # with all pairs instead of the hardest pair the max/min give the same single term
    close(MarginSampleMiningLoss(margin=2.0, miner=AllPairsMiner())(x, labels), ref_msml(x, labels, 2.0))


# ---------------------------------------------------------------- quadruplet
def test_quadruplet_all_equals_loops() -> None:
    x, labels = batch(11, [0, 0, 1, 1, 2, 2, 3])
    loss = QuadrupletLoss(alpha=1.0, beta=0.5, miner=QuadrupletMiner("all", metric="sqeuclidean"))
    close(loss(x, labels), ref_quadruplet(x, labels, 1.0, 0.5))


def test_quadruplet_batch_hard_equals_loops() -> None:
    x, labels = batch(12)
    d, y = dist_table(x), labels.tolist()  # miner ranks by the same (squared) distance order
    quads = []
    for a, p, n in batch_hard_triplets(d, y):
        thirds = [m for m in range(len(y)) if y[m] not in (y[a], y[n])]
        quads.append((a, p, n, min(thirds, key=lambda m: d[n][m])))
    close(QuadrupletLoss(alpha=1.0, beta=0.5)(x, labels), ref_quadruplet(x, labels, 1.0, 0.5, quads))


def test_quadruplet_ohnm_adaptive_margins_equal_loops() -> None:
    x, labels = batch(13, [0, 0, 1, 1, 2, 2, 3], scale=0.5)
    close(QuadrupletLoss(ohnm=True)(x, labels), ref_quadruplet(x, labels, 0, 0, adaptive=True))


# ---------------------------------------------------------------- classification
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_label_smoothing_equals_formula(epsilon: float) -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2])
    total = 0.0
    for row, label in zip(logits.tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        for k, v in enumerate(row):
            target = (1 - epsilon) * (k == label) + epsilon / 4
            total -= target * (v - log_z)
    close(CrossEntropyLabelSmooth(4, epsilon)(logits, labels), total / 5)
    if epsilon == 0.0:
        close(CrossEntropyLabelSmooth(4, 0.0)(logits, labels), nn.functional.cross_entropy(logits, labels).item())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_center_loss_equals_formula_and_centre_gradient(reduction: str) -> None:
    x, labels = batch(15, [0, 1, 1, 2])
    loss = CenterLoss(num_classes=4, feat_dim=4, reduction=reduction).double()
    centres, rows, y = loss.centers.detach().tolist(), x.tolist(), labels.tolist()
    divisor = 4 if reduction == "mean" else 1
    value = loss(x, labels)
    close(value, sum(0.5 * math.dist(row, centres[k]) ** 2 for row, k in zip(rows, y)) / divisor)
    value.backward()
    for k in range(4):  # dL/dc_k = -sum_{i: y_i = k} (x_i - c_k) / divisor; identity 3 is absent -> 0
        want = [-sum(row[c] - centres[k][c] for row, label in zip(rows, y) if label == k) / divisor for c in range(4)]
        assert loss.centers.grad[k].tolist() == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- AlignedReID local triplet
def test_aligned_local_triplet_mines_globally_and_scores_locally() -> None:
    x, labels = batch(16)
    local = torch.randn(len(labels), 3, 2, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    d, y, parts = dist_table(x), labels.tolist(), local.tolist()
    terms = [
        hinge(ref_part_distance(parts[a], parts[p]) - ref_part_distance(parts[a], parts[n]) + 0.3)
        for a, p, n in batch_hard_triplets(d, y)  # mined with the GLOBAL distances
    ]
    close(AlignedTripletLoss(part_distance, margin=0.3)(x, labels, local), reduce(terms))


def test_aligned_local_triplet_with_nothing_mined_is_zero() -> None:
    x, labels = batch(25, [0, 1, 2, 3])
    calls = []
    loss = AlignedTripletLoss(lambda u, v: calls.append(1) or part_distance(u, v))
    assert loss(x, labels, torch.randn(4, 3, 2)).item() == 0.0 and not calls


def test_aligned_local_triplet_gets_no_gradient_through_global_features() -> None:
    x, labels = batch(18)
    local = torch.randn(len(labels), 3, 2, dtype=torch.float64, requires_grad=True)
    AlignedTripletLoss(part_distance, margin=5.0)(x, labels, local).backward()
    assert x.grad is None and local.grad.abs().sum() > 0


# ---------------------------------------------------------------- mutual learning
def test_mutual_loss_equals_loops_for_three_students() -> None:
    generator = torch.Generator().manual_seed(19)
    logits = [torch.randn(4, 3, generator=generator, dtype=torch.float64) for _ in range(3)]
    embeddings = [torch.randn(4, 2, generator=generator, dtype=torch.float64) for _ in range(3)]
    temperature = 2.0
    probs = [softmax_rows(z.tolist(), temperature) for z in logits]
    kl = 0.0
    for i, j in itertools.permutations(range(3), 2):  # KL(p_j || p_i), batch mean, averaged over the 2 peers
        kl += sum(pj * math.log(pj / pi) for rj, ri in zip(probs[j], probs[i]) for pj, pi in zip(rj, ri)) / 4 / 2
    tables = [dist_table(e) for e in embeddings]
    metric = 0.0
    for i, j in itertools.permutations(range(3), 2):
        metric += sum((tables[i][a][b] - tables[j][a][b]) ** 2 for a in range(4) for b in range(4)) / 16 / 2
    loss = MutualLearningLoss(num_students=3, kl_weight=0.7, metric_weight=0.3, temperature=temperature)
    close(loss(logits, embeddings=embeddings), 0.7 * temperature**2 * kl + 0.3 * metric)
    # distance matrices (the M_i) instead of embeddings; parts() splits the same total for logging
    distances = [torch.tensor(t, dtype=torch.float64) for t in tables]
    parts = loss.parts(logits, distances)
    close(parts["mutual_kl"], 0.7 * temperature**2 * kl)
    close(parts["mutual_metric"], 0.3 * metric)
    close(sum(loss.student_losses(logits, distances)), 0.7 * temperature**2 * kl + 0.3 * metric)


def test_normalized_metric_mutual_loss_uses_unit_embeddings() -> None:
    generator = torch.Generator().manual_seed(23)
    embeddings = [torch.randn(5, 3, generator=generator, dtype=torch.float64) for _ in range(2)]
    units = [[[v / math.sqrt(sum(c * c for c in row)) for v in row] for row in e.tolist()] for e in embeddings]
    tables = [dist_table(torch.tensor(u, dtype=torch.float64)) for u in units]
    expected = 2 * sum((tables[0][a][b] - tables[1][a][b]) ** 2 for a in range(5) for b in range(5)) / 25
    loss = MutualLearningLoss(kl_weight=0.0, normalize=True)
    close(loss(embeddings=embeddings), expected)
    # scaling one student's features changes nothing once normalised (it does without normalising)
    scaled = [embeddings[0] * 7.0, embeddings[1]]
    close(loss(embeddings=scaled), expected)
    assert abs(MutualLearningLoss(kl_weight=0.0)(embeddings=scaled).item() - expected) > 1.0


def two_students() -> tuple[nn.Linear, nn.Linear, torch.Tensor]:
    torch.manual_seed(20)
    return nn.Linear(5, 3).double(), nn.Linear(5, 3).double(), torch.randn(6, 5, dtype=torch.float64)


def grads(loss: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters()), retain_graph=True))


def test_metric_mutual_stop_gradient_routes_each_term_to_its_own_student() -> None:
    model1, model2, x = two_students()
    MutualLearningLoss(kl_weight=0.0, metric_weight=1.0)(embeddings=[model1(x), model2(x)]).backward()
    # Reference with torch.cdist (independent of the loss's distance code) and explicit detach.
    m1, m2 = torch.cdist(model1(x), model1(x)), torch.cdist(model2(x), model2(x))
    want1 = grads(((m1 - m2.detach()) ** 2).mean(), model1)
    want2 = grads(((m2 - m1.detach()) ** 2).mean(), model2)
    for param, want in zip(model1.parameters(), want1):
        assert torch.allclose(param.grad, want, atol=1e-10)
    for param, want in zip(model2.parameters(), want2):
        assert torch.allclose(param.grad, want, atol=1e-10)
    # Without the stop-gradient model 1 would also get the gradient of the other term: twice as much.
    no_stop = grads(((m1 - m2) ** 2).mean() * 2, model1)
    assert not torch.allclose(next(model1.parameters()).grad, no_stop[0])


def test_kl_mutual_stop_gradient_routes_each_term_to_its_own_student() -> None:
    model1, model2, x = two_students()
    MutualLearningLoss(kl_weight=1.0, metric_weight=0.0)(logits=[model1(x), model2(x)]).backward()
    p1, p2 = model1(x).softmax(1), model2(x).softmax(1)
    want1 = grads((p2.detach() * (p2.detach().log() - p1.log())).sum(1).mean(), model1)
    want2 = grads((p1.detach() * (p1.detach().log() - p2.log())).sum(1).mean(), model2)
    assert all(torch.allclose(p.grad, w, atol=1e-10) for p, w in zip(model1.parameters(), want1))
    assert all(torch.allclose(p.grad, w, atol=1e-10) for p, w in zip(model2.parameters(), want2))


# ---------------------------------------------------------------- gradcheck (float64)
def gradcheck_embeddings(loss: nn.Module, seed: int, labels: list[int] = LABELS) -> None:
    x, y = batch(seed, labels)
    assert gradcheck(lambda e: loss(e, y), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "loss",
    [
        TripletLoss(0.5),
        TripletLoss(soft_margin=True),
        BatchHardTripletLoss(0.3),
        BatchHardTripletLoss(soft_margin=True),
        ImprovedTripletLoss(margin=1.0, beta=0.5),
        SoftHardTripletLoss(),
        SoftHardTripletLoss(margin=0.3, metric="cosine"),
        ContrastiveLoss(2.0),
        MarginSampleMiningLoss(1.0),
        QuadrupletLoss(alpha=1.0, beta=0.5),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_metric_losses_pass_gradcheck(loss: nn.Module) -> None:
    gradcheck_embeddings(loss, seed=21)


def test_quadruplet_ohnm_passes_gradcheck_with_its_margins_frozen() -> None:
    # The adaptive margins are per-batch constants (stop-gradient), so compare against finite differences
    # of the loss with the margins frozen at their value for this batch.
    x, labels = batch(21)
    loss = QuadrupletLoss(ohnm=True)
    margins = loss.margins(pairwise_distance(x, metric="sqeuclidean"), labels)
    assert margins[0] > 0
    loss.margins = lambda dist, labels: margins
    assert gradcheck(lambda e: loss(e, labels), (x,), eps=1e-6, atol=1e-5)


def test_other_losses_pass_gradcheck() -> None:
    labels = torch.tensor(LABELS)
    logits = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda z: CrossEntropyLabelSmooth(4, 0.1)(z, labels), (logits,))
    center = CenterLoss(4, 3).double()
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    # gradcheck perturbs its inputs in place, so passing the centre Parameter itself checks dL/dcentres too
    assert gradcheck(lambda e, _centres: center(e, labels), (x, center.centers))
    local = torch.randn(8, 3, 2, dtype=torch.float64, requires_grad=True)
    aligned = AlignedTripletLoss(part_distance, margin=0.5)
    assert gradcheck(lambda loc: aligned(x.detach(), labels, loc), (local,))
    # Each student's mutual loss as a function of its own outputs, the peer held fixed (the peer enters
    # through ZG only, which is exactly what finite differences with a constant peer measure).
    z1, z2, e1, e2 = (torch.randn(8, k, dtype=torch.float64, requires_grad=True) for k in (4, 4, 3, 3))
    mutual = MutualLearningLoss(temperature=2.0)
    assert gradcheck(lambda z, e: mutual.student_losses([z, z2.detach()], embeddings=[e, e2.detach()])[0], (z1, e1))
    assert gradcheck(lambda z, e: mutual.student_losses([z1.detach(), z], embeddings=[e1.detach(), e])[1], (z2, e2))


# ---------------------------------------------------------------- empty batches, registry, errors
def test_batch_without_positives_gives_zero_that_backpropagates() -> None:
    x, labels = batch(22, [0, 1, 2, 3])
    losses = [TripletLoss(), BatchHardTripletLoss(), ContrastiveLoss(margin=0.0), MarginSampleMiningLoss()]
    for loss in [*losses, SoftHardTripletLoss(), QuadrupletLoss()]:
        value = loss(x, labels)
        value.backward()
        assert value.item() == 0.0 and torch.all(x.grad == 0)


def test_forward_distance_takes_a_precomputed_matrix() -> None:
    x, labels = batch(23)
    expected, _ = ref_triplet(x, labels, 0.3, hard=True)
    close(BatchHardTripletLoss(0.3).forward_distance(torch.cdist(x, x), labels), expected)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ce", CrossEntropyLabelSmooth),
        ("triplet", TripletLoss),
        ("triplet_batch_hard", BatchHardTripletLoss),
        ("improved_triplet", ImprovedTripletLoss),
        ("msml", MarginSampleMiningLoss),
        ("quadruplet", QuadrupletLoss),
        ("soft_hard", SoftHardTripletLoss),
        ("contrastive", ContrastiveLoss),
        ("center", CenterLoss),
        ("mutual", MutualLearningLoss),
        ("aligned_triplet", AlignedTripletLoss),
    ],
)
def test_registry_names(name: str, cls: type) -> None:
    assert name in list_losses()
    cfg = {"ce": {"num_classes": 3}, "center": {"num_classes": 3, "feat_dim": 2}}.get(name, {})
    if name == "aligned_triplet":
        cfg = {"local_distance_fn": "reidkit.distance:pairwise_distance"}  # any importable callable
    assert type(build_loss(name, **cfg)) is cls


def test_loss_parameters_list_constructor_arguments() -> None:
    assert {"margin", "soft_margin", "miner", "metric"} <= set(loss_parameters("triplet_batch_hard"))
    assert "soft_margin" not in loss_parameters("contrastive") and "alpha" in loss_parameters("quadruplet")


def test_build_loss_with_miner_from_config() -> None:
    loss = build_loss("triplet", margin=0.2, miner={"name": "semi_hard", "margin": 0.5})
    assert isinstance(loss.miner, SemiHardMiner) and loss.miner.margin == 0.5
    assert type(build_loss("contrastive", miner="all_pairs").miner) is AllPairsMiner


def test_config_errors_name_the_argument() -> None:
    with pytest.raises(ConfigError, match="unknown loss 'trihard'; available: aligned_triplet"):
        build_loss("trihard")
    with pytest.raises(ConfigError, match=r"loss 'triplet': unknown argument\(s\) \['margn'\]"):
        build_loss("triplet", margn=0.3)
    with pytest.raises(ConfigError, match="TripletLoss.margin"):
        TripletLoss(margin=-1.0)
    with pytest.raises(ConfigError, match="TripletLoss.reduction"):
        TripletLoss(reduction="max")
    with pytest.raises(ConfigError, match="CrossEntropyLabelSmooth.epsilon"):
        CrossEntropyLabelSmooth(3, epsilon=1.0)
    with pytest.raises(ConfigError, match="num_students"):
        MutualLearningLoss(num_students=1)
    with pytest.raises(ConfigError, match="local_distance_fn: cannot import"):
        AlignedTripletLoss("reidkit.nope:fn")
    with pytest.raises(ConfigError, match="BatchHardTripletLoss.metric"):
        BatchHardTripletLoss(metric="l1")


def test_input_errors_name_the_problem() -> None:
    x, labels = batch(24)
    with pytest.raises(TrainingError, match="labels must be a 1-D tensor of length 8"):
        TripletLoss()(x, labels[:5])
    with pytest.raises(TrainingError, match="integer"):
        BatchHardTripletLoss()(x, labels.double())
    with pytest.raises(TrainingError, match="needs triplets"):
        TripletLoss()(x, labels, Pairs(*(torch.tensor([0]),) * 4))
    with pytest.raises(ConfigError, match="no indices_tuple"):
        SoftHardTripletLoss()(x, labels, Triplets(*(torch.tensor([0]),) * 3))
    with pytest.raises(TrainingError, match=r"logits must be \(batch, 5\)"):
        CrossEntropyLabelSmooth(5)(torch.randn(8, 4), labels)
    with pytest.raises(TrainingError, match=r"labels must lie in \[0, 3\)"):
        CrossEntropyLabelSmooth(3)(torch.randn(8, 3), labels)
    with pytest.raises(TrainingError, match="one tensor per student"):
        MutualLearningLoss()(logits=[torch.randn(8, 3)])
    with pytest.raises(TrainingError, match=r"local_distance_fn must return shape"):
        AlignedTripletLoss(lambda a, b: (a - b).sum(-1))(x, labels, torch.randn(8, 3, 2, dtype=torch.float64))
