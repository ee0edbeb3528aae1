"""`init_from`: an image-embedding run starts from a checkpoint's weights (a student from its teacher, a new run
from an earlier one). Reference: the tensors read from the checkpoint file with torch.load, not through the loader.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reidkit.checkpoint import save_checkpoint, update_checkpoint_extra
from reidkit.errors import ConfigError
from reidkit.models import build_model
from reidkit.training.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from reidkit.training.embedding import EmbeddingTrainer


def tiny_config(init_from: Path | str = "", **model) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(backbone="simple_cnn", pretrained=False, **{"pooling": "avg", **model}),
        data=DataConfig(validation="dataset", height=64, width=32),
        loss=LossConfig(),
        optim=OptimConfig(epochs=1, p=4, k=2, lr=1e-3, warmup_epochs=0),
        init_from=str(init_from), num_threads=1, eval_every=1,
    )


def saved_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["model"]


def test_a_run_starts_from_a_checkpoint_of_the_same_identities_classifier_included(tiny_market, tmp_path, capsys):
    EmbeddingTrainer(tiny_config(), tmp_path / "first", tiny_market, show_progress=False).fit()
    saved = saved_weights(tmp_path / "first" / "best.pt")
    trainer = EmbeddingTrainer(tiny_config(tmp_path / "first" / "best.pt"), tmp_path / "second", tiny_market,
                               show_progress=False)
    trainer.setup()
    state = trainer.models[0].state_dict()
    assert state.keys() == saved.keys() and any(k.startswith("classifier.") for k in saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert "classifier kept" in capsys.readouterr().out
    # an untouched run differs: the test can tell a start from a checkpoint from a fresh one
    fresh = EmbeddingTrainer(tiny_config(), tmp_path / "third", tiny_market, show_progress=False)
    fresh.setup()
    first = next(iter(saved))
    assert not torch.equal(fresh.models[0].state_dict()[first], saved[first])


def test_the_classifier_of_other_identities_is_not_taken(tiny_market, small_checkpoint, tmp_path, capsys):
    EmbeddingTrainer(tiny_config(), tmp_path / "first", tiny_market, show_progress=False).fit()
    checkpoint = tmp_path / "first" / "best.pt"
    label_map = torch.load(checkpoint, weights_only=True)["extra"]["label_map"]
    update_checkpoint_extra(checkpoint, "label_map", {pid: len(label_map) - 1 - i for pid, i in label_map.items()})
    saved = saved_weights(checkpoint)
    trainer = EmbeddingTrainer(tiny_config(checkpoint), tmp_path / "second", tiny_market, show_progress=False)
    trainer.setup()
    state = trainer.models[0].state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved if not k.startswith("classifier."))
    assert not torch.equal(state["classifier.weight"], saved["classifier.weight"])  # same shape, other identities
    assert "classifier re-initialised: other identities" in capsys.readouterr().out
    # a checkpoint without a classifier (an exported embedding model) starts every other tensor
    saved = saved_weights(small_checkpoint)
    trainer = EmbeddingTrainer(tiny_config(small_checkpoint, pooling="gem", params={"backbone_options": {"width": 8}}),
                               tmp_path / "third", tiny_market, show_progress=False)
    trainer.setup()
    state = trainer.models[0].state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert "classifier new: the checkpoint has none" in capsys.readouterr().out


def test_init_from_errors_name_the_file_and_the_reason(tiny_market, small_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"init_from .*small.pt: its weights do not fit .*backbone"):
        EmbeddingTrainer(tiny_config(small_checkpoint), tmp_path / "a", tiny_market, show_progress=False).setup()
    pair = tmp_path / "pair.pt"
    save_checkpoint(pair, model=build_model("idla", input_size=(40, 24)), model_name="idla",
                    model_cfg={"input_size": [40, 24]}, epoch=0)
    with pytest.raises(ConfigError, match=r"init_from .*pair.pt: a 'idla' model; this run trains 'embedding'"):
        EmbeddingTrainer(tiny_config(pair), tmp_path / "b", tiny_market, show_progress=False).setup()
    with pytest.raises(ConfigError, match=r"init_from=.*missing.pt: file not found"):  # before any image is read
        EmbeddingTrainer(tiny_config(tmp_path / "missing.pt"), tmp_path / "c", tmp_path / "no-data-needed",
                         show_progress=False)
