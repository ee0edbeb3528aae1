"""NCC matching layer (Subramaniam et al. 2016) against a naive triple-loop reference, and the IDLA-NCC model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_pair_onnx_export_matches
from reidkit.errors import ModelError
from reidkit.models import build_model
from reidkit.models.pair.native import load_library, native_library
from reidkit.models.pair.ncc import CorrelationSummary, NormalizedCrossCorrelation


def naive_ncc(a: torch.Tensor, b: torch.Tensor, patch: int, radius: int, eps: float) -> torch.Tensor:
    """Per pair, per position of A, per candidate position of B in the row band: the textbook formula."""
    n, c, h, w = a.shape
    half = patch // 2
    pa, pb = F.pad(a, (half,) * 4), F.pad(b, (half,) * 4)
    out = torch.zeros(n, c, 2 * radius + 1, w, h, w, dtype=torch.float64)
    for i in range(n):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    p = pa[i, ch, y:y + patch, x:x + patch].flatten().double()
                    p = p - p.mean()
                    p_norm = math.sqrt(float((p * p).sum()) + eps)
                    for dy in range(-radius, radius + 1):
                        if not 0 <= y + dy < h:
                            continue  # candidate row outside B: correlation 0
                        for x2 in range(w):
                            q = pb[i, ch, y + dy:y + dy + patch, x2:x2 + patch].flatten().double()
                            q = q - q.mean()
                            q_norm = math.sqrt(float((q * q).sum()) + eps)
                            out[i, ch, dy + radius, x2, y, x] = float((p * q).sum()) / (p_norm * q_norm)
    return out.reshape(n, c * (2 * radius + 1) * w, h, w)


@pytest.mark.parametrize(("patch", "radius", "chunk"), [(5, 2, 32), (3, 1, 1)])
@pytest.mark.parametrize("with_grad", [False, True])  # fused inference path and the autograd path
def test_ncc_matches_the_naive_loop_reference(patch, radius, chunk, with_grad):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 6, 4, generator=gen, dtype=torch.float64, requires_grad=with_grad)
    b = torch.randn(3, 2, 6, 4, generator=gen, dtype=torch.float64, requires_grad=with_grad)
    layer = NormalizedCrossCorrelation(patch, radius, eps=1e-4, chunk_size=chunk)
    expected = naive_ncc(a.detach(), b.detach(), patch, radius, 1e-4)
    got = layer(a, b)
    assert got.shape == (3, 2 * (2 * radius + 1) * 4, 6, 4)
    torch.testing.assert_close(got.detach(), expected)


def test_ncc_float32_matches_the_float64_reference():
    gen = torch.Generator().manual_seed(5)
    a, b = torch.rand(2, 3, 7, 5, generator=gen), torch.rand(2, 3, 7, 5, generator=gen)
    expected = naive_ncc(a, b, 5, 2, 1e-4).float()
    torch.testing.assert_close(NormalizedCrossCorrelation()(a, b), expected, rtol=1e-4, atol=1e-4)


needs_native = pytest.mark.skipif(native_library() is None, reason="no C compiler: the native kernels are not built")


@needs_native
@pytest.mark.parametrize(("n", "c", "h", "w", "patch", "radius", "threads"), [
    (2, 3, 6, 12, 5, 2, 1),   # the paper's band width (5 rows x 12 columns): register-blocked path
    (3, 2, 5, 12, 5, 2, 2),   # the same split over two threads
    (1, 2, 4, 7, 3, 1, 2),    # other widths and radii: generic path, width not a multiple of 4
    (1, 1, 3, 60, 5, 0, 1),   # band width 60 without padding rows: must not take the spilling path
])
def test_native_kernel_matches_the_naive_loop_reference(n, c, h, w, patch, radius, threads):
    gen = torch.Generator().manual_seed(9)
    a, b = torch.randn(n, c, h, w, generator=gen), torch.randn(n, c, h, w, generator=gen)
    layer = NormalizedCrossCorrelation(patch, radius, eps=1e-4)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = layer(a, b)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(got, naive_ncc(a, b, patch, radius, 1e-4).float(), rtol=1e-4, atol=1e-5)


def test_a_failing_compiler_falls_back_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDKIT_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="native kernels unavailable"):
        assert load_library("/bin/false") is None
    with pytest.warns(UserWarning, match="no C compiler"):
        assert load_library(None) is None


def test_ncc_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(2, 2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    layer = NormalizedCrossCorrelation(3, 1)
    assert torch.autograd.gradcheck(lambda x, y: layer(x, y), (a, b), fast_mode=True)


def test_correlate_layout_holds_the_same_numbers():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 5, 4, generator=gen), torch.randn(2, 3, 5, 4, generator=gen)
    layer = NormalizedCrossCorrelation(3, 1)
    corr = layer.correlate(a, b)  # [n, c, y, x, dy, x2]
    maps = layer(a, b).view(2, 3, 3, 4, 5, 4)  # [n, c, dy, x2, y, x]
    torch.testing.assert_close(corr, maps.permute(0, 1, 4, 5, 2, 3))


def test_ncc_hand_values_self_match_is_one_and_contrast_is_ignored():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(1, 1, 7, 5, generator=gen, dtype=torch.float64)
    layer = NormalizedCrossCorrelation(5, 2, eps=1e-12)
    corr = layer.correlate(a, 3.0 * a + 7.0)  # brightness/contrast change: ncc unchanged, still a perfect match
    for y in range(7):
        for x in range(5):
            # padding zeros do not follow the affine change, so check interior patches only
            if 2 <= y < 5 and 2 <= x < 3:
                assert corr[0, 0, y, x, 2, x].item() == pytest.approx(1.0, abs=1e-9)
    assert corr.abs().max() <= 1.0 + 1e-9
    negated = layer.correlate(a, -a)
    assert negated[0, 0, 3, 2, 2, 2].item() == pytest.approx(-1.0, abs=1e-9)


def test_paper_shape_37x12x25_gives_1500_maps():
    out = NormalizedCrossCorrelation()(torch.randn(2, 25, 37, 12), torch.randn(2, 25, 37, 12))
    assert out.shape == (2, 1500, 37, 12)


def test_correlation_summary_equals_a_1x1_convolution_of_the_maps():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 3, 5, 4, generator=gen), torch.randn(2, 3, 5, 4, generator=gen)
    layer = NormalizedCrossCorrelation(3, 1)
    summary = CorrelationSummary(3, 3 * 4, 6)
    expected = F.relu(F.conv2d(layer(a, b), summary.conv.weight, summary.conv.bias))
    torch.testing.assert_close(summary(layer.correlate_padded(a, b), 5), expected, rtol=1e-5, atol=1e-5)


def test_ncc_rejects_bad_arguments():
    with pytest.raises(ModelError, match="patch_size"):
        NormalizedCrossCorrelation(patch_size=4)
    with pytest.raises(ModelError, match="equal"):
        NormalizedCrossCorrelation()(torch.zeros(1, 2, 5, 5), torch.zeros(1, 2, 5, 6))


@pytest.mark.parametrize("mode", ["replace", "beside"])
def test_idla_ncc_model_shapes_and_gradients(mode):
    model = build_model("idla_ncc", mode=mode)
    assert model.input_size == (160, 60)
    x1, x2 = torch.randn(2, 3, 160, 60), torch.randn(2, 3, 160, 60)
    logits = model(x1, x2)
    assert logits.shape == (2, 2)
    logits.sum().backward()
    assert model.trunk.conv1.weight.grad is not None and torch.isfinite(model.trunk.conv1.weight.grad).all()
    assert (model.differences is not None) == (mode == "beside")


def test_idla_ncc_rejects_unknown_mode_and_wrong_inputs():
    with pytest.raises(ModelError, match="mode"):
        build_model("idla_ncc", mode="sideways")
    with pytest.raises(ModelError, match="x1"):
        build_model("idla_ncc")(torch.zeros(1, 3, 64, 32), torch.zeros(1, 3, 160, 60))


# ------------------------------------------------------------------ fused NCC + summary kernels (training path)
def summary_reference(a: torch.Tensor, b: torch.Tensor, summary: CorrelationSummary, patch: int,
                      radius: int) -> torch.Tensor:
    """The unfused definition: textbook NCC maps (plain loops), then the 1x1 convolution and ReLU."""
    maps = naive_ncc(a.detach(), b.detach(), patch, radius, 1e-4).float()
    return F.relu(F.conv2d(maps, summary.conv.weight.detach(), summary.conv.bias.detach()))


@needs_native
@pytest.mark.parametrize(("n", "c", "h", "w", "patch", "radius", "outs", "threads"), [
    (2, 3, 6, 12, 5, 2, 25, 1),  # the paper's band (5 rows x 12 columns) and 25 outputs
    (3, 2, 5, 12, 5, 2, 25, 2),  # split over two threads
    (2, 2, 5, 7, 3, 1, 6, 1),    # another width (not a multiple of 4), radius and output count
    (1, 2, 2, 5, 5, 2, 16, 2),   # maps lower than the band: most candidate rows fall outside
])
def test_fused_summary_matches_the_naive_reference(n, c, h, w, patch, radius, outs, threads):
    gen = torch.Generator().manual_seed(11)
    a, b = torch.randn(n, c, h, w, generator=gen), torch.randn(n, c, h, w, generator=gen)
    layer = NormalizedCrossCorrelation(patch, radius, eps=1e-4)
    summary = CorrelationSummary(c, (2 * radius + 1) * w, outs)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = summary.fused(layer, a, b)
    finally:
        torch.set_num_threads(previous)
    assert got is not None and got.shape == (n, outs, h, w)
    torch.testing.assert_close(got, summary_reference(a, b, summary, patch, radius), rtol=1e-4, atol=1e-5)


@needs_native
@pytest.mark.parametrize(("patch", "radius", "w", "outs"), [(5, 2, 12, 25), (3, 1, 7, 6)])
def test_fused_summary_gradients_match_float64_autograd_of_the_unfused_layers(patch, radius, w, outs):
    gen = torch.Generator().manual_seed(12)
    a, b = torch.randn(2, 3, 6, w, generator=gen), torch.randn(2, 3, 6, w, generator=gen)
    upstream = torch.randn(2, outs, 6, w, generator=gen)
    layer = NormalizedCrossCorrelation(patch, radius, eps=1e-4)
    summary = CorrelationSummary(3, (2 * radius + 1) * w, outs)

    def gradients(model: CorrelationSummary, x: torch.Tensor, y: torch.Tensor, fused: bool) -> list[torch.Tensor]:
        x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = model.fused(layer, x, y) if fused else model(layer.correlate_padded(x, y), x.shape[2])
        (out * upstream.to(out.dtype)).sum().backward()
        return [x.grad, y.grad, model.conv.weight.grad, model.conv.bias.grad]

    reference = gradients(summary.double(), a.double(), b.double(), fused=False)  # autograd, float64
    summary.float().zero_grad()
    got = gradients(summary, a, b, fused=True)
    for name, g, r in zip(("a", "b", "weight", "bias"), got, reference):
        torch.testing.assert_close(g, r.float(), rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@needs_native
def test_fused_summary_steps_aside_outside_its_limits():
    layer = NormalizedCrossCorrelation(5, 2)
    wide = CorrelationSummary(2, 5 * 14, 25)  # 70 candidates per position: more than the kernel's 64
    a = torch.randn(1, 2, 4, 14)
    assert wide.fused(layer, a, a) is None
    assert CorrelationSummary(2, 5 * 12, 40).fused(layer, a[..., :12], a[..., :12]) is None  # > 32 outputs
    assert CorrelationSummary(2, 5 * 12, 25).fused(NormalizedCrossCorrelation(5, 2, native=False), a[..., :12],
                                                   a[..., :12]) is None


@needs_native
def test_idla_ncc_fused_and_pytorch_paths_give_the_same_logits_and_gradients():
    torch.manual_seed(0)
    model = build_model("idla_ncc", batchnorm=True, dropout=0.0).train()
    gen = torch.Generator().manual_seed(1)
    f1, f2 = torch.randn(3, 25, 37, 12, generator=gen), torch.randn(3, 25, 37, 12, generator=gen)

    def run(native: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.ncc.native = native
        model.zero_grad()
        a, b = f1.clone().requires_grad_(), f2.clone().requires_grad_()
        logits = model.pair_layers(a, b)
        (logits * torch.tensor([1.3, -0.7])).sum().backward()
        grads = {"a": a.grad, "b": b.grad, **{k: p.grad for k, p in model.named_parameters() if p.grad is not None}}
        return logits.detach(), grads

    fused, plain = run(True), run(False)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-4, atol=1e-6)
    assert fused[1].keys() == plain[1].keys()
    for name in plain[1]:
        torch.testing.assert_close(fused[1][name], plain[1][name], rtol=1e-3, atol=1e-6, msg=name)


def test_traceable_correlation_matches_the_naive_loop_reference():
    gen = torch.Generator().manual_seed(13)
    a, b = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64), torch.randn(2, 3, 6, 5, generator=gen,
                                                                                   dtype=torch.float64)
    layer = NormalizedCrossCorrelation(3, 1, eps=1e-4)
    corr = layer._correlate_traceable(a, b)  # (N, C, H, W, 2r+1, W)
    as_maps = corr.permute(0, 1, 4, 5, 2, 3).reshape(2, 3 * 3 * 5, 6, 5)
    torch.testing.assert_close(as_maps, naive_ncc(a, b, 3, 1, 1e-4))


@pytest.mark.parametrize("mode", ["replace", "beside"])
def test_idla_ncc_exports_to_onnx_with_a_dynamic_batch(tmp_path, mode):
    torch.manual_seed(0)
    assert_pair_onnx_export_matches(build_model("idla_ncc", input_size=(64, 32), mode=mode), tmp_path / "m.onnx")
