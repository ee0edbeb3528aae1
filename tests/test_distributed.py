"""Distributed training (training/distributed.py): the rank-split sampler, the differentiable gather and CPU
synchronised BatchNorm against single-process references, and real 2-process gloo runs on loopback (started by
`reidkit train --nproc 2`, i.e. torch.distributed.run's launcher) against the unmodified 1-process trainer.

Tolerance: 2 processes with synchronised BatchNorm (sync_bn=all) and no augmentation compute the same global batch
as 1 process, up to the order of float32 sums: epoch losses agree within rtol 1e-4 and the weights after the same
steps within 1e-4 (measured: ~1e-7 and ~1e-6).
"""

from __future__ import annotations

import copy
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from reidkit.checkpoint import load_checkpoint
from reidkit.cli.main import main
from reidkit.config import load_config
from reidkit.data.sampler import PKSampler
from reidkit.errors import ConfigError
from reidkit.training.config import TrainConfig
from reidkit.training.loop import train
from reidkit.training.tasks import EmbeddingTask

CONFIG = """\
model: {backbone: simple_cnn, pretrained: false, pooling: avg}
data: {validation: none, height: 64, width: 32}
optim: {epochs: 3, p: 4, k: 2, lr: 0.001, warmup_epochs: 1}
augment: {flip: false, pad: 0, color_jitter: 0.0, erasing_prob: 0.0}
num_threads: 1
sync_bn: all
"""
LOSS_RTOL, WEIGHT_ATOL = 1e-4, 1e-4


# ------------------------------------------------------------------------------------------- fast unit tests

def test_rank_batches_split_the_one_process_batch_without_overlap():
    labels = np.repeat(np.arange(20), 3)
    one = list(PKSampler(labels, p=8, k=2, seed=5).batches(epoch=3))
    ranks = [list(PKSampler(labels, p=8, k=2, seed=5, rank=r, world_size=4).batches(epoch=3)) for r in range(4)]
    assert all(len(r) == len(one) == 20 // 8 for r in ranks)  # the same steps per epoch on any number of ranks
    for step, batch in enumerate(one):
        parts = [r[step] for r in ranks]
        np.testing.assert_array_equal(np.concatenate(parts), batch)  # rank-major union = the 1-process batch
        ids = [set(labels[p].tolist()) for p in parts]
        assert all(len(s) == 2 for s in ids)  # P / world identities each
        assert len(set().union(*ids)) == 8  # no identity on two ranks


def test_sampler_refuses_bad_splits():
    labels = np.repeat(np.arange(6), 2)
    with pytest.raises(ConfigError, match="do not split evenly over 4 processes"):
        PKSampler(labels, p=6, k=2, world_size=4)
    with pytest.raises(ConfigError, match="P=8 identities per batch but the training set has 6"):
        PKSampler(labels, p=8, k=2, world_size=2)
    with pytest.raises(ConfigError, match="rank 2 of world size 2"):
        PKSampler(labels, p=4, k=2, rank=2, world_size=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collective_worker(rank: int, port: int, x_full: torch.Tensor, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from reidkit.training import distributed as d

    d.init_from_env(torch.device("cpu"), timeout_minutes=1)
    half = x_full.shape[0] // 2
    x = x_full[rank * half:(rank + 1) * half].clone().requires_grad_(True)
    gathered = d.gather_with_grad(x)
    (gathered ** 3).sum().backward()
    bn = d.CpuSyncBatchNorm(x_full.shape[1]).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, x_full.shape[1]))
    y_in = x_full[rank * half:(rank + 1) * half].clone().requires_grad_(True)
    y = bn(y_in)
    (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    tensors = (gathered.detach(), x.grad, y.detach(), y_in.grad, bn.running_mean, bn.running_var)
    results.put((rank, *(t.numpy().copy() for t in tensors)))  # numpy: torch would share memory with a dead process
    d.shutdown()


def test_gather_and_sync_batchnorm_match_one_process_autograd():
    """2 forked gloo ranks against autograd on the whole batch in this process. Each rank computes the loss of
    the whole batch, so a rank's gradient is the sum of 2 identical losses' gradients: 2 x the reference."""
    torch.manual_seed(0)
    x_full = torch.randn(6, 4, dtype=torch.float64)
    ctx = mp.get_context("fork")
    results, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_collective_worker, args=(r, port, x_full, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = {r[0]: [torch.from_numpy(a) for a in r[1:]] for r in (results.get(timeout=60) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    ref_x = x_full.clone().requires_grad_(True)
    (ref_x ** 3).sum().backward()
    bn = nn.BatchNorm1d(4).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 4))
    ref_y_in = x_full.clone().requires_grad_(True)
    ref_y = bn(ref_y_in)
    (ref_y * torch.cat([torch.arange(12), torch.arange(12)]).double().view_as(ref_y)).sum().backward()
    for rank in range(2):
        gathered, x_grad, y, y_grad, running_mean, running_var = got[rank]
        rows = slice(rank * 3, rank * 3 + 3)
        torch.testing.assert_close(gathered, x_full)
        torch.testing.assert_close(x_grad, 2 * ref_x.grad[rows])
        torch.testing.assert_close(y, ref_y.detach()[rows])
        torch.testing.assert_close(running_mean, bn.running_mean)
        torch.testing.assert_close(running_var, bn.running_var)
    # Rank r weights its rows by 0..11; the reference weights both halves the same way: the gradient of the
    # sum of the two ranks' losses reaches each rank's rows.
    torch.testing.assert_close(torch.cat([got[0][3], got[1][3]]), ref_y_in.grad)


def test_nproc_bad_values_and_tasks(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "r"), "--nproc", "0"])
    assert exc.value.code == 2 and "--nproc: 0: must be >= 1" in capsys.readouterr().err
    code = main(["train", "--out", str(tmp_path / "r"), "--nproc", "2", "model.name=idla"])
    assert code == 2 and "the pair task trains in one process" in capsys.readouterr().err


def test_nproc_under_torchrun_is_refused(monkeypatch):
    from reidkit.training.distributed import launch

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="already runs under torchrun"):
        launch(["train"], 2)


