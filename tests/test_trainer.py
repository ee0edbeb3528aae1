"""End-to-end trainer behaviour on a tiny synthetic dataset: learning, exact resume, NaN stop, extraction, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reidkit.checkpoint import load_checkpoint
from reidkit.cli.main import main
from reidkit.errors import ConfigError, TrainingError
from reidkit.inference.extractor import Extractor
from reidkit.training.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from reidkit.training.embedding import EmbeddingTrainer, train_embedding


def tiny_config(**optim) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(backbone="simple_cnn", pretrained=False, pooling="avg"),
        data=DataConfig(validation="dataset", height=64, width=32),
        optim=OptimConfig(**{"epochs": 3, "p": 4, "k": 2, "lr": 1e-3, "warmup_epochs": 1, **optim}),
        num_threads=1,
    )


def _weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_continues_to_the_same_weights(tiny_market, tmp_path):
    train_embedding(tiny_config(), tmp_path / "full", tiny_market, show_progress=False)
    # Interrupted run: 2 of 3 epochs, then resume from last.pt.
    cfg = tiny_config()
    trainer = EmbeddingTrainer(cfg, tmp_path / "part", tiny_market, show_progress=False)
    cfg.optim.epochs = 3
    # Simulate the interruption with the time budget: stop after the first epoch.
    cfg.max_minutes = 1e-9
    trainer.fit()
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1
    cfg.max_minutes = 0
    EmbeddingTrainer(cfg, tmp_path / "part", tiny_market, show_progress=False).fit(resume=True)
    full, part = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "part" / "last.pt")
    assert full.keys() == part.keys()
    for key in full:
        assert torch.equal(full[key], part[key]), key
    log = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2, 3]
    assert (tmp_path / "part" / "training_curves.png").stat().st_size > 0


def test_nan_loss_stops_with_clear_error(tiny_market, tmp_path):
    with pytest.raises(TrainingError, match="loss became"):
        train_embedding(tiny_config(lr=1e30, warmup_epochs=0), tmp_path / "nan", tiny_market, show_progress=False)


def test_extractor_embeds_paths_and_arrays_identically(tiny_market, tmp_path):
    train_embedding(tiny_config(epochs=1), tmp_path / "run", tiny_market, show_progress=False)
    ext = Extractor(tmp_path / "run" / "best.pt", device="cpu")
    paths = sorted((tiny_market / "query").glob("*.jpg"))[:3]
    from PIL import Image

    by_path = ext.embed(paths)
    by_array = ext.embed([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    assert by_path.shape == (3, ext.dim)
    np.testing.assert_allclose(np.linalg.norm(by_path, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(by_path, by_array, atol=1e-6)


def test_train_cli_overrides_and_bad_data_message(tiny_market, tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2
    assert "missing" in capsys.readouterr().err
    code = main(["train", "--data", str(tiny_market), "--out", str(tmp_path / "r"), "--quiet",
                 "model.backbone=simple_cnn", "model.pretrained=false", "data.validation=dataset",
                 "data.height=64", "data.width=32", "optim.epochs=1", "optim.p=4", "optim.k=2",
                 "optim.warmup_epochs=0", "num_threads=1"])
    assert code == 0
    assert load_checkpoint(tmp_path / "r" / "best.pt")["config"]["optim"]["epochs"] == 1


def test_two_students_train_mutually_with_their_own_checkpoints(tiny_market, tmp_path):
    cfg = tiny_config(epochs=1, warmup_epochs=0)
    cfg.students = 2
    train_embedding(cfg, tmp_path / "dml", tiny_market, show_progress=False)
    row = json.loads((tmp_path / "dml" / "log.jsonl").read_text().splitlines()[0])
    assert {"loss_mutual_kl", "loss_mutual_metric", "loss_s0_id", "loss_s1_id"} <= row.keys()
    assert len(row["val_students"]) == 2
    s0, s1 = _weights(tmp_path / "dml" / "best.pt"), _weights(tmp_path / "dml" / "best_student1.pt")
    assert any(not torch.equal(s0[k], s1[k]) for k in s0)  # two different networks, not one copied


def test_metric_loss_settings_reach_the_loss_or_fail_clearly(tiny_market, tmp_path):
    def built(**loss):
        cfg = tiny_config()
        for key, value in loss.items():
            setattr(cfg.loss, key, value)
        task = EmbeddingTrainer(cfg, tmp_path, tiny_market, show_progress=False).task
        task.num_classes, task.models = 4, [None]  # set by setup(); the losses need nothing else
        task._build_losses()
        return task.metric_loss

    assert built(metric_loss="soft_hard", margin=0.3).margin == 0.3
    assert built(metric_loss="soft_hard", soft_margin=True).margin is None  # softplus, as AGW
    assert built(metric_loss="triplet_batch_hard", metric_params={"margin": 0.7}).margin == 0.7  # params win
    with pytest.raises(ConfigError, match="loss.soft_margin=true.*quadruplet"):
        built(metric_loss="quadruplet", soft_margin=True)
    with pytest.raises(ConfigError, match="loss.margin=0.5.*quadruplet.*metric_params"):
        built(metric_loss="quadruplet", margin=0.5)  # would be ignored: quadruplet has alpha/beta
    assert built(metric_loss="quadruplet").alpha == 1.0  # the default margin is no request


def test_plot_metric_per_epoch_writes_a_picture_atomically(tmp_path):
    from PIL import Image

    from reidkit.training.plots import plot_metric_per_epoch

    path = tmp_path / "curves.png"
    plot_metric_per_epoch([("a: student 1", [5, 10], [20.0, 40.0], "a"), ("a: student 2", [5, 10], [21.0, 41.0], "a"),
                           ("b", [5, 10, 15], [10.0, 30.0, 35.0], "b")], path, "mAP (%)", "runs", target=50)
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == (720, 405)  # 8 x 4.5 inches at 90 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left behind
