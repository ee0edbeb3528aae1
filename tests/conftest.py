"""Shared fixtures: a tiny synthetic Market-layout dataset generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CUHK03_TRAIN = SHARED / "datasets" / "cuhk03np-detected" / "bounding_box_train"


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    """12 train ids, 6 test ids, 2 cameras, 3 images per camera, 64x32 pixels."""
    from reidkit.data.synth import SynthConfig, generate_market_dataset

    cfg = SynthConfig(num_train_ids=12, num_test_ids=6, num_cameras=2, images_per_camera=3, height=64, width=32,
                      seed=3)
    return generate_market_dataset(tmp_path_factory.mktemp("synth") / "tiny", cfg, show_progress=False)


@pytest.fixture
def cuhk03_train() -> Path:
    if not CUHK03_TRAIN.is_dir():
        pytest.skip("../shared CUHK03-NP data not present")
    return CUHK03_TRAIN


@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    """An untrained simple_cnn embedding checkpoint (64x32 input): a real model file for CLI and search tests."""
    import torch

    from reidkit.checkpoint import save_checkpoint
    from reidkit.models import build_model

    torch.manual_seed(0)
    cfg = {"backbone": "simple_cnn", "pretrained": False, "num_classes": None, "input_size": (64, 32),
           "backbone_options": {"width": 8}}
    path = tmp_path / "small.pt"
    save_checkpoint(path, model=build_model("embedding", **cfg).eval(), model_name="embedding", model_cfg=cfg,
                    epoch=0)
    return path


def same_checkpoint_weights(path_a: Path, path_b: Path) -> bool:
    """True when two checkpoints hold bit-identical model weights (the resume tests' criterion)."""
    import torch

    a = torch.load(path_a, weights_only=False)["model"]
    b = torch.load(path_b, weights_only=False)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def interrupt_and_resume_pair_training(make_config, root: Path, out: Path) -> dict:
    """Train the pair model for one epoch (a zero time budget stops after it), then resume it to the end."""
    from reidkit.training.pair import train_pair_model

    interrupted = train_pair_model(make_config(max_minutes=1e-9), root, out, show_progress=False)
    assert interrupted["epochs_done"] == 1
    return train_pair_model(make_config(), root, out, resume=True, show_progress=False)


def assert_pair_onnx_export_matches(model, path: Path, batch: int = 5) -> None:
    """Export a pair network (traced with a batch of 2), run it on onnxruntime with another batch size and compare
    the logits with PyTorch's."""
    import torch

    ort = pytest.importorskip("onnxruntime")
    from reidkit.export.onnx import export_pair_onnx

    model.eval()
    x1, x2 = torch.randn(batch, 3, *model.input_size), torch.randn(batch, 3, *model.input_size)
    export_pair_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"x1": x1.numpy(), "x2": x2.numpy()})[0]
    with torch.no_grad():
        expected = model(x1, x2).numpy()
    assert exported.shape == (batch, 2)
    assert abs(exported - expected).max() < 1e-4 * max(1.0, abs(expected).max())


@pytest.fixture
def captured_distmat(monkeypatch):
    """The distance matrix `reidkit evaluate` ranks, and the arrays it extracted from a checkpoint."""
    import numpy as np

    import reidkit.cli.evaluate as report
    import reidkit.inference.extractor as extractor

    seen: dict = {}
    real_rank, real_extract = report.evaluate_rank_full, extractor.extract_split_features

    def rank(distmat, *args, **kwargs):
        seen["distmat"] = np.array(distmat)
        return real_rank(distmat, *args, **kwargs)

    def extract(*args, **kwargs):
        seen["arrays"] = real_extract(*args, **kwargs)
        return seen["arrays"]

    monkeypatch.setattr(report, "evaluate_rank_full", rank)
    monkeypatch.setattr(extractor, "extract_split_features", extract)
    return seen
