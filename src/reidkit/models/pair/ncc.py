"""Normalised cross-correlation matching layer (Subramaniam, Chatterjee & Mittal, "Deep Neural Networks with
Inexact Matching for Person Re-Identification", NIPS 2016) and the IDLA variant that uses it.

For every position (y, x) of view A's feature map and every channel c, the 5x5 patch around (y, x) is compared
with the 5x5 patches of view B at every position (y', x') of the search region: rows y' = y - r .. y + r (r =
`row_radius`, default 2) and the whole width. The comparison is the normalised cross-correlation

    ncc(p, q) = sum_k (p_k - mean p)(q_k - mean q) / (sqrt(sum_k (p_k - mean p)^2 + eps) sqrt(... q ... + eps))

which is in [-1, 1] and ignores each patch's brightness and contrast (inexact matching). Maps are zero-padded
for the patches; candidate rows outside B's map correlate to 0. For 37x12x25 maps that is 25 x (5 x 12) = 1,500
correlation maps of 37x12.

Vectorised, no loop over positions: patch means and norms come from two 5x5 box filters, every patch is centred
and scaled in one fused pass over an unfold view, and all correlations are ONE batched matrix product. For that
product the normalised patches are stored component-major and row-padded: component j of every patch is a
contiguous row laid out (N, C, H + 2r, W). The search band of row y (rows y-r..y+r of B, every column) is then a
contiguous run of (2r+1)*W values in each component row, at a fixed stride from the band of row y-1, so a
zero-copy strided view serves every band (overlapping) and (n, c, y) merge into one batch index. Component-major
rather than patch-major storage makes the normalisation's writes run along map rows (~5x faster, measured); see
docs/pair_networks.md for the timings.

Inference on CPU float32 goes through a fused C kernel instead (kernels.c, built on first use by
reidkit.models.pair.native; `native=False` or REIDKIT_NATIVE=0 keep the PyTorch path, which is also the fallback
without a C compiler): per (pair, channel) block it normalises both maps' patches into cache-resident buffers
and computes the band products with register-blocked vector code, so no patch store is ever materialised.
Inside IDLA-NCC the layer's consumer, the 1x1 summary convolution, is fused in as well (forward and backward, so
training too: `CorrelationSummary.fused`): per (pair, channel, row) the correlations exist only in L1, and neither
the normalised patches nor the ~1 GB correlation tensor of a training batch are written. The PyTorch path above
serves autograd for the layer on its own, other devices and machines without a C compiler.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import ModelError
from ..registry import register_model
from .base import PairNetwork, pair_head
from .idla import PAPER_INPUT_SIZE, AcrossPatch, DifferenceBranches, TiedTrunk, as_input_size, trunk_output_size
from .native import native_library, run_split, run_split_summed

NCC_MODES = ("replace", "beside")


def _band_stores(n: int, c: int, h: int, w: int, kk: int, radius: int,
                 like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Component-major, row-padded patch stores: component j of every patch is one contiguous row of (N*C*(H+2r)*W)
    values (P) or (N*C*(H+2r) + 2r)*W values (Q, its 2r spare map rows serving the last bands).

    P holds its patches in map rows 0..H-1 of each (n, c) block, Q in rows r..r+H-1; every other row is zeroed here
    (only the padding is written: the data rows are filled by the caller).
    """
    hp, blocks = h + 2 * radius, n * c
    p_store = like.new_empty(kk, blocks * hp * w)
    q_store = like.new_empty(kk, (blocks * hp + 2 * radius) * w)
    p_store.view(kk, blocks, hp, w)[:, :, h:] = 0
    q_maps = q_store[:, : blocks * hp * w].view(kk, blocks, hp, w)
    q_maps[:, :, :radius] = 0
    q_maps[:, :, radius + h:] = 0
    q_store[:, blocks * hp * w:] = 0
    return p_store, q_store


def _store_rows(store: torch.Tensor, n: int, c: int, hp: int, w: int, first: int, rows: int) -> torch.Tensor:
    """(kk, N, C, rows, W) view of map rows first..first+rows-1 of a component-major store."""
    return store[:, : n * c * hp * w].view(-1, n, c, hp, w)[:, :, :, first:first + rows]


def _patch_rows(p_store: torch.Tensor, batches: int, w: int) -> torch.Tensor:
    """(batches, W, kk) view: batch b = the W patches of padded map row b."""
    return p_store.as_strided((batches, w, p_store.shape[0]), (w, 1, p_store.stride(0)), p_store.storage_offset())


