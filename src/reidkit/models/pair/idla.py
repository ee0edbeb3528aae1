"""IDLA: the Siamese pair network of Ahmed, Jones & Marks, "An Improved Deep Learning Architecture for Person
Re-Identification" (CVPR 2015).

Layers, for 160x60 RGB inputs (shapes are derived from `input_size`, so other sizes work too):
  tied convolutions (same weights for both views): 20 x 5x5 -> ReLU -> max-pool 2 -> 25 x 5x5 -> ReLU -> max-pool 2
                                                    gives 25 x 37 x 12 feature maps f (view 1) and g (view 2)
  cross-input neighbourhood differences: K[c, y, x, (dy, dx)] = f[c, y, x] - g[c, y+dy, x+dx] over a 5x5
      neighbourhood (zero padding outside the map), and K' with the views swapped; then ReLU
  patch summary: 25 filters 5x5 stride 5 over the (5*37) x (5*12) map that lays each 5x5 block next to its
      neighbours -> ReLU -> 25 x 37 x 12 (separate weights for K and K')
  across-patch: 25 filters 3x3 -> ReLU -> max-pool 2 (ceil) -> 25 x 18 x 5 (separate weights for K and K')
  fully connected 500 -> ReLU -> dropout -> 2 logits (index 1 = "same person")

Nothing loops over positions. The differences are 25 whole-tensor subtractions of shifted views of the padded
map, written straight into a (C*25, N*H*W) matrix; the stride-5 patch summary convolution over the expanded map
is then one matrix product with the flattened filters, because each stride-5 window covers exactly one 5x5
neighbourhood block. That layout avoids im2col buffers and transposes of the largest tensor of the network,
which made the first (unfold-based) version 2-3x slower on CPU (docs/pair_networks.md).

The contract every pair model shares (`PairNetwork`, `pair_head`, `check_images`) is in models/pair/base.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import ModelError
from ..registry import register_model
from .base import IMAGENET_MEAN, IMAGENET_STD, PairNetwork, check_images, pair_head  # noqa: F401  (old imports)
from .native import native_library, run_split, run_split_summed

PAPER_INPUT_SIZE = (160, 60)


class _NeighbourhoodDifferencesReLU(torch.autograd.Function):
    """ReLU(f - g's shifted neighbourhoods), written straight into the layout the patch summary multiplies.

    Output (C * size * size, N * H * W): row c * size*size + k, column (n, y, x). Built from `size*size` shifted
    views of the zero-padded g (a loop over offsets, each a whole-tensor subtraction), so no im2col buffer and no
    transposes; the hand-written backward reuses the saved output as the ReLU mask.
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, g: torch.Tensor, size: int) -> torch.Tensor:
        n, c, h, w = f.shape
        half = size // 2
        f_cn = f.transpose(0, 1)
        g_padded = F.pad(g.transpose(0, 1), (half, half, half, half))  # (C, N, H+2h, W+2h)
        out = torch.empty(c, size * size, n, h, w, dtype=f.dtype, device=f.device)
        for k in range(size * size):
            dy, dx = divmod(k, size)
            torch.sub(f_cn, g_padded[:, :, dy:dy + h, dx:dx + w], out=out[:, k])
        out.relu_()
        ctx.save_for_backward(out)
        ctx.size = size
        return out.view(c * size * size, n * h * w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        (out,) = ctx.saved_tensors
        size, half = ctx.size, ctx.size // 2
        c, kk, n, h, w = out.shape
        masked = torch.ops.aten.threshold_backward(grad.view_as(out), out, 0)  # ReLU backward, one pass
        grad_f = masked.sum(1).transpose(0, 1)
        grad_g = torch.zeros(c, n, h + 2 * half, w + 2 * half, dtype=grad.dtype, device=grad.device)
        for k in range(kk):
            dy, dx = divmod(k, size)
            grad_g[:, :, dy:dy + h, dx:dx + w] -= masked[:, k]
        return grad_f, grad_g[:, :, half:half + h, half:half + w].transpose(0, 1), None


def neighbourhood_differences(f: torch.Tensor, g: torch.Tensor, size: int = 5) -> torch.Tensor:
    """ReLU(K) with K[c, k, n, y, x] = f[n, c, y, x] - g[n, c, y + dy_k, x + dx_k], shaped (C*size*size, N*H*W).

    k = (dy + size//2) * size + (dx + size//2); g is zero outside its map (the usual 'same' padding).
    """
    if f.dim() != 4 or f.shape != g.shape:
        raise ModelError(f"neighbourhood_differences: f and g must be equal 4-D maps, got {tuple(f.shape)} "
                         f"and {tuple(g.shape)}")
    if size < 1 or size % 2 == 0:
        raise ModelError(f"neighbourhood size={size}: must be a positive odd number")
    if torch.jit.is_tracing():
        return _neighbourhood_differences_traceable(f, g, size)
    return _NeighbourhoodDifferencesReLU.apply(f, g, size)


def _neighbourhood_differences_traceable(f: torch.Tensor, g: torch.Tensor, size: int) -> torch.Tensor:
    """The same numbers from plain slices, subtractions and one concatenation: what ONNX export records
    (the fast path writes into preallocated slices, which traces into scatter operations)."""
    n, c, h, w = f.shape
    half = size // 2
    f_cn = f.transpose(0, 1).unsqueeze(1)
    g_padded = F.pad(g.transpose(0, 1), (half, half, half, half))
    shifted = torch.stack([g_padded[:, :, dy:dy + h, dx:dx + w] for dy in range(size) for dx in range(size)], 1)
    return (f_cn - shifted).relu().reshape(c * size * size, n * h * w)


def conv_output_size(size: int, kernel: int, stride: int = 1, ceil: bool = False) -> int:
    steps = (size - kernel) / stride
    return (math.ceil(steps) if ceil else math.floor(steps)) + 1


def trunk_output_size(input_size: Sequence[int]) -> tuple[int, int]:
    """(H, W) of the tied-convolution features: conv5 -> pool2 -> conv5 -> pool2 (160x60 -> 37x12)."""
    out = []
    for side in input_size:
        side = conv_output_size(side, 5) // 2
        out.append(conv_output_size(side, 5) // 2)
    return out[0], out[1]


def as_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    size = tuple(int(s) for s in input_size)
    if len(size) != 2 or min(trunk_output_size(size)) < 1:
        raise ModelError(f"input_size={input_size!r}: expected (height, width) of at least 16 x 16")
    return size  # type: ignore[return-value]


class TiedTrunk(nn.Module):
    """The two tied convolution layers; one module applied to both views, so the weights are shared."""

    def __init__(self, channels: tuple[int, int] = (20, 25), channels_last: bool = True, batchnorm: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels[0], 5, bias=not batchnorm)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5, bias=not batchnorm)
        # Not in the paper (2015): BatchNorm after each convolution, an option for faster from-scratch training.
        self.norm1 = nn.BatchNorm2d(channels[0]) if batchnorm else nn.Identity()
        self.norm2 = nn.BatchNorm2d(channels[1]) if batchnorm else nn.Identity()
        # oneDNN runs these convolutions about twice as fast in NHWC on CPU (docs/benchmarks/pairnets.md).
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # max-pool before ReLU: the same result (both are monotone) on a quarter of the values. BatchNorm goes
        # before the pool: with a negative scale it is not monotone increasing.
        x = F.relu(F.max_pool2d(self.norm1(self.conv1(x)), 2))
        x = F.relu(F.max_pool2d(self.norm2(self.conv2(x)), 2))
        return x.contiguous()


class AcrossPatch(nn.Module):
    """25 filters 3x3 -> ReLU -> max-pool 2x2 (ceil mode, so 37x12 maps give the paper's 18x5 after 35x10)."""

    def __init__(self, in_channels: int, out_channels: int = 25):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv(x)), 2, ceil_mode=True)

    @staticmethod
    def output_size(map_size: tuple[int, int]) -> tuple[int, int]:
        h, w = (conv_output_size(s, 3) for s in map_size)
        return conv_output_size(h, 2, 2, ceil=True), conv_output_size(w, 2, 2, ceil=True)


