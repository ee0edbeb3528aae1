"""Multi-level similarity network (Guo & Cheung 2018): depth-wise correlation against plain loops, STN patches
against hand-computed crops, shapes, symmetry, the improved ranking loss against its formula, triplet sampling,
FLOP counting against hand counts, and the pair trainer on a toy dataset."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from conftest import interrupt_and_resume_pair_training, same_checkpoint_weights
from reidkit.checkpoint import model_from_checkpoint
from reidkit.cli.train import _model_name
from reidkit.config import load_config
from reidkit.data.pairs import anchor_is_first, identity_batches
from reidkit.errors import ConfigError, ModelError, TrainingError
from reidkit.losses import ImprovedRankingLoss, build_loss
from reidkit.models import build_model
from reidkit.models.complexity import count_flops, count_params, flop_breakdown
from reidkit.models.pair.mls import PatchSampler, depthwise_correlation, level_map_sizes
from reidkit.models.registry import model_spec
from reidkit.training.pair import PairTrainConfig, PairTrainer, train_pair_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = (48, 40)  # smallest convenient input: maps 12x10 (low), 6x5 (mid), 3x3 (high)


def naive_correlation(maps: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """out[n, c*P + p, y, x] = sum_ij maps[n, c, y+i-kh//2, x+j-kw//2] * kernels[n, c, p, i, j], one by one."""
    n, c, h, w = maps.shape
    p, kh, kw = kernels.shape[2:]
    out = torch.zeros(n, c * p, h, w, dtype=maps.dtype)
    for b, ch, q, y, x in itertools.product(range(n), range(c), range(p), range(h), range(w)):
        total = 0.0
        for i, j in itertools.product(range(kh), range(kw)):
            yy, xx = y + i - kh // 2, x + j - kw // 2
            if 0 <= yy < h and 0 <= xx < w:
                total += maps[b, ch, yy, xx] * kernels[b, ch, q, i, j]
        out[b, ch * p + q, y, x] = total
    return out


# ---------------------------------------------------------------------------------------------- correlation
@pytest.mark.parametrize("patch", [(1, 1), (3, 3), (3, 1), (5, 3)])
def test_batched_depthwise_correlation_matches_a_per_pair_per_channel_loop(patch):
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 6, 5, generator=gen, dtype=torch.float64)
    kernels = torch.randn(3, 4, 2, *patch, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(depthwise_correlation(maps, kernels), naive_correlation(maps, kernels))


def test_each_pair_only_meets_its_own_kernels():
    # Hand case: pair 0 has a 1x1 kernel of 2, pair 1 of -1; a constant map of 3 gives 6 and -3 everywhere.
    maps = torch.full((2, 1, 4, 3), 3.0)
    kernels = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1, 1)
    out = depthwise_correlation(maps, kernels)
    assert torch.all(out[0] == 6) and torch.all(out[1] == -3)


def test_depthwise_correlation_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(2, 3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(depthwise_correlation, (maps, kernels))


def test_depthwise_correlation_rejects_bad_shapes():
    with pytest.raises(ModelError, match="kernels"):
        depthwise_correlation(torch.zeros(2, 3, 5, 5), torch.zeros(2, 4, 1, 3, 3))
    with pytest.raises(ModelError, match="odd"):
        depthwise_correlation(torch.zeros(2, 3, 5, 5), torch.zeros(2, 3, 1, 2, 2))


# ------------------------------------------------------------------------------------------------------ STN
def test_identity_initialised_stn_samples_the_exact_centre_patch():
    gen = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 3, 7, 5, generator=gen)
    sampler = PatchSampler(3, (7, 5), (3, 3), num_patches=1, use_stn=True)
    sampler.reset_localisation()
    # (H - kh) / 2 = 2 rows and (W - kw) / 2 = 1 column above / left of the centre 3x3 patch
    torch.testing.assert_close(sampler(maps)[:, :, 0], maps[:, :, 2:5, 1:4])