# ------------------------------------------------------------------------------------- real 2-process runs

def _config(tmp_path: Path) -> Path:
    path = tmp_path / "dist.yaml"
    path.write_text(CONFIG)
    return path


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _reidkit(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    return subprocess.run([sys.executable, "-m", "reidkit.cli", *args], capture_output=True, text=True,
                          timeout=300, env=full_env)


@pytest.fixture(scope="module")
def reference(tiny_market, tmp_path_factory) -> dict:
    """The unmodified single-process trainer: 3 epochs, the log and the weights after each epoch."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = load_config(TrainConfig, _config(tmp))
    weights: list[dict[str, torch.Tensor]] = []

    def keep(trainer, row):
        weights.append(copy.deepcopy(trainer.task.members[0].model.state_dict()))

    summary = train(EmbeddingTask(cfg, tiny_market, show_progress=False), tmp / "run", callbacks=[keep])
    return {"log": summary["log"], "weights": weights, "config": _config(tmp)}


@pytest.fixture(scope="module")
def killed_run(tiny_market, reference, tmp_path_factory) -> dict:
    """2 gloo processes; rank 1 exits abruptly at epoch 3, step 1."""
    out = tmp_path_factory.mktemp("two") / "run"
    start = time.monotonic()
    proc = _reidkit(["train", "--nproc", "2", "--config", str(reference["config"]), "--data", str(tiny_market),
                     "--out", str(out), "--quiet"], env={"REIDKIT_FAULT_EXIT": "1:3:1"})
    return {"out": out, "proc": proc, "seconds": time.monotonic() - start}


def _assert_same_losses(rows: list[dict], ref_rows: list[dict]) -> None:
    for row, ref in zip(rows, ref_rows, strict=True):
        assert row["epoch"] == ref["epoch"]
        for key in ("loss", "loss_id", "loss_metric"):
            assert row[key] == pytest.approx(ref[key], rel=LOSS_RTOL), (row["epoch"], key)


def _assert_same_weights(state: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert state.keys() == ref.keys()  # the unwrapped model: no DDP "module." prefix, plain BatchNorm keys
    for key in ref:
        torch.testing.assert_close(state[key].float(), ref[key].float(), atol=WEIGHT_ATOL, rtol=0, msg=key)


@pytest.mark.slow
def test_two_gloo_processes_follow_the_one_process_loss_curve(killed_run, reference):
    """Epochs 1-2 ran on 2 processes before the fault: the same losses and weights as 1 process."""
    out = killed_run["out"]
    _assert_same_losses(_log(out), reference["log"][:2])
    payload = load_checkpoint(out / "last.pt")
    assert payload["epoch"] == 2
    _assert_same_weights(payload["model"], reference["weights"][1])


@pytest.mark.slow
def test_a_dead_rank_fails_the_run_cleanly(killed_run):
    proc = killed_run["proc"]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "rank 1: exiting at epoch 3, step 1" in proc.stderr
    assert "rank 1 failed first (exit code 17" in proc.stderr
    assert "last.pt holds epoch 2: continue with the same command and --resume" in proc.stderr
    assert "Traceback" not in proc.stderr.split("error: distributed training failed")[-1]
    assert killed_run["seconds"] < 240  # no hang: the launcher stops rank 0 when rank 1 dies


@pytest.mark.slow
def test_resume_on_one_process_continues_a_two_process_run(killed_run, reference, tiny_market):
    out = killed_run["out"]
    cfg = load_config(TrainConfig, reference["config"])
    train(EmbeddingTask(cfg, tiny_market, show_progress=False), out, resume=True)
    _assert_same_losses(_log(out), reference["log"])
    _assert_same_weights(load_checkpoint(out / "last.pt")["model"], reference["weights"][2])


@pytest.mark.slow
def test_resume_on_two_processes_continues_a_one_process_run(reference, tiny_market, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(TrainConfig, reference["config"])

    def stop_after_first_epoch(trainer, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(EmbeddingTask(cfg, tiny_market, show_progress=False), out, callbacks=[stop_after_first_epoch])
    proc = _reidkit(["train", "--nproc", "2", "--config", str(reference["config"]), "--data", str(tiny_market),
                     "--out", str(out), "--quiet", "--resume"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_same_losses(_log(out), reference["log"])
    _assert_same_weights(load_checkpoint(out / "last.pt")["model"], reference["weights"][2])


@pytest.mark.slow
def test_two_processes_distil_from_an_online_teacher_like_one(tiny_market, small_checkpoint, tmp_path):
    """distill.online on 2 processes: each rank embeds its own views and the targets are gathered in the global
    batch's order, so the distillation losses equal the one-process run's."""
    config = tmp_path / "online.yaml"
    config.write_text(CONFIG.replace("epochs: 3", "epochs: 2")
                      + f"distill: {{teacher: {small_checkpoint}, online: true, similarity_weight: 1.0}}\n")
    one = train(EmbeddingTask(load_config(TrainConfig, config), tiny_market, show_progress=False), tmp_path / "one")
    proc = _reidkit(["train", "--nproc", "2", "--config", str(config), "--data", str(tiny_market),
                     "--out", str(tmp_path / "two"), "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _log(tmp_path / "two")
    for row, ref in zip(rows, one["log"], strict=True):
        for key in ("loss_distill_darkrank", "loss_distill_similarity", "loss_id"):
            assert row[key] == pytest.approx(ref[key], rel=LOSS_RTOL), (row["epoch"], key)
