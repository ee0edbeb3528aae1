"""Pair sampling, augmentation, verification metrics, pair ranking and the pair trainer, against plain-loop
references and hand-computed values."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import interrupt_and_resume_pair_training, same_checkpoint_weights
from reidkit.config import load_config
from reidkit.data.pairs import (
    balanced_pairs,
    hardest_candidates,
    identity_batches,
    negative_candidates,
    positive_pairs,
    random_flip,
    random_translate,
)
from reidkit.errors import ConfigError, DataError, TrainingError
from reidkit.metrics.pair_ranking import (
    cuhk03_single_shot_cmc,
    single_shot_cmc,
    single_shot_draws,
)
from reidkit.metrics.rank import MetricInputError
from reidkit.metrics.verification import (
    balanced_accuracy,
    best_threshold,
    confusion_matrix,
    pair_accuracy,
    roc_auc,
    roc_curve,
    verification_report,
)
from reidkit.models import build_model
from reidkit.training.pair import PairTrainConfig, PairTrainer, load_train_records, train_pair_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def random_ids(seed: int, n: int = 40, ids: int = 7, cams: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, ids + 1, n), rng.integers(0, cams, n)


def naive_positive_pairs(pids, camids, cross_camera):
    return {(i, j) for i in range(len(pids)) for j in range(i + 1, len(pids))
            if pids[i] == pids[j] and (not cross_camera or camids[i] != camids[j])}


# ------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("cross_camera", [True, False])
def test_positive_pairs_match_a_double_loop(cross_camera):
    pids, cams = random_ids(0)
    first, second = positive_pairs(pids, cams, cross_camera)
    got = list(zip(first.tolist(), second.tolist()))
    assert len(got) == len(set(got))
    assert set(got) == naive_positive_pairs(pids, cams, cross_camera)


def test_balanced_pairs_hold_every_positive_once_and_as_many_valid_negatives():
    pids, cams = random_ids(1)
    pairs = balanced_pairs(pids, cams, np.random.default_rng(0))
    same = pairs.label == 1
    assert same.sum() == (~same).sum()
    positives = {tuple(sorted(p)) for p in zip(pairs.first[same].tolist(), pairs.second[same].tolist())}
    assert positives == naive_positive_pairs(pids, cams, True) and len(positives) == same.sum()
    for i, j in zip(pairs.first[~same], pairs.second[~same]):
        assert pids[i] != pids[j] and cams[i] != cams[j]


def test_identity_batches_cover_every_positive_once_and_stay_balanced():
    pids, cams = random_ids(2, n=60, ids=10)
    batches = identity_batches(pids, cams, 3, np.random.default_rng(0))
    seen = []
    for batch in batches:
        g1, g2 = batch.images[batch.first], batch.images[batch.second]
        assert (batch.label == 1).sum() == (batch.label == 0).sum()
        assert np.all((pids[g1] == pids[g2]) == (batch.label == 1))
        assert np.all(cams[g1] != cams[g2])
        assert len(np.unique(pids[batch.images])) >= 3 or batch is batches[-1]
        seen += [tuple(sorted(p)) for p in zip(g1[batch.label == 1].tolist(), g2[batch.label == 1].tolist())]
    assert len(seen) == len(set(seen)) and set(seen) == naive_positive_pairs(pids, cams, True)


def test_negative_candidates_are_distinct_valid_and_flag_short_pools():
    pool_pids, pool_cams = np.array([1, 1, 2, 2, 3, 3]), np.array([0, 1, 0, 1, 0, 1])
    anchors_p, anchors_c = np.array([1, 2]), np.array([0, 1])
    chosen, valid = negative_candidates(anchors_p, anchors_c, pool_pids, pool_cams, 4, np.random.default_rng(0))
    # valid for anchor (pid 1, cam 0): pool items 3 and 5 (other pid, camera 1) -> only 2 of 4 wanted
    assert chosen.shape == (2, 4) and valid.sum(1).tolist() == [2, 2]
    assert set(chosen[0][valid[0]].tolist()) == {3, 5} and set(chosen[1][valid[1]].tolist()) == {0, 4}
    assert all(len(set(row)) == 4 for row in chosen.tolist())


def test_hardest_candidate_is_the_highest_scoring_valid_one():
    candidates = np.array([[4, 7, 9], [1, 2, 3], [5, 6, 8]])
    scores = np.array([[0.1, 0.9, 0.5], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    valid = np.array([[True, False, True], [True, True, True], [False, False, False]])
    assert hardest_candidates(scores, candidates, valid).tolist() == [9, 1, -1]


def test_random_translate_is_an_edge_padded_whole_pixel_shift_within_range():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (6, 3, 20, 10), generator=gen, dtype=torch.uint8)
    shifted = random_translate(images, 0.1, generator=gen)
    h, w = 20, 10
    for img, out in zip(images, shifted):
        matches = []
        for dy, dx in itertools.product(range(-2, 3), range(-1, 2)):
            expected = torch.empty_like(img)
            for y in range(h):
                for x in range(w):
                    expected[:, y, x] = img[:, min(max(y - dy, 0), h - 1), min(max(x - dx, 0), w - 1)]
            matches.append(torch.equal(expected, out))
        assert any(matches)
    assert not torch.equal(shifted, images)  # 6 images all drawing (0, 0) has probability 15**-6


def test_random_flip_mirrors_some_images_and_keeps_the_others():
    images = torch.randn(16, 3, 8, 4)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


# ----------------------------------------------------------------------------------------------- verification
def test_confusion_matrix_and_accuracies_hand_values():
    scores = np.array([2.0, -1.0, 0.5, -0.2, 3.0, -4.0])
    labels = np.array([1, 1, 0, 0, 1, 0])
    # predicted same: 2.0, 0.5, 3.0 -> TP 2 (2.0, 3.0), FN 1 (-1.0), FP 1 (0.5), TN 2 (-0.2, -4.0)
    assert confusion_matrix(scores, labels).tolist() == [[2, 1], [1, 2]]
    assert pair_accuracy(scores, labels) == pytest.approx(4 / 6)
    assert balanced_accuracy(scores, labels) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert confusion_matrix(scores, labels, threshold=1.0).tolist() == [[3, 0], [1, 2]]


def test_roc_and_auc_against_naive_threshold_sweep_and_pair_counting():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(labels * 1.0, 1.0), 1)  # rounding creates ties
    fpr, tpr, thresholds = roc_curve(scores, labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    for f, t, th in zip(fpr, tpr, thresholds):
        assert f == pytest.approx(np.mean(neg >= th)) and t == pytest.approx(np.mean(pos >= th))
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert roc_auc(scores, labels) == pytest.approx(wins / (len(pos) * len(neg)))
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0 and roc_auc([1, 1], [0, 1]) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_threshold_matches_a_sweep_over_every_cut(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.normal(labels * 1.5 - 0.4, 1.0), 1)  # ties; the best cut is not at 0
    cuts = np.r_[scores.min() - 1, (np.unique(scores)[1:] + np.unique(scores)[:-1]) / 2, scores.max()]
    best = max(balanced_accuracy(scores, labels, c) for c in cuts)
    threshold = best_threshold(scores, labels)
    assert balanced_accuracy(scores, labels, threshold) == pytest.approx(best)
    assert not np.isin(threshold, scores)  # strictly between two scores: no pair sits on the cut
    assert balanced_accuracy([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1], best_threshold([0.1, 0.2, 0.9, 0.8],
                                                                               [0, 0, 1, 1])) == 1.0


def test_verification_rejects_bad_input():
    with pytest.raises(MetricInputError, match="labels"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(MetricInputError, match="equal length"):
        pair_accuracy([0.1, 0.2], [1])
    with pytest.raises(MetricInputError, match="0 \\(different\\) and 1"):
        verification_report([0.1, 0.2], [0, 2])


# -------------------------------------------------------------------------------------------------- ranking
def naive_single_shot_cmc(scores, q_pids, g_pids):
    ranks = []
    for i, q in enumerate(q_pids):
        match = [j for j, g in enumerate(g_pids) if g == q][0]
        ranks.append(sum(1 for j in range(len(g_pids)) if j != match and scores[i, j] >= scores[i, match]))
    return np.array([np.mean([r < k for r in ranks]) for k in range(1, len(g_pids) + 1)])


def test_single_shot_cmc_matches_a_plain_loop_and_hand_values():
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(size=(7, 7)), 1)
    q_pids, g_pids = np.arange(7), rng.permutation(7)
    np.testing.assert_allclose(single_shot_cmc(scores, q_pids, g_pids), naive_single_shot_cmc(scores, q_pids, g_pids))
    hand = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.0], [0.2, 0.2, 0.2]])  # ranks 0, 1, 2 (ties count against)
    np.testing.assert_allclose(single_shot_cmc(hand, [0, 1, 2], [0, 1, 2]), [1 / 3, 2 / 3, 1.0])
    with pytest.raises(MetricInputError, match="exactly one"):
        single_shot_cmc(hand, [0, 1, 1], [0, 1, 1])


def test_single_shot_draws_follow_the_cuhk03_protocol():
    pids = np.repeat(np.arange(1, 13), 6)
    cams = np.tile([0, 0, 0, 1, 1, 1], 12)
    cams[pids == 12] = 0  # identity 12 is never seen by camera 1: it cannot take part
    draws = single_shot_draws(pids, cams, num_ids=5, num_draws=4, seed=0)
    assert len(draws) == 4
    for q_idx, g_idx in draws:
        assert len(set(pids[q_idx])) == 5 and np.array_equal(pids[q_idx], pids[g_idx])
        assert np.all(cams[q_idx] == 0) and np.all(cams[g_idx] == 1) and 12 not in pids[q_idx]
    assert len({tuple(q) for q, _ in draws}) > 1  # draws differ
    with pytest.raises(MetricInputError, match="num_ids"):
        single_shot_draws(pids, cams, num_ids=12)


class DistanceModel(torch.nn.Module):
    """Stand-in pair network: features = flattened pixels, score = minus squared distance."""

    def embed_batched(self, images, batch_size=0):
        return images.float().flatten(1)

    def image_pair_scores(self, images1, images2, i1, i2, batch_size=0, symmetric=False, flip=False):
        f1, f2 = self.embed_batched(images1), self.embed_batched(images2)
        return -((f1[i1] - f2[i2]) ** 2).sum(1)


def test_cuhk03_cmc_averages_the_draws_of_a_pair_scorer():
    gen = torch.Generator().manual_seed(5)
    pids = np.repeat(np.arange(8), 4)
    cams = np.tile([0, 0, 1, 1], 8)
    identity_colour = torch.rand(8, 3, 1, 1, generator=gen)
    images = identity_colour[pids] + 0.3 * torch.rand(32, 3, 4, 2, generator=gen)
    result = cuhk03_single_shot_cmc(DistanceModel(), images, pids, cams, num_ids=5, num_draws=3, seed=1, max_rank=5)
    curves = []
    for q_idx, g_idx in single_shot_draws(pids, cams, 5, 3, seed=1):
        f_q, f_g = images[q_idx].flatten(1), images[g_idx].flatten(1)
        scores = -torch.cdist(f_q, f_g).numpy() ** 2
        curves.append(naive_single_shot_cmc(scores, pids[q_idx], pids[g_idx]))
    np.testing.assert_allclose(result["cmc"], 100 * np.mean(curves, axis=0), rtol=1e-6)
    assert result["rank1"] == pytest.approx(result["cmc"][0]) and len(result["rank1_per_draw"]) == 3


# -------------------------------------------------------------------------------------------------- trainer
@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    """8 identities x 2 cameras x 2 images; each identity has its own colour, so pairs are learnable."""
    root = tmp_path_factory.mktemp("pairs") / "toy"
    folder = root / "bounding_box_train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for pid in range(1, 9):
        colour = rng.integers(0, 255, 3)
        for cam, k in itertools.product((1, 2), range(2)):
            pixels = np.clip(colour + rng.normal(0, 20, (64, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{pid:04d}_c{cam}_{k:02d}.jpg")
    return root


def toy_config(**changes: object) -> PairTrainConfig:
    overrides = ["data.height=40", "data.width=24", "data.val_ids=3", "optim.epochs=2", "optim.optimizer=adam",
                 "optim.lr=0.001", "optim.schedule=constant", "sampling.ids_per_batch=2",
                 "sampling.hard_from_epoch=2", "eval.cmc_ids=3", "eval.cmc_draws=1", "num_threads=1", "device=cpu"]
    return load_config(PairTrainConfig, None, overrides + [f"{k}={v}" for k, v in changes.items()])


def test_training_writes_checkpoints_logs_pictures_and_resumes_to_the_same_weights(toy_root, tmp_path):
    straight = train_pair_model(toy_config(), toy_root, tmp_path / "straight", show_progress=False)
    assert straight["epochs_done"] == 2 and set(straight["final"]) == {"pairs", "cmc", "views", "tta", "calibrated"}
    for name in ("last.pt", "best.pt", "log.jsonl", "summary.json", "pair_roc.png", "pair_confusion.png",
                 "pair_confusion_tta.png", "pair_cmc.png", "pair_training_curves.png"):
        assert (tmp_path / "straight" / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["hard_negatives"] and not rows[0]["hard_negatives"]

    resumed = interrupt_and_resume_pair_training(toy_config, toy_root, tmp_path / "resumed")
    assert resumed["epochs_done"] == 2
    assert same_checkpoint_weights(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt")


def test_nan_loss_raises_a_training_error(toy_root, tmp_path):
    trainer = PairTrainer(toy_config(), tmp_path / "nan", toy_root, show_progress=False)
    trainer.setup()
    with torch.no_grad():
        trainer.model.head[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="epoch 1, step 1"):
        trainer._train_epoch(0)


def test_config_errors_name_the_key(toy_root, tmp_path):
    with pytest.raises(ConfigError, match="model.name"):
        train_pair_model(toy_config(**{"model.name": "resnet"}), toy_root, tmp_path / "a", show_progress=False)
    with pytest.raises(ConfigError, match="data.validation"):
        train_pair_model(toy_config(**{"data.validation": "maybe"}), toy_root, tmp_path / "b", show_progress=False)
    with pytest.raises(ConfigError, match="ids_per_batch"):
        identity_batches([1, 2], [0, 1], 1, np.random.default_rng(0))
    with pytest.raises(DataError, match="positive pairs"):
        balanced_pairs([1, 2, 3], [0, 1, 0], np.random.default_rng(0))


def test_idla_accuracy_recipe_is_the_budget_config_plus_its_stated_options():
    import yaml

    configs = Path(__file__).resolve().parents[1] / "configs"
    budget = yaml.safe_load((configs / "idla_cuhk03np_cpu.yaml").read_text())
    recipe = yaml.safe_load((configs / "idla_bn_id_cuhk03np.yaml").read_text())
    assert recipe["model"].pop("batchnorm") is True
    assert recipe.pop("loss") == {"id_weight": 1.0, "id_label_smooth": 0.1}
    assert (recipe["optim"].pop("epochs"), recipe["sampling"].pop("hard_from_epoch")) == (80, 75)
    assert (recipe.pop("num_threads"), recipe.pop("max_minutes")) == (2, 0)
    for section, key in (("optim", "epochs"), ("sampling", "hard_from_epoch")):
        del budget[section][key]
    del budget["num_threads"], budget["max_minutes"]
    assert recipe == budget
    cfg = load_config(PairTrainConfig, configs / "idla_bn_id_cuhk03np.yaml")
    assert cfg.model.batchnorm and cfg.loss.id_weight == 1.0 and cfg.optim.epochs == 80


@pytest.mark.shared
def test_real_cuhk03np_training_folder_gives_pairs_for_the_carve_out():
    root = SHARED / "datasets" / "cuhk03np-detected"
    if not (root / "bounding_box_train").is_dir():
        pytest.skip("shared CUHK03-NP data not present")
    from reidkit.data.split import carve_validation_records

    records = load_train_records(root)
    assert len(records) == 7365 and len({r.pid for r in records}) == 767
    split = carve_validation_records(records, 150, 0)
    val = split.query + split.gallery
    pids = np.array([r.pid for r in val])
    cams = np.array([r.camid for r in val])
    assert len(set(pids)) == 150 and set(cams) == {0, 1}
    draws = single_shot_draws(pids, cams, num_ids=100, num_draws=10, seed=0)
    assert all(len(q) == len(g) == 100 for q, g in draws)


def _features_with_paths(tiny_market: Path, path: Path) -> dict:
    from reidkit.data import load_dataset

    data = load_dataset(tiny_market)
    rng = np.random.default_rng(11)
    arrays = {"query_features": rng.normal(size=(len(data.query), 6)),
              "gallery_features": rng.normal(size=(len(data.gallery), 6))}
    for key, records in (("q", data.query), ("g", data.gallery)):
        arrays[f"{key}_pids"] = np.array([r.pid for r in records])
        arrays[f"{key}_camids"] = np.array([r.camid for r in records])
        arrays[f"{key}_paths"] = np.array([str(r.path) for r in records])
    np.savez(path, **arrays)
    return arrays


def test_evaluate_pair_checkpoint_reranks_the_top_k_like_a_plain_loop(tiny_market, tmp_path, monkeypatch):
    import reidkit.cli.evaluate as report
    from reidkit.checkpoint import save_checkpoint
    from reidkit.cli.main import main

    arrays = _features_with_paths(tiny_market, tmp_path / "feats.npz")
    torch.manual_seed(0)
    model = build_model("idla", input_size=(40, 24)).eval()
    save_checkpoint(tmp_path / "pair.pt", model=model, model_name="idla", model_cfg={"input_size": [40, 24]}, epoch=1)
    seen, real_rank = {}, report.evaluate_rank_full

    def rank(distmat, *args, **kwargs):  # keep the distances the CLI ranks with
        seen["distmat"] = np.array(distmat)
        return real_rank(distmat, *args, **kwargs)

    monkeypatch.setattr(report, "evaluate_rank_full", rank)
    k, weight = 4, 0.5
    assert main(["evaluate", "--features", str(tmp_path / "feats.npz"), "--pair-checkpoint", str(tmp_path / "pair.pt"),
                 "--pair-top-k", str(k), "--pair-weight", str(weight), "--quiet"]) == 0

    def image(path: str) -> torch.Tensor:  # the stretch resize every reidkit loader uses
        pixels = np.array(Image.open(path).convert("RGB").resize((24, 40), Image.BILINEAR))
        return model.prepare(torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous())

    qf, gf = arrays["query_features"], arrays["gallery_features"]
    got, reordered = seen["distmat"], 0
    for i in range(len(qf)):
        by_distance = sorted(range(len(gf)), key=lambda j: np.sum((qf[i] - gf[j]) ** 2))
        top = by_distance[:k]
        with torch.no_grad():
            logits = {j: model(image(arrays["q_paths"][i]), image(arrays["g_paths"][j]))[0] for j in top}
        score = {j: (logits[j][1] - logits[j][0]).item() for j in top}
        by_pair = sorted(top, key=lambda j: (-score[j], top.index(j)))
        fused = {j: (1 - weight) * top.index(j) + weight * by_pair.index(j) for j in top}
        expected = sorted(top, key=lambda j: (fused[j], top.index(j))) + by_distance[k:]
        assert sorted(range(len(gf)), key=lambda j: got[i, j]) == expected
        reordered += expected != by_distance
    assert reordered > 0  # the pair network did change some rankings: the check is not vacuous


def test_evaluate_pair_checkpoint_errors_name_the_problem(tiny_market, tmp_path, capsys):
    from reidkit.checkpoint import save_checkpoint
    from reidkit.cli.main import main

    arrays = _features_with_paths(tiny_market, tmp_path / "feats.npz")
    no_paths = tmp_path / "no_paths.npz"
    np.savez(no_paths, **{k: v for k, v in arrays.items() if not k.endswith("_paths")})
    pair = tmp_path / "pair.pt"
    save_checkpoint(pair, model=build_model("idla", input_size=(40, 24)), model_name="idla",
                    model_cfg={"input_size": [40, 24]}, epoch=1)
    embedding = tmp_path / "embedding.pt"
    save_checkpoint(embedding, model=build_model("embedding", backbone="simple_cnn", pretrained=False),
                    model_name="embedding", model_cfg={"backbone": "simple_cnn", "pretrained": False}, epoch=1)
    capsys.readouterr()
    assert main(["evaluate", "--features", str(no_paths), "--pair-checkpoint", str(pair)]) == 2
    assert "q_paths" in capsys.readouterr().err
    assert main(["evaluate", "--features", str(tmp_path / "feats.npz"), "--pair-checkpoint", str(embedding)]) == 2
    assert "not a pair network" in capsys.readouterr().err
    assert main(["evaluate", "--features", str(tmp_path / "feats.npz"), "--pair-checkpoint", str(pair),
                 "--pair-weight", "2"]) == 2
    assert "--pair-weight" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "option", "value"), [("idla", "mode", "beside"), ("idla", "levels", ["high"]),
                                                       ("mls", "batchnorm", True), ("idla_ncc", "use_stn", False)])
def test_pair_model_options_of_another_model_are_refused(name, option, value):
    from reidkit.training.pair import PairModelConfig

    cfg = PairModelConfig(name=name, **{option: value})
    with pytest.raises(ConfigError, match=f"model.{option}=.*not '{name}'"):
        cfg.build_kwargs((160, 60))
    assert PairModelConfig(name=name).build_kwargs((160, 60))["input_size"] == [160, 60]  # defaults pass


def id_config(**changes: object) -> PairTrainConfig:
    return toy_config(**{"loss.id_weight": 1.0, "model.batchnorm": "true", **changes})


def test_identity_term_logs_its_loss_and_resumes_with_its_head(toy_root, tmp_path):
    straight = train_pair_model(id_config(), toy_root, tmp_path / "straight", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    num_ids = 8 - 3  # the toy set minus the validation carve-out
    # a fresh head's smoothed CE sits near log(num_ids); the pair CE alone is below log(2)
    assert abs(rows[0]["identity_loss"] - math.log(num_ids)) < 0.7
    assert rows[0]["loss"] > rows[0]["identity_loss"] and straight["best"]
    interrupt_and_resume_pair_training(id_config, toy_root, tmp_path / "resumed")
    assert same_checkpoint_weights(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt")
    heads = [torch.load(tmp_path / run / "last.pt", weights_only=False)["extra"]["id_head"]
             for run in ("straight", "resumed")]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_identity_labels_number_each_training_person_once(toy_root, tmp_path):
    trainer = PairTrainer(id_config(), tmp_path / "labels", toy_root, show_progress=False)
    trainer.setup()
    labels, pids = trainer.id_labels.numpy(), trainer.train_pids
    assert sorted(set(labels)) == list(range(len(set(pids))))
    for i, j in itertools.combinations(range(len(pids)), 2):
        assert (labels[i] == labels[j]) == (pids[i] == pids[j])
    assert trainer.id_head.classifier.out_features == len(set(pids))


def test_identity_term_errors_name_the_key(toy_root, tmp_path):
    with pytest.raises(ConfigError, match="loss.id_weight"):
        train_pair_model(id_config(**{"loss.id_weight": -1}), toy_root, tmp_path / "a", show_progress=False)
    train_pair_model(id_config(**{"optim.epochs": 1, "loss.id_weight": 0}), toy_root, tmp_path / "c",
                     show_progress=False)
    with pytest.raises(ConfigError, match="without loss.id_weight"):
        train_pair_model(id_config(**{"optim.epochs": 2}), toy_root, tmp_path / "c", resume=True,
                         show_progress=False)
    with pytest.raises(ConfigError, match=r"model.batchnorm: True there, False now"):
        train_pair_model(toy_config(**{"optim.epochs": 2}), toy_root, tmp_path / "c", resume=True,
                         show_progress=False)


def test_calibrated_report_uses_the_threshold_best_on_training_identity_pairs(toy_root, tmp_path):
    trainer = PairTrainer(toy_config(), tmp_path / "calibrated", toy_root, show_progress=False)
    trainer.setup()
    trainer.model.eval()
    train_scores, train_labels = trainer.training_pair_scores(False, False)
    assert set(np.unique(train_labels)) == {0, 1} and not set(trainer.train_pids) & set(trainer.val_pids)
    ordered = np.sort(train_scores)
    cuts = np.r_[ordered[0] - 1, (ordered[1:] + ordered[:-1]) / 2, ordered[-1]]
    best_on_train = max(balanced_accuracy(train_scores, train_labels, c) for c in cuts)
    val_scores = trainer.validation_scores(False, False)
    report = trainer.calibrated_report(val_scores, False, False)
    assert balanced_accuracy(train_scores, train_labels, report["threshold"]) == pytest.approx(best_on_train)
    predicted_same = val_scores > report["threshold"]
    labels = trainer.val_pairs.label.astype(bool)
    by_hand = 50 * (np.mean(predicted_same[labels]) + np.mean(~predicted_same[~labels]))
    assert report["balanced_accuracy"] == pytest.approx(by_hand)