class _FusedSummary(torch.autograd.Function):
    """PatchSummary(neighbourhood_differences(f, g)) with the C kernels of kernels.c (idla_summary_pairs and its
    backward), pairs split over torch's thread count."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, g: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                library) -> torch.Tensor:
        f, g = f.detach().contiguous(), g.detach().contiguous()
        n, c, h, w = f.shape
        size = weight.shape[-1]
        weight_t = weight.detach().reshape(25, -1).t().contiguous()  # (C*size*size, 25)
        bias_c = bias.detach().contiguous()
        out = f.new_empty(n, 25, h, w)
        args = (f.data_ptr(), g.data_ptr(), weight_t.data_ptr(), bias_c.data_ptr(), out.data_ptr(), c, h, w, size)
        run_split(lambda first, last: library.idla_summary_pairs(*args, first, last), n, "IDLA patch summary")
        ctx.save_for_backward(f, g, weight_t, out)
        ctx.library, ctx.size = library, size
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        f, g, weight_t, out = ctx.saved_tensors
        n, c, h, w = f.shape
        gz = (grad * (out > 0)).contiguous()  # through the output ReLU
        grad_f, grad_g = torch.empty_like(f), torch.empty_like(g)

        def run(first: int, last: int, grad_weight_t: int) -> int:
            return ctx.library.idla_summary_backward_pairs(
                f.data_ptr(), g.data_ptr(), weight_t.data_ptr(), gz.data_ptr(), grad_f.data_ptr(), grad_g.data_ptr(),
                grad_weight_t, c, h, w, ctx.size, first, last)

        grad_weight_t = run_split_summed(run, n, tuple(weight_t.shape), "IDLA patch summary backward")
        grad_weight = grad_weight_t.t().reshape(25, c, ctx.size, ctx.size)
        return grad_f, grad_g, grad_weight, gz.sum((0, 2, 3)), None


class PatchSummary(nn.Module):
    """25 filters 5x5 stride 5 over a neighbourhood-difference map, computed without building the expanded map.

    The weights are an ordinary `Conv2d(C, out, 5, stride=5)`: applied to the (5H x 5W) map whose 5x5 block at
    (y, x) holds K[:, :, y, x], it gives exactly this module's output. Here it is one matrix product with the
    (C*25, N*H*W) differences, since each stride-5 window covers exactly one neighbourhood block.
    """

    def __init__(self, in_channels: int, out_channels: int = 25, size: int = 5, native: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, size, stride=size)
        # On CPU float32 (inference and training) the differences are fused into this product in C (native.py).
        self.native = native

    def fused(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        """ReLU(summary(neighbourhood_differences(f, g))) as (N, out, H, W) by the fused C kernels (forward and
        backward), which never build the (C*25, N*H*W) difference matrix; None where they do not apply (tracing,
        not CPU float32, no compiler, other than 25 filters)."""
        if (not self.native or torch.jit.is_tracing() or f.device.type != "cpu" or f.dtype != torch.float32
                or g.dtype != torch.float32 or self.conv.weight.dtype != torch.float32
                or self.conv.out_channels != 25):
            return None
        library = native_library()
        if library is None:
            return None
        return _FusedSummary.apply(f, g, self.conv.weight, self.conv.bias, library)

    def forward(self, diffs: torch.Tensor, map_shape: tuple[int, int, int]) -> torch.Tensor:
        """`neighbourhood_differences` output + (N, H, W) -> ReLU(summary) as (N, out, H, W)."""
        n, h, w = map_shape
        weight = self.conv.weight.reshape(self.conv.out_channels, -1)  # (c, ky, kx) order = the rows of diffs
        out = torch.addmm(self.conv.bias.unsqueeze(1), weight, diffs)  # (out, N*H*W)
        return F.relu(out).view(-1, n, h, w).transpose(0, 1)


class DifferenceBranches(nn.Module):
    """K and K' (both directions), each through its own patch-summary and across-patch layers, flattened."""

    def __init__(self, channels: int, map_size: tuple[int, int], neighbourhood: int = 5, width: int = 25,
                 native: bool = True):
        super().__init__()
        self.neighbourhood = neighbourhood
        self.summary_k = PatchSummary(channels, width, neighbourhood, native)
        self.summary_k_prime = PatchSummary(channels, width, neighbourhood, native)
        self.across_k = AcrossPatch(width, width)
        self.across_k_prime = AcrossPatch(width, width)
        mh, mw = AcrossPatch.output_size(map_size)
        self.num_features = 2 * width * mh * mw

    def branch(self, a: torch.Tensor, b: torch.Tensor, summary: PatchSummary, across: AcrossPatch) -> torch.Tensor:
        summarised = summary.fused(a, b) if a.shape == b.shape and a.dim() == 4 else None
        if summarised is None:
            diffs = neighbourhood_differences(a, b, self.neighbourhood)
            n, _, h, w = a.shape
            summarised = summary(diffs, (n, h, w))
        return across(summarised).flatten(1)

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch(f, g, self.summary_k, self.across_k),
                          self.branch(g, f, self.summary_k_prime, self.across_k_prime)], 1)