def test_centre_patch_of_an_even_map_interpolates_between_the_middle_pixels():
    maps = torch.arange(2 * 8 * 6, dtype=torch.float32).view(1, 2, 8, 6) ** 1.5  # not bilinear itself
    sampler = PatchSampler(2, (8, 6), (3, 3), num_patches=1, use_stn=False)
    # sample (i, j) sits at map pixel (i + 2.5, j + 1.5): the mean of the 2x2 pixels around it
    expected = (maps[..., 2:5, 1:4] + maps[..., 3:6, 1:4] + maps[..., 2:5, 2:5] + maps[..., 3:6, 2:5]) / 4
    torch.testing.assert_close(sampler(maps)[:, :, 0], expected)


def test_several_patches_start_evenly_down_the_map():
    maps = torch.randn(1, 2, 9, 5, generator=torch.Generator().manual_seed(3))
    patches = PatchSampler(2, (9, 5), (3, 3), num_patches=3, use_stn=False)(maps)
    for p in range(3):  # centres at rows 1.5, 4.5, 7.5: the patches tile the height exactly
        torch.testing.assert_close(patches[:, :, p], maps[:, :, 3 * p:3 * p + 3, 1:4])


def test_stn_moves_the_patch_once_its_localisation_net_learns():
    maps = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(4))
    sampler = PatchSampler(3, (7, 5), (3, 3), num_patches=1, use_stn=True)
    sampler.reset_localisation()
    centre = sampler(maps).detach().clone()
    with torch.no_grad():
        sampler.localisation[-1].bias[2] += 0.4  # x translation: 0.4 * W / 2 = 1 pixel to the right
    torch.testing.assert_close(sampler(maps)[:, :, 0], maps[:, :, 2:5, 2:5])
    assert not torch.allclose(centre, sampler(maps))
    assert PatchSampler(3, (7, 5), (3, 3), 1, use_stn=False).localisation is None


# ---------------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("levels", [["high"], ["low"], ["mid", "high"], ["low", "mid", "high"], [0, 2]])
def test_forward_and_score_shapes_for_each_level_set(levels):
    torch.manual_seed(0)
    model = build_model("mls", input_size=SMALL, levels=levels).eval()
    x1, x2 = torch.randn(5, 3, *SMALL), torch.randn(5, 3, *SMALL)
    assert model(x1, x2).shape == (5, 2)
    assert len(model.csn) == len(levels) and model.input_size == SMALL
    gallery = torch.randint(0, 255, (4, 3, *SMALL), dtype=torch.uint8)
    assert model.score(gallery[:3], gallery).shape == (3, 4)


def test_paper_size_maps_and_no_stage_past_the_deepest_level():
    assert level_map_sizes((160, 64)) == {"low": (40, 16), "mid": (20, 8), "high": (10, 4)}
    model = build_model("mls", levels=["low"]).eval()
    ran = []
    model.trunk.stages["mid"].register_forward_hook(lambda *args: ran.append("mid"))
    model(torch.randn(2, 3, 160, 64), torch.randn(2, 3, 160, 64))
    assert ran == [] and model.feature_dim == 32 * 40 * 16 + 32 * 9


def test_pair_logits_are_symmetric_and_directions_swap():
    torch.manual_seed(1)
    model = build_model("mls", input_size=SMALL).eval()
    x1, x2 = torch.randn(4, 3, *SMALL), torch.randn(4, 3, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model(x1, x2), model(x2, x1), rtol=1e-5, atol=1e-5)
        a, b = model.unpack(model.embed(x1)), model.unpack(model.embed(x2))
        csn = model.csn["mid"]
        ab, ba = csn.directions(a["mid"][0], b["mid"][0], a["mid"][1], b["mid"][1])
        ba2, ab2 = csn.directions(b["mid"][0], a["mid"][0], b["mid"][1], a["mid"][1])
    torch.testing.assert_close(ab, ab2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ba, ba2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ab, ba)  # the two directions carry different evidence