def _band_view(q_store: torch.Tensor, batches: int, w: int, radius: int) -> torch.Tensor:
    """Overlapping (batches, kk, (2r+1)*W) view: batch b = padded map rows b..b+2r of Q, as contiguous columns."""
    return q_store.as_strided((batches, q_store.shape[0], (2 * radius + 1) * w), (w, q_store.stride(0), 1),
                              q_store.storage_offset())


def _band_product(p_store: torch.Tensor, q_store: torch.Tensor, n: int, c: int, h: int, w: int,
                  radius: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, H+2r, W, 2r+1, W) correlations, written into `out` (contiguous, that shape) when given."""
    hp = h + 2 * radius
    batches = n * c * hp
    flat_out = None if out is None else out.view(batches, w, (2 * radius + 1) * w)
    product = torch.bmm(_patch_rows(p_store, batches, w), _band_view(q_store, batches, w, radius), out=flat_out)
    return product.view(n, c, hp, w, 2 * radius + 1, w)


class _BandCorrelation(torch.autograd.Function):
    """Correlations of normalised patches P (rows y) with Q (rows y-r..y+r): (N, C, H+2r, W, 2r+1, W).

    Inputs are component-major patches (kk, N, C, H, W). Rows >= H of the output are padding (junk) and must be
    dropped by the caller.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, q: torch.Tensor, radius: int) -> torch.Tensor:
        kk, n, c, h, w = p.shape
        hp = h + 2 * radius
        p_store, q_store = _band_stores(n, c, h, w, kk, radius, p)
        _store_rows(p_store, n, c, hp, w, 0, h).copy_(p)
        _store_rows(q_store, n, c, hp, w, radius, h).copy_(q)
        ctx.save_for_backward(p_store, q_store)
        ctx.shape = (n, c, h, w, radius)
        return _band_product(p_store, q_store, n, c, h, w, radius)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        p_store, q_store = ctx.saved_tensors
        n, c, h, w, r = ctx.shape
        kk, hp = p_store.shape[0], h + 2 * r
        batches = n * c * hp
        g = grad.reshape(batches, w, (2 * r + 1) * w)
        grad_p = torch.bmm(g, _band_view(q_store, batches, w, r).transpose(1, 2))  # (batches, W, kk)
        grad_q = torch.zeros(batches + 2 * r, w, kk, dtype=grad.dtype, device=grad.device)
        p_rows = _patch_rows(p_store, batches, w)
        for d in range(2 * r + 1):  # band offset d of batch b is store row b + d: accumulate in place per offset
            grad_q[d:d + batches].baddbmm_(g[:, :, d * w:(d + 1) * w].transpose(1, 2), p_rows)

        def component_major(rows: torch.Tensor, first: int) -> torch.Tensor:
            return rows.view(n, c, hp, w, kk)[:, :, first:first + h].permute(4, 0, 1, 2, 3)

        return component_major(grad_p, 0), component_major(grad_q[:batches], r), None


