"""Export and runtime backends against independent references: the PyTorch model itself, hand-computed
preprocessing values, numpy formulas, and per-image runs of the Intel models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.errors import ModelError
from reidkit.inference.backends import (
    OnnxExtractor,
    OpenVinoExtractor,
    Preprocessing,
    TorchExtractor,
    _rewrite_mvn_with_epsilon,
    build_extractor,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CUHK03_TRAIN = SHARED / "datasets" / "cuhk03np-detected" / "bounding_box_train"
MODELS = SHARED / "models"
INTEL_0288 = MODELS / "openvino" / "person-reidentification-retail-0288" / "person-reidentification-retail-0288.xml"
INTEL_0267 = MODELS / "onnx" / "person-reidentification-retail-0267.onnx"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised small embedding model at the usual 256x128 input."""
    from reidkit.checkpoint import save_checkpoint
    from reidkit.models import build_model

    torch.manual_seed(0)
    cfg = {"backbone": "simple_cnn", "pretrained": False, "num_classes": None, "input_size": (256, 128),
           "backbone_options": {"width": 16}}
    model = build_model("embedding", **cfg).eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, model=model, model_name="embedding", model_cfg=cfg, epoch=0)
    return path


@pytest.fixture(scope="module")
def real_images() -> list[str]:
    if not CUHK03_TRAIN.is_dir():
        pytest.skip("../shared CUHK03-NP data not present")
    return [str(p) for p in sorted(CUHK03_TRAIN.glob("*.jpg"))[:40:2]]


# --------------------------------------------------------------------------------------- preprocessing

def test_preprocessing_matches_hand_computed_values():
    pixels = np.zeros((1, 3, 1, 2), dtype=np.uint8)
    pixels[0, :, 0, 0] = (255, 128, 0)  # R, G, B of the first pixel
    rgb = Preprocessing((1, 2), "RGB", 1 / 255, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)).apply(pixels)
    np.testing.assert_allclose(rgb[0, :, 0, 0], [(1 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.5, (0 - 0.5) / 1.0],
                               atol=1e-6)
    bgr = Preprocessing((1, 2), "BGR", 1.0).apply(pixels)
    np.testing.assert_array_equal(bgr[0, :, 0, 0], [0, 128, 255])
    assert bgr.dtype == np.float32


def test_preprocessing_rejects_bad_channel_order():
    with pytest.raises(ModelError, match="channel_order='BRG'"):
        Preprocessing(channel_order="BRG")


# ------------------------------------------------------------------------------------------ factories

def test_build_extractor_errors_name_file_and_reason(tmp_path):
    with pytest.raises(ModelError, match="missing.onnx: file not found"):
        build_extractor(tmp_path / "missing.onnx")
    weird = tmp_path / "model.tflite"
    weird.write_bytes(b"x")
    with pytest.raises(ModelError, match="cannot run a .tflite file with backend 'auto'"):
        build_extractor(weird)
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(b"x")
    with pytest.raises(ModelError, match="preprocessing unknown -- no sidecar plain.json"):
        build_extractor(plain)


def test_mvn_rewrite_adds_epsilon_and_matches_formula():
    from onnx import TensorProto, helper

    node = helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=[2, 3])
    graph = helper.make_graph([node], "mvn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert _rewrite_mvn_with_epsilon(model.graph) == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 2, 2, 2), np.float32)
    x[0, 1] = [[1.0, 2.0], [4.0, 7.0]]  # channel 0 is constant: variance 0
    y = session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(y[0, 0], 0.0)  # no NaN
    c = x[0, 1] - x[0, 1].mean()
    np.testing.assert_allclose(y[0, 1], c / np.sqrt((c ** 2).mean()), rtol=1e-5)


# ---------------------------------------------------------------------------------------------- export

@pytest.mark.shared
def test_onnx_export_matches_pytorch_on_real_images(checkpoint, real_images, tmp_path):
    from reidkit.export import export_model

    out = tmp_path / "model.onnx"
    report = export_model(checkpoint, "onnx", out=out, verify_images=CUHK03_TRAIN, num_verify=8)
    assert report.max_abs_diff <= 1e-4
    # independent check: PyTorch Extractor vs onnxruntime on other real images, odd batch sizes
    reference = TorchExtractor(checkpoint, device="cpu").embed(real_images)
    exported = OnnxExtractor(out, batch_size=7).embed(real_images)  # reads model.json for preprocessing
    assert exported.shape == reference.shape == (20, 16 * 8)
    assert np.abs(exported - reference).max() <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # dynamic batch axis
    sidecar = json.loads(out.with_suffix(".json").read_text())
    model = TorchExtractor(checkpoint, device="cpu")
    assert sidecar["dim"] == 128 and sidecar["preprocessing"]["mean"] == list(model.mean)
    assert sidecar["preprocessing"]["std"] == list(model.std) and sidecar["preprocessing"]["input_size"] == [256, 128]


@pytest.mark.shared
def test_openvino_export_matches_pytorch_on_real_images(checkpoint, real_images, tmp_path):
    pytest.importorskip("openvino")
    from reidkit.export import export_model

    out = tmp_path / "model.xml"
    export_model(checkpoint, "openvino", out=out, num_verify=4)
    assert out.with_suffix(".bin").is_file()
    reference = TorchExtractor(checkpoint, device="cpu").embed(real_images)
    exported = build_extractor(out, batch_size=6).embed(real_images)
    assert np.abs(exported - reference).max() <= 1e-4


def test_failed_verification_writes_nothing(checkpoint, tmp_path):
    from reidkit.export import export_model

    out = tmp_path / "model.onnx"
    with pytest.raises(ModelError, match="differs from PyTorch .* not written"):
        export_model(checkpoint, "onnx", out=out, num_verify=2, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_export_cli_prints_json(checkpoint, tmp_path, capsys):
    import argparse

    from reidkit.cli.export import add_export_parser

    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
                              "--num-verify", "3", "--json"])
    args.func(args)
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(tmp_path / "m.onnx") and report["verified_on"] == "random-noise"
    assert report["max_abs_diff"] <= 1e-4


