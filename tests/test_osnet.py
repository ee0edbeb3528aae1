"""OSNet-AIN and the import of Intel's weights: person-reidentification-retail-0267 (ONNX, vendored in the
package) and, with ../shared, 0277 (OpenVINO IR, BatchNorm folded).

The references are onnxruntime / OpenVINO running Intel's own files (onnxruntime with OnnxExtractor's MVN epsilon,
docs/deployment.md): independent implementations of the graphs, so the tests fail if the architecture or the
name mapping is wrong.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from reidkit.errors import ModelError
from reidkit.models import build_backbone, build_model
from reidkit.models.backbones import intel_import
from reidkit.models.backbones.intel_import import read_onnx_initializers, vendored_weights


@pytest.fixture(scope="module")
def onnx_path():
    return vendored_weights("osnet_ain_x0_5")


@pytest.fixture(scope="module")
def ort_run(onnx_path):
    from reidkit.inference.backends import OnnxExtractor

    ext = OnnxExtractor(onnx_path, threads=1)
    return lambda x: ext.session.run(None, {ext.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


@pytest.fixture(scope="module")
def imported():
    torch.manual_seed(0)
    return build_backbone("osnet_ain_x0_5", pretrained=True).eval()


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_import_equals_onnxruntime_on_random_inputs(imported, ort_run):
    x = torch.randn(3, 3, 256, 128, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    with torch.no_grad():
        ours = imported(x).flatten(1).numpy()
    reference = ort_run(x.numpy())
    assert ours.shape == reference.shape == (3, 256)
    assert np.abs(l2n(ours) - l2n(reference)).max() < 1e-4


def test_embedding_model_with_avg_pooling_gives_the_intel_embedding(ort_run):
    model = build_model("embedding", backbone="osnet_ain_x0_5", pretrained=True, pooling="avg").eval()
    x = torch.rand(2, 3, 256, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(x).numpy()  # eval mode: L2-normalised BNNeck output (fresh BNNeck: a uniform scale)
    assert np.abs(ours - l2n(ort_run(x.numpy()))).max() < 1e-4


def test_state_dict_matches_onnx_initializers(imported, onnx_path):
    arrays = read_onnx_initializers(onnx_path)
    # the file = the backbone's tensors + Intel's 1041-class training classifier, nothing else
    assert set(arrays) - set(imported.state_dict()) == {"classifier.weight"}
    state = imported.state_dict()
    assert len(state) == len(arrays) - 1 == 561
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: arrays[k].shape for k in state}
    # learnable parameters: every initializer except BN running statistics and the classifier
    stats = ("running_mean", "running_var", "num_batches_tracked")
    expected = sum(v.size for k, v in arrays.items() if not k.endswith(stats) and k != "classifier.weight")
    assert sum(p.numel() for p in imported.parameters()) == expected
    for key in ("conv1.conv.weight", "conv3.1.gate.gn.bias", "global_avgpool.weight", "fc.1.running_var"):
        assert np.array_equal(state[key].numpy(), arrays[key])


def test_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.onnx: file not found"):
        build_backbone("osnet_ain_x0_5", pretrained=str(tmp_path / "nope.onnx"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: plain graphs, fine here
def test_non_osnet_onnx_is_a_model_error(tmp_path):
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny, torch.zeros(1, 3, 8, 8), str(path), dynamo=False)
    with pytest.raises(ModelError, match=r"tiny\.onnx: not an Intel OSNet-AIN graph .*missing in_first\.weight"):
        build_backbone("osnet_ain_x0_5", pretrained=str(path))


def test_width_mismatch_names_the_right_backbone(onnx_path):
    with pytest.raises(ModelError, match=r"graph is osnet_ain_x0_5 \(conv1 has 32 channels\)"):
        build_backbone("osnet_ain_x1_0", pretrained=str(onnx_path))


def test_no_vendored_weights_for_other_backbones():
    with pytest.raises(ModelError, match=r"osnet_x1_0: no weights ship with reidkit.*osnet_ain_x0_5, osnet_ain_x1_0"):
        vendored_weights("osnet_x1_0")


def test_vendored_0277_import_equals_openvino():
    """The vendored 0277 IR (OSNet-AIN x1.0) behind `pretrained=True`: OpenVINO running the same files is the
    reference; BatchNorms come folded, so the first training batch will re-estimate them."""
    from reidkit.inference import build_extractor

    net = build_backbone("osnet_ain_x1_0", pretrained=True).eval()
    assert net.calibrate_bn_on_first_batch
    u8 = torch.randint(0, 256, (2, 3, 256, 128), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    reference = build_extractor(vendored_weights("osnet_ain_x1_0"), threads=1).embed_uint8(u8)
    assert np.abs(_embed(net, u8) - reference).max() < 1e-4


def test_altered_vendored_ir_weights_are_refused(tmp_path, monkeypatch):
    """The IR's .bin is checked too, not only the .xml that is loaded."""
    folder = tmp_path / "weights"
    folder.mkdir()
    xml = vendored_weights("osnet_ain_x1_0")
    for source in (xml, xml.with_suffix(".bin")):
        shutil.copyfile(source, folder / source.name)
    monkeypatch.setattr(intel_import, "weights_folder", lambda: folder)
    assert vendored_weights("osnet_ain_x1_0") == folder / xml.name
    with open(folder / xml.with_suffix(".bin").name, "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelError, match=r"0277.bin are altered"):
        vendored_weights("osnet_ain_x1_0")
    (folder / xml.with_suffix(".bin").name).unlink()
    with pytest.raises(ModelError, match=r"0277.bin not found"):
        build_backbone("osnet_ain_x1_0", pretrained=True)


def test_altered_vendored_file_is_refused(tmp_path, monkeypatch, onnx_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    copy = folder / onnx_path.name
    shutil.copyfile(onnx_path, copy)
    with open(copy, "r+b") as fh:
        fh.seek(-1, 2)
        fh.write(b"\x00" if fh.read(1) != b"\x00" else b"\x01")
    monkeypatch.setattr(intel_import, "weights_folder", lambda: folder)
    with pytest.raises(ModelError, match=r"altered"):
        vendored_weights("osnet_ain_x0_5")
    copy.unlink()
    with pytest.raises(ModelError, match=r"not found"):
        vendored_weights("osnet_ain_x0_5")


def test_imported_model_trains_one_step():
    torch.manual_seed(0)
    model = build_model("embedding", backbone="osnet_ain_x0_5", pretrained=True, pooling="avg", num_classes=4,
                        input_size=(128, 64)).train()
    before = model.backbone.conv1.conv.weight.detach().clone()
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    x, labels = torch.randn(4, 3, 128, 64), torch.tensor([0, 1, 2, 3])
    out = model(x)
    assert out["features"].shape == (4, 256) and out["feature_map"].shape == (4, 256, 1, 1)
    torch.nn.functional.cross_entropy(out["logits"], labels).backward()
    for name in ("backbone.in_first.weight", "backbone.conv1.conv.weight", "backbone.conv2.1.gate.gn.weight",
                 "backbone.global_avgpool.weight", "backbone.fc.2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    optim.step()
    assert not torch.equal(before, model.backbone.conv1.conv.weight)


def test_smaller_inputs_resample_the_learned_pooling(imported):
    """At 128x64 the 16x8 pooling kernel is resampled to the 8x4 map with the area ratio: on a constant map the
    pooled value (kernel sum x value + bias) stays close to the one at 256x128."""
    pool = imported.global_avgpool
    native = pool(torch.ones(1, pool.in_channels, 16, 8)).flatten()
    small = pool(torch.ones(1, pool.in_channels, 8, 4)).flatten()
    reference = pool.weight.sum(dim=(1, 2, 3)) + pool.bias  # hand formula at the native size
    assert torch.allclose(native, reference, atol=1e-5)
    assert small.shape == native.shape
    assert torch.corrcoef(torch.stack([small, native]))[0, 1] > 0.99


@pytest.mark.shared
def test_import_equals_onnxruntime_on_real_crops(cuhk03_train, onnx_path):
    from reidkit.data.images import load_image_tensor
    from reidkit.inference.backends import OnnxExtractor
    from reidkit.inference.features import embed_tensor

    paths = sorted(cuhk03_train.glob("*.jpg"))[:12]
    images = load_image_tensor(paths, (256, 128))
    model = build_model("embedding", backbone="osnet_ain_x0_5", pretrained=True, pooling="avg").eval()
    ours = embed_tensor(model, images, mean=model.input_mean, std=model.input_std, device=torch.device("cpu"))
    reference = OnnxExtractor(onnx_path, threads=1).embed_uint8(images)  # Intel preset: RGB 0..255
    assert np.abs(ours.numpy() - reference).max() < 1e-4


OV_0277 = "models/openvino/person-reidentification-retail-0277/person-reidentification-retail-0277.xml"


@pytest.fixture(scope="module")
def ir_0277():
    from conftest import SHARED

    path = SHARED / OV_0277
    if not path.is_file():
        pytest.skip("../shared Intel 0277 IR not present")
    return path


def _embed(net: torch.nn.Module, u8: torch.Tensor) -> np.ndarray:
    mean, std = torch.tensor(net.input_mean).view(1, 3, 1, 1), torch.tensor(net.input_std).view(1, 3, 1, 1)
    with torch.no_grad():
        return l2n(net((u8.float() / 255 - mean) / std).flatten(1).numpy())


@pytest.mark.shared
def test_openvino_ir_import_equals_openvino(ir_0277):
    """0277 (x1.0): BatchNorms folded into the convs by the Model Optimizer, read back by walking the graph."""
    from reidkit.inference import build_extractor

    net = build_backbone("osnet_ain_x1_0", pretrained=str(ir_0277)).eval()
    assert net.calibrate_bn_on_first_batch
    u8 = torch.randint(0, 256, (2, 3, 256, 128), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    reference = build_extractor(ir_0277, threads=1).embed_uint8(u8)  # Intel preset: BGR 0..255, as documented
    assert np.abs(_embed(net, u8) - reference).max() < 1e-4
    with pytest.raises(ModelError, match=r"graph is osnet_ain_x1_0 \(conv1 has 64 channels\)"):
        build_backbone("osnet_ain_x0_5", pretrained=str(ir_0277))


@pytest.mark.shared
@pytest.mark.slow
def test_batchnorm_recalibration_keeps_the_eval_function(ir_0277):
    """Re-estimating the folded BatchNorms keeps the eval-mode embedding, and brings training mode (batch
    statistics) close to it; without it, identity BatchNorms meet batch statistics and training mode is far off."""
    import copy

    net = build_backbone("osnet_ain_x1_0", pretrained=str(ir_0277))
    u8 = torch.randint(0, 256, (8, 3, 256, 128), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    mean, std = torch.tensor(net.input_mean).view(1, 3, 1, 1), torch.tensor(net.input_std).view(1, 3, 1, 1)
    x = (u8.float() / 255 - mean) / std
    before = _embed(net.eval(), u8)
    fresh, uncalibrated = copy.deepcopy(net), copy.deepcopy(net)
    uncalibrated.calibrate_bn_on_first_batch = fresh.calibrate_bn_on_first_batch = False
    with torch.no_grad():
        net.train()(x)  # the first training batch recalibrates
        raw = l2n(uncalibrated.train()(x).flatten(1).numpy())
    assert not net.calibrate_bn_on_first_batch
    fresh.recalibrate_batchnorm(x)
    assert np.abs(_embed(fresh.eval(), u8) - before).max() < 1e-4  # float32 re-parameterisation only
    with torch.no_grad():
        train_mode = l2n(fresh.train()(x).flatten(1).numpy())
    assert (train_mode * before).sum(axis=1).min() > 0.95
    assert (raw * before).sum(axis=1).mean() < (train_mode * before).sum(axis=1).mean()