def test_direction_a_to_b_correlates_a_patch_over_b_map():
    torch.manual_seed(2)
    model = build_model("mls", input_size=SMALL, levels=["high"]).eval()
    with torch.no_grad():
        fa, fb = model.embed(torch.randn(3, 3, *SMALL)), model.embed(torch.randn(3, 3, *SMALL))
        (map_a, patch_a), (map_b, _) = model.unpack(fa)["high"], model.unpack(fb)["high"]
        csn = model.csn["high"]
        ab, _ = csn.directions(map_a, map_b, patch_a, model.unpack(fb)["high"][1])
        s = csn.summary(naive_correlation(map_b, patch_a))
        expected = torch.cat([s.mean((2, 3)), s.amax((2, 3))], 1)
    torch.testing.assert_close(ab, expected, rtol=1e-4, atol=1e-5)


def test_score_equals_forward_on_every_pair_one_at_a_time():
    torch.manual_seed(3)
    model = build_model("mls", input_size=SMALL).eval()
    query = torch.randint(0, 255, (2, 3, *SMALL), dtype=torch.uint8)
    gallery = torch.randint(0, 255, (3, 3, *SMALL), dtype=torch.uint8)
    scores = model.score(query, gallery)
    with torch.no_grad():
        for i, j in itertools.product(range(2), range(3)):
            logits = model(model.prepare(query[i:i + 1]), model.prepare(gallery[j:j + 1]))[0]
            assert scores[i, j].item() == pytest.approx((logits[1] - logits[0]).item(), abs=1e-4)


def test_gradients_reach_the_trunk_and_the_stn():
    torch.manual_seed(4)
    model = build_model("mls", input_size=SMALL).train()
    model(torch.randn(4, 3, *SMALL), torch.randn(4, 3, *SMALL))[:, 1].sum().backward()
    assert model.trunk.stages["low"][0][0].weight.grad.abs().sum() > 0
    assert all(c.sampler.localisation[-1].weight.grad.abs().sum() > 0 for c in model.csn.values())


@pytest.mark.parametrize("options, needle", [
    ({"levels": ["top"]}, "levels"), ({"levels": []}, "levels"), ({"levels": ["low", 0]}, "levels"),
    ({"patch_size": [2, 3]}, "patch_size"), ({"num_patches": 0}, "num_patches"), ({"widths": [8, 8]}, "widths"),
    ({"input_size": [40, 24]}, "input_size"), ({"dropout": 1.0}, "dropout"), ({"colour": True}, "unknown"),
])
def test_bad_options_name_the_argument(options, needle):
    with pytest.raises(ModelError, match=needle):
        build_model("mls", **options)


def test_wrong_images_and_packed_features_give_clear_errors():
    model = build_model("mls", input_size=SMALL)
    with pytest.raises(ModelError, match="x2"):
        model(torch.zeros(1, 3, *SMALL), torch.zeros(1, 3, 64, 32))
    with pytest.raises(ModelError, match="embed"):
        model.pair_layers(torch.zeros(2, 10), torch.zeros(2, 10))


# ----------------------------------------------------------------------------------------------------- loss
def prob_same(logit_diff: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit_diff))


