"""OSNet-AIN and the import of Intel's person-reidentification-retail-0267 weights (vendored in the package).

The reference is onnxruntime running the same ONNX file (with OnnxExtractor's MVN epsilon, docs/deployment.md):
an independent implementation of the graph, so the tests fail if the architecture or the name mapping is wrong.
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
        build_backbone("osnet_ain_x0_5", weights=str(tmp_path / "nope.onnx"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: plain graphs, fine here
def test_non_osnet_onnx_is_a_model_error(tmp_path):
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny, torch.zeros(1, 3, 8, 8), str(path), dynamo=False)
    with pytest.raises(ModelError, match=r"tiny\.onnx: not an Intel OSNet-AIN graph .*missing in_first\.weight"):
        build_backbone("osnet_ain_x0_5", weights=str(path))


def test_width_mismatch_names_the_right_backbone(onnx_path):
    with pytest.raises(ModelError, match=r"graph is osnet_ain_x0_5 \(conv1 has 32 channels\)"):
        build_backbone("osnet_ain_x1_0", weights=str(onnx_path))


def test_no_vendored_weights_at_other_widths():
    with pytest.raises(ModelError, match=r"osnet_ain_x1_0: no weights ship with reidkit.*0277"):
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