# ------------------------------------------------------------------------------------------ Intel models

def _cosine_gap(features: np.ndarray, pids: np.ndarray) -> float:
    sims = features @ features.T
    same = pids[:, None] == pids[None]
    off_diagonal = ~np.eye(len(pids), dtype=bool)
    return float(sims[same & off_diagonal].mean() - sims[~same].mean())


@pytest.fixture(scope="module")
def identity_images() -> tuple[list[str], np.ndarray]:
    """4 images each of 6 identities (2 per camera)."""
    if not CUHK03_TRAIN.is_dir():
        pytest.skip("../shared CUHK03-NP data not present")
    paths = []
    for pid in ("0001", "0002", "0004", "0005", "0007", "0010"):
        files = sorted(CUHK03_TRAIN.glob(f"{pid}_*.jpg"))
        paths += [str(f) for f in files[:2] + files[-2:]]
    return paths, np.array([int(Path(p).name[:4]) for p in paths])


@pytest.mark.shared
def test_intel_0288_dynamic_batch_equals_single_image_runs(identity_images):
    pytest.importorskip("openvino")
    if not INTEL_0288.is_file():
        pytest.skip("Intel 0288 model not present")
    paths, pids = identity_images
    batched = OpenVinoExtractor(INTEL_0288, batch_size=24)
    assert batched.fixed_batch is None and batched.dim == 256
    singles = OpenVinoExtractor(INTEL_0288, batch_size=1)
    np.testing.assert_allclose(batched.embed(paths), singles.embed(paths), atol=1e-4)
    assert _cosine_gap(batched.embed(paths), pids) > 0.2  # same person clearly closer than different people


@pytest.mark.shared
def test_intel_0267_runs_on_onnxruntime_like_openvino(identity_images):
    pytest.importorskip("openvino")
    if not INTEL_0267.is_file():
        pytest.skip("Intel 0267 model not present")
    paths, pids = identity_images
    on_ort = OnnxExtractor(INTEL_0267, batch_size=24)
    assert on_ort.patched_mvn == 12
    features = on_ort.embed(paths)
    assert np.isfinite(features).all()
    on_openvino = OpenVinoExtractor(INTEL_0267, batch_size=24, precision="f32").embed(paths)
    assert np.abs(features - on_openvino).max() < 1e-3
    assert _cosine_gap(features, pids) > 0.2


def test_osnet_ain_at_a_smaller_input_exports_with_its_resampled_pooling_kernel(tmp_path):
    # OSNet-AIN's learned global pooling is a 16x8 depthwise kernel; at 192x96 (issue 25's student) the map is 12x6
    # and the kernel is resampled in forward. Before session 19 the exporter refused it ("kernel of unknown shape").
    from reidkit.checkpoint import save_checkpoint
    from reidkit.export import export_model
    from reidkit.models import build_model

    torch.manual_seed(0)
    cfg = {"backbone": "osnet_ain_x0_5", "pretrained": False, "num_classes": None, "input_size": (192, 96),
           "pooling": "avg"}
    path = tmp_path / "student.pt"
    save_checkpoint(path, model=build_model("embedding", **cfg).eval(), model_name="embedding", model_cfg=cfg,
                    epoch=0)
    out = tmp_path / "student.onnx"
    export_model(path, "onnx", out=out, num_verify=4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (192, 96, 3), dtype=np.uint8) for _ in range(5)]
    reference = TorchExtractor(path, device="cpu").embed(images)
    exported = OnnxExtractor(out, batch_size=3).embed(images)
    assert exported.shape == reference.shape == (5, 256)
    assert np.abs(exported - reference).max() <= 1e-4