class NormalizedCrossCorrelation(nn.Module):
    """`forward(a, b)`: (N, C, H, W) x2 -> (N, C * (2r+1) * W, H, W) correlation maps.

    Output channel `(c * (2r+1) + (dy + r)) * W + x2` at (y, x) holds ncc(A_c patch at (y, x), B_c patch at
    (y + dy, x2)). `correlate` returns the same numbers as (N, C, H, W, 2r+1, W) without the final transpose.
    """

    def __init__(self, patch_size: int = 5, row_radius: int = 2, eps: float = 1e-4, chunk_size: int = 32,
                 native: bool = True):
        super().__init__()
        if patch_size < 1 or patch_size % 2 == 0:
            raise ModelError(f"patch_size={patch_size}: must be a positive odd number")
        if row_radius < 0:
            raise ModelError(f"row_radius={row_radius}: must be >= 0")
        if eps <= 0:
            raise ModelError(f"eps={eps}: must be > 0")
        if chunk_size < 1:
            raise ModelError(f"chunk_size={chunk_size}: must be >= 1")
        self.patch_size, self.row_radius, self.eps, self.chunk_size = patch_size, row_radius, eps, chunk_size
        # Inference on CPU float32 uses the fused C kernel (reidkit.models.pair.native) when it builds here.
        self.native = native

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, row_radius={self.row_radius}, eps={self.eps}"

    def _patch_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(patch view (k, k, N, C, H, W), offset, scale) with normalised patch = view * scale + offset."""
        k, half = self.patch_size, self.patch_size // 2
        # Box means of x and x^2 in one pooling call; zero padding counts, as in the patches. Channels-last: the
        # CPU pooling kernel is ~4x faster in NHWC than in NCHW for these small maps (measured).
        both = torch.cat([x, x * x], 1).contiguous(memory_format=torch.channels_last)
        mean, mean_sq = F.avg_pool2d(both, k, 1, half, count_include_pad=True).contiguous().chunk(2, 1)
        centred_ss = ((mean_sq - mean * mean) * (k * k)).clamp_min(0)  # sum of squared deviations
        scale = torch.rsqrt(centred_ss + self.eps)
        # Component-major (offset (u, v) first): each output row then runs along whole map rows, ~5x faster to
        # write than patch-major (N, C, H, W, k, k) whose innermost loop is k long (measured).
        padded = F.pad(x, (half, half, half, half))
        if torch.jit.is_tracing():  # ONNX export has no dynamic-shape unfold: the same view from fixed slices
            h, w = x.shape[2:]
            view = torch.stack([torch.stack([padded[:, :, u:u + h, v:v + w] for v in range(k)]) for u in range(k)])
        else:
            view = padded.unfold(2, k, 1).unfold(3, k, 1).permute(4, 5, 0, 1, 2, 3)
        return view, -mean * scale, scale

    def normalized_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (k*k, N, C, H, W): every zero-padded k x k patch, centred and scaled to unit length;
        component j = u*k + v of the patch at (y, x) is the map value at (y + u - k//2, x + v - k//2)."""
        view, offset, scale = self._patch_terms(x)
        return torch.addcmul(offset, view, scale).reshape(-1, *x.shape)

    def _fill(self, x: torch.Tensor, rows: torch.Tensor) -> None:
        """Write normalised patches into a (k*k, N, C, H, W) view of a patch store in one fused pass (no autograd)."""
        view, offset, scale = self._patch_terms(x)
        torch.addcmul(offset, view, scale, out=rows.unflatten(0, (self.patch_size, self.patch_size)))

    def _correlate_chunk(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        """Correlations of one chunk of pairs, written into `out` (no autograd)."""
        n, c, h, w = a.shape
        r = self.row_radius
        p_store, q_store = _band_stores(n, c, h, w, self.patch_size ** 2, r, a)
        self._fill(a, _store_rows(p_store, n, c, h + 2 * r, w, 0, h))
        self._fill(b, _store_rows(q_store, n, c, h + 2 * r, w, r, h))
        _band_product(p_store, q_store, n, c, h, w, r, out=out)

    def correlate_padded(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, C, H+2r, W, 2r+1, W) correlations; rows >= H are padding. Cheapest form for a consumer."""
        if a.dim() != 4 or a.shape != b.shape:
            raise ModelError(f"NormalizedCrossCorrelation: a and b must be equal (N, C, H, W) maps, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        n, c, h, w = a.shape
        r, size = self.row_radius, self.chunk_size
        if torch.jit.is_tracing():  # ONNX export: the paths below write into preallocated buffers
            return F.pad(self._correlate_traceable(a, b), (0, 0, 0, 0, 0, 0, 0, 2 * r))
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            chunks = [_BandCorrelation.apply(self.normalized_patches(a[i:i + size]),
                                             self.normalized_patches(b[i:i + size]), r) for i in range(0, n, size)]
            return chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        # Inference: chunks write straight into one output (no concatenation pass over the largest tensor).
        out = a.new_empty(n, c, h + 2 * r, w, 2 * r + 1, w)
        if self._native_forward(a, b, out):
            return out
        with torch.no_grad():
            for i in range(0, n, size):
                self._correlate_chunk(a[i:i + size], b[i:i + size], out[i:i + size])
        return out

    def _correlate_traceable(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W, 2r+1, W) correlations from exportable ops only (pad, fixed slices, pooling, einsum): the
        fast paths write into preallocated buffers, which a trace records wrongly."""
        r, h = self.row_radius, a.shape[2]
        p = self.normalized_patches(a)  # (kk, N, C, H, W)
        q = F.pad(self.normalized_patches(b), (0, 0, r, r))
        bands = torch.stack([q[..., d:d + h, :] for d in range(2 * r + 1)], -1)  # (kk, N, C, H, W, 2r+1)
        return torch.einsum("jncyx,jncyvd->ncyxdv", p, bands)

    def _native_forward(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> bool:
        """Fill `out` with the fused C kernel, split over torch's thread count; False when it does not apply."""
        library = native_library() if self.native and not torch.jit.is_tracing() else None
        if library is None or a.device.type != "cpu" or a.dtype != torch.float32 or b.dtype != torch.float32:
            return False
        a, b = a.detach().contiguous(), b.detach().contiguous()
        n, c, h, w = a.shape
        if n * c == 0 or h == 0 or w == 0:
            return True  # nothing to compute
        if out.numel() * out.element_size() >= 1 << 24:
            library.advise_huge_pages(out.data_ptr(), out.numel() * out.element_size())
        args = (a.data_ptr(), b.data_ptr(), out.data_ptr(), h, w, self.patch_size, self.row_radius, self.eps)
        run_split(lambda first, last: library.ncc_forward_blocks(*args, first, last), n * c,
                  "NormalizedCrossCorrelation")
        return True

    def correlate(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) x2 -> (N, C, H, W, 2r+1, W): [n, c, y, x, dy + r, x2] = ncc(A at (y, x), B at (y+dy, x2))."""
        return self.correlate_padded(a, b)[:, :, : a.shape[2]]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        corr = self.correlate(a, b)
        n, c, h, w, d, w2 = corr.shape
        return corr.permute(0, 1, 4, 5, 2, 3).reshape(n, c * d * w2, h, w)


class _FusedCorrelationSummary(torch.autograd.Function):
    """CorrelationSummary's pre-activation sums straight from the two (N, C, H, W) maps: patch normalisation,
    band correlation and the 1x1 summary in the C kernels ncc_summary_pairs / ncc_summary_backward_pairs
    (kernels.c), pairs split over torch's threads. Neither the normalised patches nor the correlations are written.

    weight_t: (C, T, opad) summary weights, T = (2r+1)*W candidates, zero-padded to opad outputs.
    Returns (N, H, W, opad).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, weight_t: torch.Tensor, ncc: NormalizedCrossCorrelation,
                outs: int, library) -> torch.Tensor:
        a, b, weight_t = a.detach().contiguous(), b.detach().contiguous(), weight_t.detach().contiguous()
        n, c, h, w = a.shape
        opad = weight_t.shape[2]
        out = a.new_empty(n, h, w, opad)
        args = (a.data_ptr(), b.data_ptr(), weight_t.data_ptr(), out.data_ptr(), c, h, w, ncc.patch_size,
                ncc.row_radius, ncc.eps, opad)
        run_split(lambda first, last: library.ncc_summary_pairs(*args, first, last), n, "NCC summary")
        ctx.save_for_backward(a, b, weight_t)
        ctx.ncc, ctx.outs, ctx.library = ncc, outs, library
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b, weight_t = ctx.saved_tensors
        n, c, h, w = a.shape
        candidates, opad = weight_t.shape[1:]
        ncc, outs = ctx.ncc, ctx.outs
        # (C, outs, 64): candidates padded to the kernel's 64-float correlation rows
        weight_tt = F.pad(weight_t[:, :, :outs].transpose(1, 2), (0, 64 - candidates)).contiguous()
        grad = grad.contiguous()
        grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)

        def run(first: int, last: int, grad_weight: int) -> int:
            return ctx.library.ncc_summary_backward_pairs(
                a.data_ptr(), b.data_ptr(), weight_tt.data_ptr(), grad.data_ptr(), grad_a.data_ptr(),
                grad_b.data_ptr(), grad_weight, c, h, w, ncc.patch_size, ncc.row_radius, ncc.eps, opad, outs,
                first, last)

        grad_weight_t = run_split_summed(run, n, tuple(weight_t.shape), "NCC summary backward")
        return grad_a, grad_b, grad_weight_t, None, None, None