class IDLA(PairNetwork):
    """The CVPR 2015 architecture; see the module docstring for the layer list."""

    def __init__(self, input_size: Sequence[int] = PAPER_INPUT_SIZE, dropout: float = 0.5,
                 channels_last: bool = True, hidden: int = 500, native: bool = True, batchnorm: bool = False):
        super().__init__()
        self.input_size = as_input_size(input_size)
        self.trunk = TiedTrunk(channels_last=channels_last, batchnorm=batchnorm)
        self.differences = DifferenceBranches(self.trunk.conv2.out_channels, trunk_output_size(self.input_size),
                                              native=native)
        self.head = pair_head(self.differences.num_features, hidden, dropout)
        self.reset_parameters()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)

    def pair_layers(self, feats1: torch.Tensor, feats2: torch.Tensor) -> torch.Tensor:
        return self.head(self.differences(feats1, feats2))


@register_model("idla", task="pair", options=("batchnorm",))
def build_idla(input_size: Sequence[int] = PAPER_INPUT_SIZE, dropout: float = 0.5, channels_last: bool = True,
               native: bool = True, batchnorm: bool = False, **unused: object) -> IDLA:
    """IDLA (Ahmed et al. 2015). Unknown keyword arguments are rejected with a ModelError. native=False keeps
    the PyTorch path (otherwise the fused C kernels run on CPU float32 when they build); batchnorm=True adds
    BatchNorm to the tied convolutions (not in the paper)."""
    if unused:
        raise ModelError(f"model 'idla': unknown option(s) {sorted(unused)}; valid: input_size, dropout, "
                         "channels_last, native, batchnorm")
    return IDLA(input_size=input_size, dropout=dropout, channels_last=channels_last, native=native,
                batchnorm=batchnorm)
