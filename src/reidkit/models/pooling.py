"""Global pooling of a feature map (N,C,h,w) -> (N,C): average, max, or generalised mean (GeM).

GeM (Radenović et al., "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018):
    f_c = ( mean_{h,w} x_c^p )^(1/p),  p = 1 is average pooling, p -> inf approaches max pooling.

R-MAC (Tolias, Sicre, Jégou, "Particular object retrieval with integral max-pooling of CNN activations", ICLR 2016):
    square regions on L scales (side floor(2 min(H, W) / (l + 1)) at level l, about 40 % overlap along the long
    side), the max of each channel in each region, each region vector L2-normalised, summed, L2-normalised again.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError

POOLINGS = ("avg", "max", "gem", "rmac")


class GeM(nn.Module):
    """Generalised-mean pooling with a (by default learnable) exponent p shared by all channels.

    Inputs are clamped at `eps` first: x^p needs x > 0 (fractional p) and the backward pass of x^(1/p)
    is infinite at 0.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        if p <= 0:
            raise ModelError(f"GeM: p={p!r}; expected p > 0")
        initial = torch.full((1,), float(p))
        if learnable:
            self.p = nn.Parameter(initial)
        else:
            self.register_buffer("p", initial)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, eps={self.eps}, learnable={isinstance(self.p, nn.Parameter)}"


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1))


@lru_cache(maxsize=64)
def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> tuple[tuple[int, int, int], ...]:
    """R-MAC regions (top, left, side) of a height x width map, 0-based, as Tolias et al.'s rmac_regions.m.

    The number of extra regions along the long side (1..6 more) is the one whose overlap of two neighbouring
    level-1 squares comes closest to `overlap`; level l has squares of side floor(2 w / (l + 1)), w = min(H, W),
    spread evenly (floored start positions) over each side. A few regions per map size: computed once, cached.
    """
    short = min(height, width)
    extra_w = extra_h = 0
    if height != width:
        steps = torch.arange(2, 8, dtype=torch.float64)
        step = (max(height, width) - short) / (steps - 1)
        best = int(torch.argmin(torch.abs((short ** 2 - short * step) / short ** 2 - overlap))) + 1
        extra_w, extra_h = (best, 0) if height < width else (0, best)
    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        half = math.floor(side / 2 - 1)
        starts = []
        for size, extra in ((height, extra_h), (width, extra_w)):
            count = level + extra
            step = (size - side) / (count - 1) if count > 1 else 0.0
            starts.append([math.floor(half + i * step) - half for i in range(count)])
        regions += [(top, left, side) for top in starts[0] for left in starts[1]]
    return tuple(regions)


class RMAC(nn.Module):
    """Regional maximum activations of convolutions: sum of the L2-normalised max-pooled vectors of the
    `rmac_regions` grid, L2-normalised. Regions of one level share a side, so one max_pool2d (stride 1) per level
    gives every candidate window and the region starts pick from it."""

    def __init__(self, levels: int = 3, eps: float = 1e-6):
        super().__init__()
        if levels < 1:
            raise ModelError(f"R-MAC: levels={levels!r}; expected >= 1")
        self.levels, self.eps = levels, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        by_side: dict[int, list[tuple[int, int]]] = {}
        for top, left, side in rmac_regions(x.shape[-2], x.shape[-1], self.levels):
            by_side.setdefault(side, []).append((top, left))
        total = x.new_zeros(x.shape[:-2])
        for side, starts in by_side.items():
            windows = F.max_pool2d(x, kernel_size=side, stride=1)  # (N, C, H - side + 1, W - side + 1)
            tops, lefts = (torch.tensor(v, device=x.device) for v in zip(*starts, strict=True))
            regional = windows[:, :, tops, lefts]  # (N, C, regions)
            total = total + (regional / (regional.norm(dim=1, keepdim=True) + self.eps)).sum(dim=2)
        return total / (total.norm(dim=1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


def build_pooling(name: str, *, gem_p: float = 3.0, gem_learnable: bool = True) -> nn.Module:
    if name == "avg":
        return GlobalAvgPool()
    if name == "max":
        return GlobalMaxPool()
    if name == "gem":
        return GeM(p=gem_p, learnable=gem_learnable)
    if name == "rmac":
        return RMAC()
    raise ModelError(f"pooling={name!r}: unknown; expected one of {', '.join(POOLINGS)}")
