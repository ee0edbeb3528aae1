"""ACRN: the weighted attribute cross-entropy, the ACRN triplet term and fused inference against hand-evaluated
formulas and naive loops; the attributes task's configuration errors; a short training run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.config import load_config
from reidkit.data.synth import SynthConfig, generate_market_dataset
from reidkit.errors import ConfigError, DataError, ModelError
from reidkit.losses import build_loss
from reidkit.losses.attributes import positive_rate_weights
from reidkit.models import build_model
from reidkit.training.tasks import task_for_model
from reidkit.training.tasks.attributes import AttributeTask, AttributeTrainConfig, attribute_accuracy

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "acrn_synth.yaml"


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rates = [0.25, 0.5]
    loss = build_loss("attribute_wce", positive_rates=rates)(logits, targets)
    w = [math.exp(-0.25), math.exp(-0.5)]

    def sig(z):
        return 1 / (1 + math.exp(-z))

    image1 = -(w[0] * math.log(sig(0.0)) + w[1] * math.log(1 - sig(2.0)))
    image2 = -(w[0] * math.log(1 - sig(-1.0)) + w[1] * math.log(sig(0.5)))
    assert loss.item() == pytest.approx((image1 + image2) / 2, rel=1e-6)
    explicit = build_loss("attribute_wce", weights=[2.0, 0.0], reduction="sum")(logits, targets)
    assert explicit.item() == pytest.approx(-2 * (math.log(sig(0.0)) + math.log(1 - sig(-1.0))), rel=1e-6)
    np.testing.assert_allclose(positive_rate_weights([0.0, 1.0], sigma=2.0).numpy(), [1.0, math.exp(-0.25)])


def test_weighted_cross_entropy_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="positive rates"):
        build_loss("attribute_wce", positive_rates=[1.5])
    loss = build_loss("attribute_wce", positive_rates=[0.1, 0.2])
    with pytest.raises(Exception, match="2 weights for 3 attributes"):
        loss(torch.zeros(4, 3), torch.zeros(4, 3))


def _naive_acrn(f, att, labels, gamma, margin):
    """All triplets, the batch-hard choice made on d(f) + gamma d(att), per anchor, by plain loops."""
    def d(x, i, j):
        return float(np.sqrt(((x[i] - x[j]) ** 2).sum()))

    losses = []
    for a in range(len(labels)):
        pos = [p for p in range(len(labels)) if labels[p] == labels[a] and p != a]
        neg = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not pos or not neg:
            continue
        p = max(pos, key=lambda j: d(f, a, j) + gamma * d(att, a, j))
        n = min(neg, key=lambda j: d(f, a, j) + gamma * d(att, a, j))
        value = d(f, a, p) - d(f, a, n) + margin + gamma * (d(att, a, p) - d(att, a, n))
        losses.append(max(value, 0.0))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_attribute_triplet_against_a_naive_loop(gamma):
    rng = np.random.default_rng(3)
    f = rng.normal(size=(8, 5)).astype(np.float32)
    att = rng.random((8, 4)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    loss = build_loss("attribute_triplet", gamma=gamma, margin=0.5)
    value = loss(torch.tensor(f), torch.tensor(labels), torch.tensor(att)).item()
    assert value == pytest.approx(_naive_acrn(f, att, labels, gamma, 0.5), rel=1e-5)


def test_attribute_triplet_with_given_triplets_formula():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])  # d(a,p) = 5, d(a,n) = 1
    att = torch.tensor([[0.0, 0.0], [0.0, 0.5], [1.0, 1.0]])  # d = 0.5 and sqrt(2)
    triplets = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    value = build_loss("attribute_triplet", gamma=2.0, margin=0.3)(f, torch.tensor([0, 0, 1]), att, triplets)
    assert value.item() == pytest.approx(5 - 1 + 0.3 + 2 * (0.5 - math.sqrt(2)), rel=1e-6)


def test_fused_inference_dimension_and_weighting_by_hand():
    model = build_model("acrn", backbone="simple_cnn", num_attributes=3, fusion_weight=2.0, num_classes=5,
                        input_size=(64, 32)).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        fused = model(x)
        reid, probs = model.embed_parts(x)
    assert fused.shape == (2, model.embedding_dim + 3)
    # by hand: [r/|r|, 2 p/|p|] has norm sqrt(1 + 4)
    expected = torch.cat([reid / reid.norm(dim=1, keepdim=True), 2 * probs / probs.norm(dim=1, keepdim=True)], 1)
    torch.testing.assert_close(fused, expected / math.sqrt(5.0))
    # cosine distance of fused = (d_cos(reid) + 4 d_cos(probs)) / 5
    cos = lambda u, v: 1 - float((u / u.norm()) @ (v / v.norm()))  # noqa: E731
    assert cos(fused[0], fused[1]) == pytest.approx((cos(reid[0], reid[1]) + 4 * cos(probs[0], probs[1])) / 5,
                                                    abs=1e-5)
    with pytest.raises(ModelError, match="num_attributes"):
        build_model("acrn", backbone="simple_cnn", num_attributes=0)


def test_attribute_accuracy_by_hand():
    probs = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1]])
    labels = np.array([[1, 0], [1, 1], [0, 0]])
    acc = attribute_accuracy(probs, labels, ["a", "b"])
    assert acc == pytest.approx({"a": 100 / 3, "b": 100.0, "mean": (100 / 3 + 100) / 2})


@pytest.fixture(scope="module")
def synth_attr(tmp_path_factory):
    root = tmp_path_factory.mktemp("acrn") / "synth"
    return generate_market_dataset(root, SynthConfig(num_train_ids=6, num_test_ids=3, images_per_camera=2),
                                   show_progress=False, attributes=True)


def _cfg(overrides=()):
    return load_config(AttributeTrainConfig, CONFIG,
                       ["optim.epochs=2", "optim.pretrain_epochs=1", "optim.warmup_epochs=0", "optim.p=3",
                        "optim.k=2", "model.pretrained=false", "model.backbone=simple_cnn", "eval_every=1",
                        "data.height=64", "data.width=32", "flip_tta=false", "max_minutes=0", *overrides])


def test_attribute_config_naming_a_missing_column(synth_attr):
    task = AttributeTask(_cfg(["attributes.names=[hat]"]), synth_attr / "attributes.csv", show_progress=False)
    with pytest.raises(ConfigError, match=r"attr_hat not a column of .*attributes\.csv"):
        task.setup()


def test_attributes_task_needs_attribute_columns(synth_attr):
    task = AttributeTask(_cfg(), synth_attr, show_progress=False)  # the Market folders: no attribute labels
    with pytest.raises(DataError, match="no attribute labels"):
        task.setup()


def test_attributes_task_refuses_another_metric_loss():
    with pytest.raises(ConfigError, match="attribute_triplet"):
        AttributeTask(_cfg(["loss.metric_loss=triplet_batch_hard"]), "x.csv", show_progress=False)


@pytest.mark.slow
def test_acrn_trains_and_validates(synth_attr, tmp_path):
    from reidkit.training.loop import train

    assert task_for_model("acrn") is AttributeTask
    summary = train(AttributeTask(_cfg(), synth_attr / "attributes.csv", show_progress=False), tmp_path / "run")
    last = summary["log"][-1]
    assert {"loss_attribute", "loss_metric", "loss_id"} <= set(last)
    assert set(last["val_attributes"]) >= {"bag_backpack", "upper_black", "mean"}
    assert 0 <= last["val_reid"]["mAP"] <= 100
    from test_plnet import _extractor_map  # the fused descriptor through the inference path

    assert _extractor_map(tmp_path / "run" / "best.pt", synth_attr) == pytest.approx(summary["best"]["mAP"], abs=1e-3)


def test_prior_bias_is_the_log_odds_of_the_training_rates(synth_attr):
    import csv

    task = AttributeTask(_cfg(["data.validation=none"]), synth_attr / "attributes.csv", show_progress=False)
    task.setup()
    with open(synth_attr / "attributes.csv") as f:  # by hand: the share of training rows with each attribute
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    for i, name in enumerate(task.attribute_names):
        rate = min(max(sum(int(r[f"attr_{name}"]) for r in rows) / len(rows), 1e-3), 1 - 1e-3)
        bias = float(task.models[0].attribute_head.bias[i].detach())
        assert bias == pytest.approx(math.log(rate / (1 - rate)), abs=1e-4)
