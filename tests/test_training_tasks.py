"""The one training loop with tasks: any registered loss trains (CenterLoss centres against a hand-computed Adam
step, saved and restored), a pair network registered in a new file trains through `reidkit train` by its
registration alone, validation `auto` picks the root's own query/gallery, and each evaluation prints a line."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.checkpoint import load_checkpoint
from reidkit.cli.main import main
from reidkit.data.synth import SynthConfig, generate_market_dataset
from reidkit.errors import ConfigError
from reidkit.losses import CenterLoss
from reidkit.training.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from reidkit.training.embedding import EmbeddingTrainer, train_embedding
from reidkit.training.loop import train
from reidkit.training.splits import prepare_splits
from reidkit.training.tasks import EmbeddingTask


def center_config(**optim) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(backbone="simple_cnn", pretrained=False, pooling="avg"),
        data=DataConfig(validation="none", height=64, width=32),
        loss=LossConfig(extra=[{"name": "center", "weight": 0.5}]),
        optim=OptimConfig(**{"epochs": 1, "p": 4, "k": 2, "lr": 1e-3, "warmup_epochs": 0, **optim}),
        num_threads=1,
    )


def test_center_loss_centres_take_the_hand_computed_adam_step_towards_the_class_means(tiny_market, tmp_path,
                                                                                         monkeypatch):
    calls = []
    original = CenterLoss.forward

    def spy(self, embeddings, labels):
        calls.append((embeddings.detach().double().clone(), labels.clone(), self.centers.detach().double().clone()))
        return original(self, embeddings, labels)

    monkeypatch.setattr(CenterLoss, "forward", spy)
    accum = 1000  # one optimiser step, at the end of the only epoch, over the gradients of every batch
    train_embedding(center_config(accum_steps=accum), tmp_path / "run", tiny_market, show_progress=False)
    centres0 = calls[0][2]
    assert all(torch.equal(c, centres0) for *_, c in calls)  # no step inside the accumulation window
    # Hand computation: d/dc_k of 0.5 * mean_i ||x_i - c_y_i||^2 is -(1/B) sum_{i: y_i = k} (x_i - c_k); the
    # loss is weighted 0.5 and divided by the accumulation steps. Adam's first step is lr * g / (|g| + eps).
    grad = torch.zeros_like(centres0)
    for x, y, _ in calls:
        grad.index_add_(0, y, -(x - centres0[y]) / len(y) * 0.5 / accum)
    expected = centres0 - 1e-3 * grad / (grad.abs() + 1e-8)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["extra"]["loss.extra0"]["centers"].double()
    torch.testing.assert_close(saved, expected, atol=1e-6, rtol=0)
    # ... which moves every centre seen in the epoch towards the mean of its class's features.
    features, labels = torch.cat([x for x, _, _ in calls]), torch.cat([y for _, y, _ in calls])
    for k in labels.unique():
        mean = features[labels == k].mean(0)
        assert torch.dist(saved[k], mean) < torch.dist(centres0[k], mean)


def test_center_loss_centres_are_restored_on_resume(tiny_market, tmp_path):
    train_embedding(center_config(epochs=2), tmp_path / "straight", tiny_market, show_progress=False)
    cfg = center_config(epochs=2)
    cfg.max_minutes = 1e-9  # interrupted after the first epoch
    assert train_embedding(cfg, tmp_path / "resumed", tiny_market, show_progress=False)["epochs_done"] == 1
    first = load_checkpoint(tmp_path / "resumed" / "last.pt")["extra"]["loss.extra0"]["centers"]
    cfg.max_minutes = 0
    train_embedding(cfg, tmp_path / "resumed", tiny_market, resume=True, show_progress=False)
    straight, resumed = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    centres = straight["extra"]["loss.extra0"]["centers"]
    assert not torch.equal(centres, first)  # the centres moved in the second epoch ...
    assert torch.equal(centres, resumed["extra"]["loss.extra0"]["centers"])  # ... from the restored ones
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    # Resuming without the loss that owns the centres is refused, not silently restarted.
    EmbeddingTrainer(center_config(epochs=1), tmp_path / "plain", tiny_market, show_progress=False).fit()
    with pytest.raises(ConfigError, match="without loss.extra0"):
        train_embedding(center_config(epochs=2), tmp_path / "plain-then-center", tiny_market, show_progress=False,
                        resume=_copy_without_centres(tmp_path / "plain", tmp_path / "plain-then-center"))


def _copy_without_centres(src: Path, dst: Path) -> bool:
    shutil.copytree(src, dst)
    payload = load_checkpoint(dst / "last.pt")
    del payload["extra"]["loss.extra0"]
    torch.save(payload, dst / "last.pt")
    return True


def test_a_loss_the_embedding_task_cannot_feed_is_refused(tiny_market, tmp_path):
    cfg = center_config()
    cfg.loss.id_loss = "improved_ranking"  # a loss on pair logits
    with pytest.raises(ConfigError, match="loss.id_loss='improved_ranking'.*pair_logits"):
        train_embedding(cfg, tmp_path / "r", tiny_market, show_progress=False)


TINY_PAIR_MODULE = '''
import torch
import torch.nn as nn

from reidkit.models import register_model
from reidkit.models.pair.base import PairNetwork, pair_head


class TinyPair(PairNetwork):
    def __init__(self, input_size, dropout):
        super().__init__()
        self.input_size = tuple(input_size)
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d((4, 2)))
        self.head = pair_head(2 * 4 * 4 * 2, 16, dropout)
        self.reset_parameters()

    def embed(self, images):
        return self.trunk(images)

    def pair_layers(self, feats1, feats2):
        return self.head(torch.cat([(feats1 - feats2).abs().flatten(1), (feats1 * feats2).flatten(1)], 1))


@register_model("tiny_pair_for_tests", task="pair")
def build_tiny_pair(input_size=(40, 24), dropout=0.0, channels_last=False):
    return TinyPair(input_size, dropout)
'''


def test_a_pair_network_registered_in_a_new_file_trains_with_reidkit_train(tiny_market, tmp_path, capsys):
    module_path = tmp_path / "tiny_pair_model.py"
    module_path.write_text(TINY_PAIR_MODULE)
    spec = importlib.util.spec_from_file_location("tiny_pair_model", module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_pair_model"] = module
    spec.loader.exec_module(module)  # registers "tiny_pair_for_tests": no list anywhere else is edited
    config = tmp_path / "tiny_pair.yaml"
    config.write_text("model:\n  name: tiny_pair_for_tests\n  dropout: 0.1\ndata:\n  validation: auto\n"
                      "  height: 40\n  width: 24\noptim:\n  epochs: 2\n  optimizer: adam\n  lr: 0.001\n"
                      "eval:\n  cmc_ids: 3\n  cmc_draws: 1\nnum_threads: 1\ndevice: cpu\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(tiny_market), "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all({"train_accuracy", "pairs"} <= r.keys() and "balanced_accuracy" in r["val"] for r in rows)
    for name in ("best.pt", "last.pt", "pair_roc.png", "pair_confusion.png", "summary.json"):
        assert (out / name).is_file(), name
    payload = load_checkpoint(out / "best.pt")
    assert payload["model_name"] == "tiny_pair_for_tests" and payload["model_cfg"]["dropout"] == 0.1
    printed = capsys.readouterr().out
    assert "epoch 1/2 validation: pair accuracy" in printed and "epoch 2/2 validation: pair accuracy" in printed
    # An option another pair model declares is refused for this one, by the registrations alone.
    code = main(["train", "--config", str(config), "--data", str(tiny_market), "--out", str(tmp_path / "bad"),
                 "--quiet", "model.batchnorm=true"])
    assert code != 0 and "model.batchnorm=True applies to model.name idla / idla_ncc" in capsys.readouterr().err


def test_validation_auto_uses_the_roots_own_query_gallery_else_carves(tmp_path):
    root = generate_market_dataset(tmp_path / "synth", SynthConfig(num_train_ids=8, num_test_ids=4, num_cameras=2,
                                                                   images_per_camera=2, height=32, width=16,
                                                                   seed=1), show_progress=False)
    auto = DataConfig(validation="auto", val_ids=3)
    own = prepare_splits(root, auto)
    test_ids = {int(p.name[:4]) for p in (root / "query").glob("*.jpg")}
    assert {r.pid for r in own.query} == test_ids and len({r.pid for r in own.train}) == 8
    carved = prepare_splits(root / "bounding_box_train", auto)  # a training folder alone: carve from its ids
    assert len({r.pid for r in carved.query}) == 3 and len({r.pid for r in carved.train}) == 5
    assert not {r.pid for r in carved.query} & {r.pid for r in carved.train}
    with pytest.raises(ConfigError, match="data.validation='maybe'"):
        prepare_splits(root, DataConfig(validation="maybe"))


def test_training_says_how_ids_were_split_and_prints_each_evaluation(tiny_market, tmp_path, capsys):
    cfg = center_config(epochs=2)
    cfg.data.validation, cfg.eval_every = "auto", 1
    seen = []
    train(EmbeddingTask(cfg, tiny_market, show_progress=False), tmp_path / "run",
          callbacks=[lambda trainer, row: seen.append((trainer.out, row["epoch"]))])
    assert seen == [(tmp_path / "run", 1), (tmp_path / "run", 2)]
    lines = capsys.readouterr().out.splitlines()
    query, gallery = (list((tiny_market / split).glob("*.jpg")) for split in ("query", "bounding_box_test"))
    ids = {int(p.name[:4]) for p in query + gallery} - {0}  # 0000: distractors, not an identity
    assert (f"train 12 ids / 72 images; validation: {len(ids)} ids from {tiny_market} (query {len(query)}, "
            f"gallery {len(gallery)})") in lines
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    shown = [line for line in lines if "validation: rank-1" in line]
    assert len(shown) == 2
    for row, line in zip(rows, shown):
        assert line.startswith(f"epoch {row['epoch']}/2 validation: rank-1 {row['val']['rank1']:.1f}%  "
                               f"mAP {row['val']['mAP']:.1f}%")
    assert np.isclose(json.loads((tmp_path / "run" / "summary.json").read_text())["best"]["mAP"],
                      max(r["val"]["mAP"] for r in rows))
