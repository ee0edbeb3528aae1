"""The weight average (ema_decay): the recursion written out by hand, best.pt = the average of the weights the
optimiser produced up to its epoch (recorded step by step), exact resume, and the resume mismatch named.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from reidkit.checkpoint import load_checkpoint
from reidkit.errors import ConfigError
from reidkit.training.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from reidkit.training.ema import WeightEMA
from reidkit.training.embedding import EmbeddingTrainer
from reidkit.training.loop import Trainer


def hand_average(snapshots: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """ema_1 = w_1; ema_{n+1} = d_n ema_n + (1 - d_n) w_{n+1}, d_n = min(decay, (1 + n) / (10 + n)), floats only;
    integer buffers take the latest value."""
    ema = {k: v.double() if v.is_floating_point() else v.clone() for k, v in snapshots[0].items()}
    for n, weights in enumerate(snapshots[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        for k, w in weights.items():
            ema[k] = d * ema[k] + (1 - d) * w.double() if w.is_floating_point() else w.clone()
    return ema


def test_weight_average_follows_the_recursion_with_warm_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = WeightEMA(model, decay=0.9)
    snapshots = []
    for _ in range(25):  # past the warm-up: (1 + n) / (10 + n) exceeds 0.9 from n = 81, so here it rules
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 4))  # moves the BatchNorm statistics
        ema.update(model)
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    expected = hand_average(snapshots, 0.9)
    got = ema.averaged.module.state_dict()
    for key, value in expected.items():
        if value.is_floating_point():
            assert torch.allclose(got[key].double(), value, atol=1e-5), key
        else:
            assert torch.equal(got[key], value), key
    with ema.applied_to(model):
        assert torch.equal(model[0].weight, got["0.weight"])
    assert torch.equal(model[0].weight, snapshots[-1]["0.weight"])  # the raw weights are back


def ema_config(**changes) -> TrainConfig:
    cfg = TrainConfig(model=ModelConfig(backbone="simple_cnn", pretrained=False, pooling="avg"),
                      data=DataConfig(validation="dataset", height=64, width=32),
                      optim=OptimConfig(epochs=3, p=4, k=2, lr=1e-3, warmup_epochs=1), num_threads=1, ema_decay=0.8)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_best_checkpoint_holds_the_average_of_the_optimisers_weights(tiny_market, tmp_path, monkeypatch):
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []
    real_step = Trainer._optimizer_step

    def recording_step(self):
        real_step(self)
        state = self.task.members[0].model.state_dict()
        snapshots.append((self._epoch + 1, {k: v.detach().clone() for k, v in state.items()}))

    monkeypatch.setattr(Trainer, "_optimizer_step", recording_step)
    EmbeddingTrainer(ema_config(), tmp_path / "run", tiny_market, show_progress=False).fit()
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    expected = hand_average([w for epoch, w in snapshots if epoch <= best["epoch"]], 0.8)
    for key, value in expected.items():
        if value.is_floating_point():
            assert torch.allclose(best["model"][key].double(), value, atol=1e-5), key
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    raw = snapshots[-1][1]
    assert all(torch.equal(last["model"][k], raw[k]) for k in raw)  # last.pt: the raw weights, to resume
    assert "ema" in last["extra"] and "ema" not in best["extra"]


def test_resume_continues_the_average_exactly(tiny_market, tmp_path):
    EmbeddingTrainer(ema_config(), tmp_path / "full", tiny_market, show_progress=False).fit()
    EmbeddingTrainer(ema_config(max_minutes=1e-9), tmp_path / "part", tiny_market, show_progress=False).fit()
    EmbeddingTrainer(ema_config(), tmp_path / "part", tiny_market, show_progress=False).fit(resume=True)
    full, part = (load_checkpoint(tmp_path / run / "last.pt")["extra"]["ema"][0] for run in ("full", "part"))
    assert full.keys() == part.keys()
    assert all(torch.equal(full[k], part[k]) for k in full)


def test_resuming_a_run_without_an_average_is_refused(tiny_market, tmp_path):
    EmbeddingTrainer(ema_config(ema_decay=0.0, max_minutes=1e-9), tmp_path / "run", tiny_market,
                     show_progress=False).fit()
    with pytest.raises(ConfigError, match="trained without ema_decay"):
        EmbeddingTrainer(ema_config(), tmp_path / "run", tiny_market, show_progress=False).fit(resume=True)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_ema_decay_out_of_range_is_named(decay, tmp_path):
    with pytest.raises(ConfigError, match="ema_decay"):
        EmbeddingTrainer(ema_config(ema_decay=decay), tmp_path / "run", tmp_path, show_progress=False)
