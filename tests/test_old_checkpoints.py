"""Checkpoints written by the trainers before the one training loop (commit a1591d6, format reidkit-checkpoint-1)
still resume and extract, and resuming one continues to exactly the weights the old trainer itself reached."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from reidkit.checkpoint import load_checkpoint
from reidkit.config import load_config
from reidkit.inference.extractor import Extractor
from reidkit.training.config import DataConfig, ModelConfig, OptimConfig, PairTrainConfig, TrainConfig
from reidkit.training.embedding import train_embedding
from reidkit.training.pair import train_pair_model

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "a1591d6"  # the last commit with EmbeddingTrainer and PairTrainer as separate loops

PAIR_OVERRIDES = ["model.name=idla", "model.batchnorm=true", "data.height=40", "data.width=24", "data.val_ids=3",
                  "data.validation=carve", "optim.epochs=2", "optim.optimizer=adam", "optim.lr=0.001",
                  "optim.schedule=constant", "sampling.ids_per_batch=2", "sampling.hard_from_epoch=2",
                  "loss.id_weight=0.5", "eval.cmc_ids=3", "eval.cmc_draws=1", "num_threads=1", "device=cpu"]

# Run with the old sources first on sys.path: a straight 2-epoch run and one interrupted after epoch 1, per trainer.
OLD_RUNS = '''
import sys
from pathlib import Path
import reidkit
assert reidkit.__file__.startswith(sys.argv[1]), reidkit.__file__
from reidkit.config import load_config
from reidkit.training.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from reidkit.training.embedding import train_embedding
from reidkit.training.pair import PairTrainConfig, train_pair_model
root, out, pair = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split()
for minutes, run in ((0, "2"), (1e-9, "1")):
    cfg = TrainConfig(model=ModelConfig(backbone="simple_cnn", pretrained=False, pooling="avg"),
                      data=DataConfig(validation="dataset", height=64, width=32),
                      optim=OptimConfig(epochs=2, p=4, k=2, lr=1e-3, warmup_epochs=1), num_threads=1,
                      max_minutes=minutes)
    train_embedding(cfg, out / ("emb" + run), root, show_progress=False)
    cfg = load_config(PairTrainConfig, None, pair + [f"max_minutes={minutes}"])
    train_pair_model(cfg, root / "bounding_box_train", out / ("pair" + run), show_progress=False)
'''


@pytest.fixture(scope="module")
def old_runs(tiny_market, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("old_trainers")
    archive = work / "old.tar"
    try:
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), OLD_COMMIT, "src"], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs git history with commit {OLD_COMMIT}")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    env = {**os.environ, "PYTHONPATH": str(work / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", OLD_RUNS, str(work / "src"), str(tiny_market), str(work / "runs"),
                    " ".join(PAIR_OVERRIDES)], check=True, env=env, capture_output=True)
    return work / "runs"


def _resume_copy(old: Path, new: Path) -> Path:
    new.mkdir(parents=True)
    shutil.copy(old / "last.pt", new / "last.pt")
    return new


@pytest.mark.slow
def test_old_embedding_checkpoint_resumes_to_the_old_trainers_weights_and_extracts(old_runs, tiny_market, tmp_path):
    assert load_checkpoint(old_runs / "emb1" / "last.pt")["epoch"] == 1
    cfg = TrainConfig(model=ModelConfig(backbone="simple_cnn", pretrained=False, pooling="avg"),
                      data=DataConfig(validation="dataset", height=64, width=32),
                      optim=OptimConfig(epochs=2, p=4, k=2, lr=1e-3, warmup_epochs=1), num_threads=1)
    out = _resume_copy(old_runs / "emb1", tmp_path / "emb")
    assert train_embedding(cfg, out, tiny_market, resume=True, show_progress=False)["epochs_done"] == 2
    want, got = (load_checkpoint(p / "last.pt")["model"] for p in (old_runs / "emb2", out))
    assert all(torch.equal(want[k], got[k]) for k in want)
    ext = Extractor(old_runs / "emb1" / "best.pt", device="cpu")
    assert ext.embed(sorted((tiny_market / "query").glob("*.jpg"))[:2]).shape == (2, ext.dim)


@pytest.mark.slow
def test_old_pair_checkpoint_resumes_to_the_old_trainers_weights(old_runs, tiny_market, tmp_path):
    out = _resume_copy(old_runs / "pair1", tmp_path / "pair")
    cfg = load_config(PairTrainConfig, None, PAIR_OVERRIDES)
    assert train_pair_model(cfg, tiny_market / "bounding_box_train", out, resume=True,
                            show_progress=False)["epochs_done"] == 2
    want, got = (load_checkpoint(p / "last.pt") for p in (old_runs / "pair2", out))
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    head = want["extra"]["id_head"]
    assert all(torch.equal(head[k], got["extra"]["id_head"][k]) for k in head)