def test_improved_ranking_loss_equals_the_hand_formula():
    # pairs: 0 pos (a,p1), 1 neg (a,n1), 2 pos (b,p2), 3 neg (b,n2); logits [different, same]
    logits = torch.tensor([[0.0, 2.0], [0.0, 1.0], [0.5, 0.0], [0.0, -1.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 0])
    triplets = torch.tensor([[0, 1], [2, 3]])
    ce = -(math.log(prob_same(2.0)) + math.log(1 - prob_same(1.0)) + math.log(prob_same(-0.5))
           + math.log(1 - prob_same(-1.0))) / 4
    margin = 0.5
    hinge = [max(0.0, margin - (prob_same(2.0) - prob_same(1.0))), max(0.0, margin - (prob_same(-0.5) -
                                                                                      prob_same(-1.0)))]
    loss = ImprovedRankingLoss(margin=margin, verification_weight=0.7, ranking_weight=2.0)
    assert loss(logits, labels, triplets).item() == pytest.approx(0.7 * ce + 2.0 * np.mean(hinge), rel=1e-12)
    v, r = loss.terms(logits, labels, triplets)
    assert v.item() == pytest.approx(ce) and r.item() == pytest.approx(np.mean(hinge))
    # log-odds scores: hinge on (2 - 1) and (-0.5 - -1) with margin 1.5
    r_logit = ImprovedRankingLoss(margin=1.5, score="logit").terms(logits, labels, triplets)[1]
    assert r_logit.item() == pytest.approx(np.mean([0.5, 1.0]))


def test_ranking_term_is_zero_when_all_easy_and_linear_when_all_hard():
    labels, triplets = torch.tensor([1, 0, 1, 0]), torch.tensor([[0, 1], [2, 3]])
    easy = torch.tensor([[-5.0, 5.0], [5.0, -5.0], [-6.0, 6.0], [4.0, -4.0]])  # P(same) ~1 vs ~0
    assert ImprovedRankingLoss(margin=0.5).terms(easy, labels, triplets)[1].item() == 0.0
    hard = -easy  # every negative scores higher than its positive
    s = torch.softmax(hard, 1)[:, 1]
    expected = ((0.5 - (s[0] - s[1])) + (0.5 - (s[2] - s[3]))) / 2
    got = ImprovedRankingLoss(margin=0.5, verification_weight=0.0).forward(hard, labels, triplets)
    assert got.item() == pytest.approx(expected.item()) and got.item() > 0.5


def test_ranking_loss_gradient_pushes_positive_up_and_negative_down():
    logits = torch.zeros(2, 2, requires_grad=True)
    ImprovedRankingLoss(margin=0.5, verification_weight=0.0)(logits, torch.tensor([1, 0]),
                                                             torch.tensor([[0, 1]])).backward()
    assert logits.grad[0, 1] < 0 < logits.grad[1, 1]  # descent raises the positive's same-logit, lowers the negative's


def test_ranking_loss_without_triplets_is_verification_only_and_still_differentiable():
    logits = torch.randn(3, 2, requires_grad=True)
    labels = torch.tensor([1, 0, 1])
    loss = ImprovedRankingLoss()(logits, labels, torch.zeros(0, 2, dtype=torch.long))
    loss.backward()
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_ranking_loss_is_registered_and_rejects_bad_input():
    assert isinstance(build_loss("improved_ranking", margin=0.2), ImprovedRankingLoss)
    with pytest.raises(ConfigError, match="score"):
        ImprovedRankingLoss(score="distance")
    with pytest.raises(ConfigError, match="margin"):
        ImprovedRankingLoss(margin=-1.0)
    logits, labels = torch.zeros(2, 2), torch.tensor([1, 0])
    with pytest.raises(TrainingError, match="column 0"):
        ImprovedRankingLoss()(logits, labels, torch.tensor([[1, 0]]))
    with pytest.raises(TrainingError, match="outside"):
        ImprovedRankingLoss()(logits, labels, torch.tensor([[0, 5]]))
    with pytest.raises(TrainingError, match="logits"):
        ImprovedRankingLoss()(torch.zeros(2, 3), labels, torch.tensor([[0, 1]]))


# ------------------------------------------------------------------------------------------------- triplets
def test_identity_batches_give_triplets_whose_pairs_share_an_anchor():
    rng = np.random.default_rng(0)
    pids, cams = rng.integers(1, 9, 70), rng.integers(0, 3, 70)
    for batch in identity_batches(pids, cams, 3, np.random.default_rng(1)):
        t = batch.triplets
        assert t is not None and len(t) == (batch.label == 0).sum()
        assert sorted(t[:, 1].tolist()) == np.flatnonzero(batch.label == 0).tolist()  # every negative once
        assert np.all(batch.label[t[:, 0]] == 1) and np.all(batch.label[t[:, 1]] == 0)
        first = anchor_is_first(batch)
        for pos, neg in t:
            shared = {batch.first[pos], batch.second[pos]} & {batch.first[neg], batch.second[neg]}
            assert len(shared) == 1
            anchor = batch.first[neg] if first[neg] else batch.second[neg]
            assert shared == {anchor}


# -------------------------------------------------------------------------------------------------- FLOPs
def test_flop_count_matches_a_hand_count_for_conv_grouped_conv_and_linear():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.grouped = nn.Conv2d(4, 8, 3, groups=2)
            self.fc = nn.Linear(8 * 6 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.grouped(self.conv(x))
            x = F.conv2d(x, torch.ones(8, 1, 1, 1), groups=8)  # functional depth-wise: hooks would miss it
            return self.fc(x.flatten(1))

    n = 2
    macs = n * (4 * 3 * 9 * (8 * 6) + 8 * 2 * 9 * (6 * 4) + 8 * (6 * 4) + (8 * 6 * 4) * 10)
    assert count_flops(Tiny(), torch.zeros(n, 3, 8, 6)) == 2 * macs
    assert count_params(Tiny()) == (4 * 27 + 4) + (8 * 18 + 8) + (192 * 10 + 10)
    assert set(flop_breakdown(Tiny(), torch.zeros(1, 3, 8, 6))) == {"convolution", "addmm"}


def test_correlation_flops_are_kernel_size_times_map_size_per_channel_and_patch():
    maps, kernels = torch.zeros(5, 4, 10, 6), torch.zeros(5, 4, 2, 3, 3)
    assert count_flops(depthwise_correlation, maps, kernels) == 2 * 5 * 4 * 2 * 9 * 60


# ----------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """8 identities x 2 cameras x 2 images; each identity has its own colour, so pairs are learnable."""
    folder = tmp_path_factory.mktemp("mls") / "toy" / "bounding_box_train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for pid in range(1, 9):
        colour = rng.integers(0, 255, 3)
        for cam, k in itertools.product((1, 2), range(2)):
            pixels = np.clip(colour + rng.normal(0, 20, (64, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{pid:04d}_c{cam}_{k:02d}.jpg")
    return folder.parent


def toy_config(**changes: object) -> PairTrainConfig:
    overrides = ["model.name=mls", "model.dropout=0.1", f"data.height={SMALL[0]}", f"data.width={SMALL[1]}",
                 "data.val_ids=3", "optim.epochs=2", "optim.optimizer=adam", "optim.lr=0.001",
                 "optim.schedule=constant", "sampling.ids_per_batch=2", "sampling.hard_from_epoch=2",
                 "sampling.hard_fraction=1.0", "loss.name=improved_ranking", "eval.cmc_ids=3", "eval.cmc_draws=1",
                 "num_threads=1", "device=cpu"]
    return load_config(PairTrainConfig, None, overrides + [f"{k}={v}" for k, v in changes.items()])


def test_mls_training_with_the_ranking_loss_writes_reports_and_resumes_exactly(toy_root, tmp_path):
    straight = train_pair_model(toy_config(), toy_root, tmp_path / "straight", show_progress=False)
    assert straight["model"] == "mls" and straight["epochs_done"] == 2
    assert set(straight["final"]) == {"pairs", "cmc", "views", "tta", "calibrated"}
    for name in ("last.pt", "best.pt", "summary.json", "pair_roc.png", "pair_confusion.png", "pair_cmc.png",
                 "pair_training_curves.png"):
        assert (tmp_path / "straight" / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert rows[1]["hard_negatives"] and all(
        r["loss"] == pytest.approx(r["verification_loss"] + r["ranking_loss"], rel=1e-6) for r in rows)

    model, payload = model_from_checkpoint(tmp_path / "straight" / "last.pt")
    assert payload["model_cfg"]["levels"] == ["low", "mid", "high"] and model.input_size == SMALL

    resumed = interrupt_and_resume_pair_training(toy_config, toy_root, tmp_path / "resumed")
    assert resumed["epochs_done"] == 2
    assert same_checkpoint_weights(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt")


def test_hard_negative_mining_keeps_each_triplet_anchor(toy_root, tmp_path):
    trainer = PairTrainer(toy_config(), tmp_path / "mine", toy_root, show_progress=False)
    trainer.setup()
    rng = np.random.default_rng(0)
    batch = identity_batches(trainer.train_pids, trainer.train_cams, 3, rng)[0]
    x = trainer.model.prepare(trainer.train_images[torch.from_numpy(batch.images)])
    first, second = trainer._mine_hard_negatives(batch, trainer.model.embed(x), rng)
    pids = trainer.train_pids[batch.images]
    keep = anchor_is_first(batch)
    for pos, neg in batch.triplets:
        anchor = batch.first[neg] if keep[neg] else batch.second[neg]
        assert anchor in (first[neg], second[neg]) and anchor in (first[pos], second[pos])
        assert pids[first[neg]] != pids[second[neg]]
    changed = (first != batch.first) | (second != batch.second)
    assert changed.any() and np.all(batch.label[changed] == 0)


def test_cross_entropy_mining_still_replaces_only_the_second_image(toy_root, tmp_path):
    trainer = PairTrainer(toy_config(**{"loss.name": "ce"}), tmp_path / "ce", toy_root, show_progress=False)
    trainer.setup()
    rng = np.random.default_rng(0)
    batch = identity_batches(trainer.train_pids, trainer.train_cams, 3, rng)[0]
    x = trainer.model.prepare(trainer.train_images[torch.from_numpy(batch.images)])
    first, second = trainer._mine_hard_negatives(batch, trainer.model.embed(x), rng)
    assert np.array_equal(first, batch.first) and (second != batch.second).any()


def test_config_file_routes_to_the_pair_trainer_and_builds_the_model():
    path = ROOT / "configs" / "mls_cuhk03np_cpu.yaml"
    assert _model_name(path) == "mls" and model_spec("mls").task == "pair"
    cfg = load_config(PairTrainConfig, path)
    assert cfg.data.validation == "auto" and cfg.data.val_ids == 150 and cfg.max_minutes <= 30
    model = build_model("mls", **cfg.model.build_kwargs((cfg.data.height, cfg.data.width)))
    assert model.levels == ("low", "mid", "high") and cfg.loss.build() is not None
    with pytest.raises(ConfigError, match="loss.name"):
        load_config(PairTrainConfig, path, ["loss.name=triplet"]).loss.build()


def test_max_train_ids_keeps_the_first_training_identities(toy_root, tmp_path):
    trainer = PairTrainer(toy_config(**{"data.max_train_ids": 2}), tmp_path / "few", toy_root, show_progress=False)
    trainer.setup()
    full = PairTrainer(toy_config(), tmp_path / "all", toy_root, show_progress=False)
    full.setup()
    assert np.unique(trainer.train_pids).tolist() == np.unique(full.train_pids)[:2].tolist()
    assert len(trainer.train_images) == len(trainer.train_pids) == 8  # 2 ids x 2 cameras x 2 images
    assert len(trainer.val_images) == len(full.val_images)  # the carve-out is unchanged


def test_identity_term_is_refused_for_mls_with_the_key_named(toy_root, tmp_path):
    trainer = PairTrainer(toy_config(**{"loss.id_weight": 1.0}), tmp_path / "id", toy_root, show_progress=False)
    with pytest.raises(ConfigError, match="loss.id_weight applies to .*not 'mls'"):
        trainer.setup()


def test_onnx_export_of_mls_fails_with_a_clear_error(tmp_path):
    pytest.importorskip("onnx")
    from reidkit.export.onnx import export_pair_onnx

    with pytest.raises(ModelError, match="MultiLevelSimilarity.* cannot be exported to ONNX opset 17"):
        export_pair_onnx(build_model("mls", input_size=SMALL), tmp_path / "mls.onnx")
    assert not (tmp_path / "mls.onnx").exists()
