"""NCC matching layer (Subramaniam et al. 2016) against a naive triple-loop reference, and the IDLA-NCC model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reidkit.errors import ModelError
from reidkit.models import build_model
from reidkit.models.native import load_library, native_library
from reidkit.models.ncc import CorrelationSummary, NormalizedCrossCorrelation


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