class CorrelationSummary(nn.Module):
    """1x1 convolution of the C*(2r+1)*W correlation maps down to `out_channels`, then ReLU.

    Applied to `correlate_padded`'s layout directly (a per-channel batched matrix product summed over channels),
    which avoids transposing the large correlation tensor; the weights are those of `Conv2d(C*(2r+1)*W, out, 1)`
    applied to `NormalizedCrossCorrelation.forward`'s output.
    """

    def __init__(self, channels: int, candidates: int, out_channels: int = 25):
        super().__init__()
        self.channels, self.candidates = channels, candidates
        self.conv = nn.Conv2d(channels * candidates, out_channels, 1)

    def forward(self, corr_padded: torch.Tensor, height: int) -> torch.Tensor:
        """(N, C, H', W, ...) correlations with rows >= `height` ignored -> (N, out, height, W)."""
        n, c, hp, w = corr_padded.shape[:4]
        weight = self.conv.weight.view(-1, c, self.candidates).permute(1, 2, 0)  # (C, candidates, out)
        out = torch.matmul(corr_padded.reshape(n, c, hp * w, self.candidates), weight).sum(1)  # (N, H'*W, out)
        out = F.relu(out + self.conv.bias).view(n, hp, w, -1)[:, :height]
        return out.permute(0, 3, 1, 2)

    def fused(self, ncc: NormalizedCrossCorrelation, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
        """forward(ncc.correlate_padded(a, b), H) computed by the fused C kernels (CPU float32, with autograd);
        None where they do not apply (no compiler, other device/dtype, tracing, sizes past the kernel's limits:
        (2r+1)*W > 64 candidates, patches over 32 values, over 32 outputs)."""
        library = native_library() if ncc.native and not torch.jit.is_tracing() else None
        outs = self.conv.out_channels
        if (library is None or a.device.type != "cpu" or a.dtype != torch.float32 or b.dtype != torch.float32
                or outs > 32 or ncc.patch_size ** 2 > 32 or self.candidates > 64 or a.shape[0] == 0):
            return None
        opad = 16 if outs <= 16 else 32
        weight_t = F.pad(self.conv.weight.view(outs, self.channels, self.candidates).permute(1, 2, 0),
                         (0, opad - outs))
        sums = _FusedCorrelationSummary.apply(a, b, weight_t, ncc, outs, library)
        return F.relu(sums[..., :outs] + self.conv.bias).permute(0, 3, 1, 2)


class IDLANCC(PairNetwork):
    """IDLA's tied trunk with the NCC matching layer in place of (mode='replace') or beside (mode='beside') the
    cross-input neighbourhood differences.

    NCC branch: correlation maps (one direction: ncc is symmetric, so B->A holds the same numbers) -> 1x1 conv
    to 25 maps + ReLU -> across-patch 3x3 conv + max-pool -> flattened into the 500-unit layer.
    """

    def __init__(self, input_size: Sequence[int] = PAPER_INPUT_SIZE, mode: str = "replace", dropout: float = 0.5,
                 row_radius: int = 2, channels_last: bool = True, hidden: int = 500, batchnorm: bool = False):
        super().__init__()
        if mode not in NCC_MODES:
            raise ModelError(f"mode={mode!r}: expected one of {NCC_MODES}")
        self.input_size = as_input_size(input_size)
        self.mode = mode
        self.trunk = TiedTrunk(channels_last=channels_last, batchnorm=batchnorm)
        channels = self.trunk.conv2.out_channels
        map_size = trunk_output_size(self.input_size)
        self.ncc = NormalizedCrossCorrelation(5, row_radius)
        self.ncc_summary = CorrelationSummary(channels, (2 * row_radius + 1) * map_size[1], 25)
        self.ncc_across = AcrossPatch(25, 25)
        mh, mw = AcrossPatch.output_size(map_size)
        num_features = 25 * mh * mw
        self.differences = DifferenceBranches(channels, map_size) if mode == "beside" else None
        if self.differences is not None:
            num_features += self.differences.num_features
        self.head = pair_head(num_features, hidden, dropout)
        self.reset_parameters()

    # NCC branch by the fused C kernels where they apply (CorrelationSummary.fused); False: the correlation tensor
    # is built and then summarised (benchmarks compare the two)
    fuse_summary = True

    @property
    def pair_chunk(self) -> int:
        """As IDLA's; without the fused summary the correlation tensor (~3 MB per pair) asks for small chunks."""
        return PairNetwork.pair_chunk.fget(self) if self.fuse_summary else 32

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)

    def pair_layers(self, feats1: torch.Tensor, feats2: torch.Tensor) -> torch.Tensor:
        summary = self.ncc_summary.fused(self.ncc, feats1, feats2) if self.fuse_summary else None
        if summary is None:
            summary = self.ncc_summary(self.ncc.correlate_padded(feats1, feats2), feats1.shape[2])
        features = [self.ncc_across(summary).flatten(1)]
        if self.differences is not None:
            features.insert(0, self.differences(feats1, feats2))
        return self.head(torch.cat(features, 1))


@register_model("idla_ncc", task="pair", options=("batchnorm", "mode", "row_radius"))
def build_idla_ncc(input_size: Sequence[int] = PAPER_INPUT_SIZE, mode: str = "replace", dropout: float = 0.5,
                   row_radius: int = 2, channels_last: bool = True, batchnorm: bool = False,
                   **unused: object) -> IDLANCC:
    """IDLA with the NCC matching layer (Subramaniam et al. 2016); batchnorm=True as for `idla`."""
    if unused:
        raise ModelError(f"model 'idla_ncc': unknown option(s) {sorted(unused)}; valid: input_size, mode, dropout, "
                         "row_radius, channels_last, batchnorm")
    return IDLANCC(input_size=input_size, mode=mode, dropout=dropout, row_radius=row_radius,
                   channels_last=channels_last, batchnorm=batchnorm)
