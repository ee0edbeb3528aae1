"""IDLA (Ahmed et al. 2015): layer maths against plain-loop references, paper shapes, tied weights, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_pair_onnx_export_matches
from reidkit.errors import ModelError
from reidkit.models import build_model
from reidkit.models.pair.idla import (
    AcrossPatch,
    PatchSummary,
    _neighbourhood_differences_traceable,
    neighbourhood_differences,
    trunk_output_size,
)
from reidkit.models.pair.native import native_library
from reidkit.training.pair import PairModelConfig


def naive_neighbourhood_differences(f: torch.Tensor, g: torch.Tensor, size: int) -> torch.Tensor:
    """K[n, c, k, y, x] = f[n, c, y, x] - g[n, c, y+dy, x+dx] (0 outside g), one position at a time."""
    n, c, h, w = f.shape
    half = size // 2
    out = torch.zeros(n, c, size * size, h, w, dtype=f.dtype)
    for b in range(n):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    for dy in range(-half, half + 1):
                        for dx in range(-half, half + 1):
                            yy, xx = y + dy, x + dx
                            neighbour = g[b, ch, yy, xx] if 0 <= yy < h and 0 <= xx < w else 0.0
                            out[b, ch, (dy + half) * size + dx + half, y, x] = f[b, ch, y, x] - neighbour
    return out


def expanded_map(diffs: torch.Tensor, size: int) -> torch.Tensor:
    """The paper's picture of K: a (size*H) x (size*W) map whose block at (y, x) is the 5x5 neighbourhood."""
    n, c, _, h, w = diffs.shape
    out = torch.zeros(n, c, size * h, size * w, dtype=diffs.dtype)
    for y in range(h):
        for x in range(w):
            out[:, :, size * y:size * (y + 1), size * x:size * (x + 1)] = diffs[:, :, :, y, x].reshape(n, c, size,
                                                                                                         size)
    return out


def as_matrix(diffs: torch.Tensor) -> torch.Tensor:
    """(N, C, k, H, W) -> the (C*k, N*H*W) layout neighbourhood_differences returns."""
    n, c, k, h, w = diffs.shape
    return diffs.permute(1, 2, 0, 3, 4).reshape(c * k, n * h * w)


def test_neighbourhood_differences_match_plain_loops():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64)
    for size in (3, 5):
        expected = torch.relu(as_matrix(naive_neighbourhood_differences(f, g, size)))
        torch.testing.assert_close(neighbourhood_differences(f, g, size), expected)


def test_traceable_neighbourhood_differences_match_plain_loops():
    """The export path (plain slices + stack) gives the loop reference's numbers too."""
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64)
    expected = torch.relu(as_matrix(naive_neighbourhood_differences(f, g, 5)))
    torch.testing.assert_close(_neighbourhood_differences_traceable(f, g, 5), expected)


def test_idla_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    assert_pair_onnx_export_matches(build_model("idla"), tmp_path / "idla.onnx")


def test_neighbourhood_differences_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(4)
    f = torch.randn(2, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: neighbourhood_differences(a, b, 5), (f, g), fast_mode=True)


def test_neighbourhood_difference_of_constant_maps_is_zero_inside_and_value_at_border():
    # Hand value: f = g = 2 everywhere. Inside, every difference is 0; a neighbour outside the map is 0, so 2 - 0.
    f = torch.full((1, 1, 5, 5), 2.0)
    k = neighbourhood_differences(f, f.clone(), 5).view(25, 5, 5)
    assert torch.all(k[:, 2, 2] == 0)
    corner = k[:, 0, 0].view(5, 5)
    assert torch.all(corner[:2, :] == 2) and torch.all(corner[:, :2] == 2) and torch.all(corner[2:, 2:] == 0)


