"""GPU readiness: the CUDA paths (AMP training, extraction on CUDA, channels_last on CUDA, DDP over NCCL, the
onnxruntime CUDA provider) run where CUDA exists and are skipped with a reason here (a CPU-only machine). The CPU
tests check that the device / AMP flags are plumbed: AMP on the CPU is a no-op (the task turns it off, the gradient
scaler is disabled), and asking for CUDA without one is a ConfigError naming the device, from Python and from the
command line, before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.errors import ConfigError
from reidkit.training.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device on this machine (CPU-only torch or no GPU): the CUDA path cannot run here"
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)


def tiny_config(**top) -> TrainConfig:
    """simple_cnn at 64x32 on the tiny synthetic Market set, one short epoch."""
    return TrainConfig(model=ModelConfig(backbone="simple_cnn", pretrained=False, pooling="avg"),
                       data=DataConfig(validation="dataset", height=64, width=32),
                       optim=OptimConfig(epochs=1, p=4, k=2, lr=1e-3, warmup_epochs=0), num_threads=1, **top)


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, 64, 32), dtype=np.uint8))


# ------------------------------------------------------------------------------------------ CPU: plumbing

def test_amp_on_cpu_is_a_no_op(tiny_market):
    """amp=True (the default) trains on the CPU in float32: the task disables autocast and the scaler."""
    from reidkit.training.embedding import EmbeddingTrainer

    cfg = tiny_config(device="cpu", amp=True)
    assert cfg.amp is True
    trainer = EmbeddingTrainer(cfg, "unused", tiny_market, show_progress=False)
    assert trainer.task.amp is False
    trainer.setup()
    assert trainer.scaler.is_enabled() is False
    model = trainer.task.members[0].model
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_cuda_without_cuda_is_a_config_error_naming_the_device(tiny_market, tmp_path):
    if HAS_CUDA:
        pytest.skip("this machine has CUDA: the error path is for CPU-only machines")
    from reidkit.inference import build_extractor
    from reidkit.training.embedding import EmbeddingTrainer
    from reidkit.utils import resolve_device

    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device '{device}': this machine has 0 CUDA device"):
            resolve_device(device)
    with pytest.raises(ConfigError, match="device 'cuda'"):
        EmbeddingTrainer(tiny_config(device="cuda"), tmp_path / "run", tiny_market, show_progress=False)
    model = _small_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="device 'cuda'"):
        build_extractor(model, device="cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("verb", ["extract", "track"])
def test_cuda_without_cuda_on_the_command_line_exits_2(verb, tiny_market, tmp_path, capsys):
    if HAS_CUDA:
        pytest.skip("this machine has CUDA: the error path is for CPU-only machines")
    from reidkit.cli.main import main

    model = _small_checkpoint(tmp_path)
    if verb == "extract":
        argv = ["extract", "--model", str(model), "--data", str(tiny_market), "--out",
                str(tmp_path / "f.npz"), "--device", "cuda"]
    else:
        argv = ["track", str(tiny_market / "query"), "--model", str(model), "--out", str(tmp_path / "run"),
                "--detector", "hog", "--device", "cuda", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "device 'cuda'" in err and "0 CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "f.npz").exists()


def _small_checkpoint(tmp_path: Path) -> Path:
    from reidkit.checkpoint import save_checkpoint
    from reidkit.models import build_model

    torch.manual_seed(0)
    cfg = {"backbone": "simple_cnn", "pretrained": False, "num_classes": None, "input_size": (64, 32),
           "backbone_options": {"width": 8}}
    path = tmp_path / "small.pt"
    if not path.is_file():
        save_checkpoint(path, model=build_model("embedding", **cfg).eval(), model_name="embedding", model_cfg=cfg,
                        epoch=0)
    return path


# ---------------------------------------------------------------------------------------- CUDA: the paths

@needs_cuda
def test_train_one_epoch_on_cuda_with_amp(tiny_market, tmp_path):
    from reidkit.checkpoint import load_checkpoint
    from reidkit.training.embedding import EmbeddingTrainer

    trainer = EmbeddingTrainer(tiny_config(device="cuda", amp=True), tmp_path / "run", tiny_market,
                               show_progress=False)
    assert trainer.task.amp is True
    summary = trainer.fit()
    assert trainer.scaler.is_enabled() is True
    row = summary["log"][-1]
    assert np.isfinite(row["loss"]) and row["loss"] > 0
    state = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert all(v.device.type == "cpu" and bool(torch.isfinite(v.float()).all()) for v in state.values())


@needs_cuda
def test_extraction_on_cuda_matches_cpu(tmp_path):
    from reidkit.inference import build_extractor

    model = _small_checkpoint(tmp_path)
    images = _images(10)
    cpu = build_extractor(model, device="cpu").embed_uint8(images)
    cuda = build_extractor(model, device="cuda").embed_uint8(images)
    # TF32 / cuDNN kernels differ from the CPU's in the last bits: compare as cosine similarity of unit vectors
    assert np.asarray(cuda).shape == np.asarray(cpu).shape
    assert (np.sum(np.asarray(cpu) * np.asarray(cuda), axis=1) > 0.999).all()


@needs_cuda
def test_channels_last_on_cuda_matches_contiguous():
    from reidkit.models import build_model

    torch.manual_seed(0)
    model = build_model("embedding", backbone="simple_cnn", pretrained=False, num_classes=None,
                        input_size=(64, 32), backbone_options={"width": 8}).eval().cuda()
    x = _images(4).cuda().float() / 255.0
    with torch.no_grad():
        reference = model(x.contiguous())
        model = model.to(memory_format=torch.channels_last)
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        nhwc = model(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cuda", dtype=torch.float16):
            half = model(x.contiguous(memory_format=torch.channels_last)).float()
    torch.testing.assert_close(nhwc, reference, rtol=1e-3, atol=1e-3)
    cos = torch.nn.functional.cosine_similarity(half, reference, dim=1)
    assert bool((cos > 0.99).all())


@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2 or not torch.distributed.is_nccl_available(),
                    reason="DDP over NCCL needs 2 CUDA devices and a torch build with NCCL")
@pytest.mark.slow
def test_ddp_over_nccl_on_two_gpus(tiny_market, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text("model:\n  backbone: simple_cnn\n  pretrained: false\ndata:\n  height: 64\n  width: 32\n"
                      "optim:\n  epochs: 1\n  p: 4\n  k: 2\n  warmup_epochs: 0\ndevice: cuda\namp: true\n")
    proc = subprocess.run([sys.executable, "-m", "reidkit.cli", "train", "--nproc", "2", "--config", str(config),
                           "--data", str(tiny_market), "--out", str(tmp_path / "run"), "--quiet"],
                          capture_output=True, text=True, timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows and np.isfinite(rows[-1]["loss"])


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return HAS_CUDA and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not _ort_cuda(), reason="onnxruntime has no CUDAExecutionProvider here (CPU build or no GPU)")
def test_onnx_export_runs_on_the_onnxruntime_cuda_provider(tmp_path):
    """The exported model runs on onnxruntime's CUDA provider and agrees with its CPU provider. (reidkit's ONNX
    backend itself uses the CPU provider; this checks the exported file is GPU-ready.)"""
    import onnxruntime as ort

    from reidkit.export.onnx import export_model

    report = export_model(_small_checkpoint(tmp_path), "onnx", tmp_path / "small.onnx", num_verify=4)
    x = (_images(4).float().numpy() / 255.0).astype(np.float32)
    outputs = {}
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        session = ort.InferenceSession(report.path, providers=[provider])
        assert session.get_providers()[0] == provider
        outputs[provider] = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(outputs["CUDAExecutionProvider"], outputs["CPUExecutionProvider"], rtol=1e-3,
                               atol=1e-3)