def test_patch_summary_equals_stride5_convolution_of_the_expanded_map():
    gen = torch.Generator().manual_seed(1)
    diffs = torch.relu(torch.randn(2, 4, 25, 5, 3, generator=gen))
    layer = PatchSummary(4, 6, 5)
    reference = F.relu(F.conv2d(expanded_map(diffs, 5), layer.conv.weight, layer.conv.bias, stride=5))
    torch.testing.assert_close(layer(as_matrix(diffs), (2, 5, 3)), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(native_library() is None, reason="no C compiler: the native kernels are not built")
@pytest.mark.parametrize(("n", "c", "h", "w", "threads"), [
    (2, 3, 6, 4, 1),     # 24 positions: one full tile of 16 and a partial one
    (3, 25, 5, 12, 2),   # the paper's channel count, 60 positions, pairs split over two threads
])
def test_fused_summary_matches_plain_loops(n, c, h, w, threads):
    gen = torch.Generator().manual_seed(7)
    f, g = torch.randn(n, c, h, w, generator=gen), torch.randn(n, c, h, w, generator=gen)
    layer = PatchSummary(c, 25, 5)
    torch.nn.init.normal_(layer.conv.bias, std=0.5, generator=gen)  # exercise the bias and the final ReLU
    expected = F.relu(F.conv2d(expanded_map(torch.relu(naive_neighbourhood_differences(f.double(), g.double(), 5)),
                                            5), layer.conv.weight.double(), layer.conv.bias.double(), stride=5))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            fused = layer.fused(f, g)
    finally:
        torch.set_num_threads(previous)
    assert fused is not None
    torch.testing.assert_close(fused.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(native_library() is None, reason="no C compiler: the native kernels are not built")
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_summary_gradients_match_the_pytorch_path(threads):
    # The PyTorch path's gradients are checked against finite differences above; the kernels must agree with them.
    gen = torch.Generator().manual_seed(11)
    f, g = torch.randn(3, 6, 7, 5, generator=gen), torch.randn(3, 6, 7, 5, generator=gen)
    layer = PatchSummary(6, 25, 5)
    torch.nn.init.normal_(layer.conv.bias, std=0.5, generator=gen)
    upstream = torch.randn(3, 25, 7, 5, generator=gen)
    grads = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for use_kernel in (True, False):
            layer.zero_grad()
            a, b = f.clone().requires_grad_(), g.clone().requires_grad_()
            out = layer.fused(a, b) if use_kernel else layer(neighbourhood_differences(a, b, 5), (3, 7, 5))
            assert out is not None
            (out * upstream).sum().backward()
            grads.append([a.grad, b.grad, layer.conv.weight.grad.clone(), layer.conv.bias.grad.clone()])
    finally:
        torch.set_num_threads(previous)
    for name, native, reference in zip(("f", "g", "weight", "bias"), *grads):
        torch.testing.assert_close(native, reference, rtol=1e-4, atol=1e-4, msg=f"gradient of {name}")


def test_idla_native_and_pytorch_paths_give_the_same_logits():
    gen = torch.Generator().manual_seed(8)
    x1, x2 = torch.randn(5, 3, 48, 28, generator=gen), torch.randn(5, 3, 48, 28, generator=gen)
    native = build_model("idla", input_size=(48, 28)).eval()
    plain = build_model("idla", input_size=(48, 28), native=False).eval()
    torch.nn.init.normal_(native.head[-1].weight, std=1.0, generator=gen)  # logits far from 50/50: a real check
    plain.load_state_dict(native.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(native(x1, x2), plain(x1, x2), rtol=1e-4, atol=1e-4)


def test_paper_shapes_for_160x60_inputs():
    model = build_model("idla").eval()
    assert model.input_size == (160, 60)
    assert trunk_output_size((160, 60)) == (37, 12)
    assert AcrossPatch.output_size((37, 12)) == (18, 5)  # the paper's 25 x 18 x 5 across-patch maps
    assert model.head[0].in_features == 2 * 25 * 18 * 5 and model.head[0].out_features == 500
    x1, x2 = torch.randn(3, 3, 160, 60), torch.randn(3, 3, 160, 60)
    assert model.embed(x1).shape == (3, 25, 37, 12)
    with torch.no_grad():
        logits = model(x1, x2)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()


def test_weights_are_tied_one_trunk_serves_both_views():
    model = build_model("idla").eval()
    conv_weights = [name for name, _ in model.named_parameters() if name.endswith("weight") and "trunk" in name]
    assert conv_weights == ["trunk.conv1.weight", "trunk.conv2.weight"]
    seen: list[torch.Tensor] = []
    model.trunk.conv1.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    gen = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(2, 3, 160, 60, generator=gen), torch.randn(2, 3, 160, 60, generator=gen)
    with torch.no_grad():
        logits = model(x1, x2)
    torch.testing.assert_close(torch.cat(seen), torch.cat([x1, x2]))  # both views went through trunk.conv1
    # and the pair output is the head applied to trunk(x1), trunk(x2) computed separately with that one trunk
    with torch.no_grad():
        separate = model.pair_logits(model.trunk(x1), model.trunk(x2))
    torch.testing.assert_close(logits, separate, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["idla", "idla_ncc"])
def test_batchnorm_trunk_normalises_each_convolution_before_pool_and_relu(name):
    """Hand computation: conv (no bias) -> (x - mean) / sqrt(var + eps) * gamma + beta -> max-pool 2 -> ReLU, with
    the batch's statistics in training mode and the running ones in eval mode; negative gammas included, where
    pooling before normalising would differ."""
    model = build_model(name, batchnorm=True)
    trunk = model.trunk
    assert trunk.conv1.bias is None and trunk.conv2.bias is None
    gen = torch.Generator().manual_seed(4)
    for norm in (trunk.norm1, trunk.norm2):
        norm.weight.data = torch.randn(norm.num_features, generator=gen)  # about half negative
        norm.bias.data = torch.randn(norm.num_features, generator=gen)
    x = torch.randn(4, 3, 160, 60, generator=gen)

    def by_hand(training: bool) -> torch.Tensor:
        h = x
        for conv, norm in ((trunk.conv1, trunk.norm1), (trunk.conv2, trunk.norm2)):
            h = F.conv2d(h, conv.weight)
            if training:
                mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
            else:
                mean, var = norm.running_mean, norm.running_var
            h = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + norm.eps)
            h = h * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
            h = F.relu(F.max_pool2d(h, 2))
        return h

    with torch.no_grad():
        torch.testing.assert_close(trunk(x), by_hand(True), rtol=1e-4, atol=1e-4)
        trunk.eval()
        torch.testing.assert_close(trunk(x), by_hand(False), rtol=1e-4, atol=1e-4)
    assert (trunk.norm1.running_mean != 0).any()  # the training-mode pass updated the running statistics
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in build_model(name).modules())  # paper default
    from_config = build_model(name, **PairModelConfig(name=name, batchnorm=True).build_kwargs((160, 60)))
    assert isinstance(from_config.trunk.norm2, torch.nn.BatchNorm2d)  # the trainer's `model.batchnorm` reaches it


def test_tied_gradients_reach_the_shared_trunk_from_each_view():
    model = build_model("idla")
    x = torch.randn(2, 3, 160, 60)
    feats = model.trunk(x)
    model.pair_logits(feats[:1], feats[1:].detach()).sum().backward()
    grad_from_view1 = model.trunk.conv1.weight.grad.clone()
    model.zero_grad()
    feats = model.trunk(x)
    model.pair_logits(feats[:1].detach(), feats[1:]).sum().backward()
    assert grad_from_view1.abs().sum() > 0 and model.trunk.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("shape", "dtype", "needle"), [
    ((2, 3, 128, 64), torch.float32, "160"),
    ((2, 1, 160, 60), torch.float32, "(N, 3, 160, 60)"),
    ((2, 3, 160, 60), torch.uint8, "float"),
])
def test_wrong_input_gives_a_clear_error(shape, dtype, needle):
    model = build_model("idla")
    bad = torch.zeros(shape, dtype=dtype)
    with pytest.raises(ModelError, match="x2") as info:
        model(torch.zeros(2, 3, 160, 60), bad)
    assert needle in str(info.value)


def test_mismatched_batch_sizes_and_unknown_options_are_rejected():
    model = build_model("idla")
    with pytest.raises(ModelError, match="same number"):
        model(torch.zeros(2, 3, 160, 60), torch.zeros(3, 3, 160, 60))
    with pytest.raises(ModelError, match="unknown option"):
        build_model("idla", filters=3)
    with pytest.raises(ModelError, match="dropout"):
        build_model("idla", dropout=1.5)


def test_score_equals_forward_on_every_pair_one_at_a_time():
    model = build_model("idla", input_size=(40, 24))  # small input: same code path, fast test
    model.train()  # score() must switch dropout off by itself, and restore the mode afterwards
    gen = torch.Generator().manual_seed(3)
    query, gallery = torch.randn(3, 3, 40, 24, generator=gen), torch.randn(4, 3, 40, 24, generator=gen)
    scores = model.score(query, gallery, batch_size=5)
    assert model.training
    model.eval()
    with torch.no_grad():
        for i in range(3):
            for j in range(4):
                logits = model(query[i:i + 1], gallery[j:j + 1])[0]
                assert scores[i, j].item() == pytest.approx((logits[1] - logits[0]).item(), abs=1e-4)


@pytest.mark.parametrize(("symmetric", "flip"), [(True, False), (False, True), (True, True)])
def test_test_time_views_average_forward_over_both_orders_and_mirrored_images(symmetric, flip):
    model = build_model("idla", input_size=(40, 24)).eval()
    gen = torch.Generator().manual_seed(5)
    query, gallery = torch.randn(2, 3, 40, 24, generator=gen), torch.randn(3, 3, 40, 24, generator=gen)
    scores = model.score(query, gallery, batch_size=4, symmetric=symmetric, flip=flip)

    def log_odds(a, b):
        logits = model(a, b)[0]
        return (logits[1] - logits[0]).item()

    with torch.no_grad():
        for i in range(2):
            for j in range(3):
                views = [(query[i:i + 1], gallery[j:j + 1])]
                if flip:
                    views.append((query[i:i + 1].flip(-1), gallery[j:j + 1].flip(-1)))
                if symmetric:
                    views += [(b, a) for a, b in views]
                expected = sum(log_odds(a, b) for a, b in views) / len(views)
                assert scores[i, j].item() == pytest.approx(expected, abs=1e-4)
    assert not torch.allclose(scores, model.score(query, gallery))  # the views do change the scores


def test_pair_logits_over_many_chunks_equal_the_pair_layers_on_each_small_batch():
    model = build_model("idla", input_size=(64, 32)).eval()
    feats = model.embed(torch.randn(20, 3, 64, 32))
    gen = torch.Generator().manual_seed(4)
    first, second = torch.randint(0, 20, (2, 600), generator=gen)
    with torch.no_grad():
        got = model.pair_logits(feats[first], feats[second])  # 600 pairs: several chunks of either size
        expected = torch.cat([model.pair_layers(feats[first[i:i + 7]], feats[second[i:i + 7]])
                              for i in range(0, 600, 7)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    plain = build_model("idla", input_size=(64, 32), native=False)
    assert plain.pair_chunk == 32 and model.pair_chunk == (256 if native_library() is not None else 32)
