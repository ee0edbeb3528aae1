"""Global pooling of a feature map (N,C,h,w) -> (N,C): average, max, or generalised mean (GeM).

GeM (Radenović et al., "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018):
    f_c = ( mean_{h,w} x_c^p )^(1/p),  p = 1 is average pooling, p -> inf approaches max pooling.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ModelError

POOLINGS = ("avg", "max", "gem")


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


def build_pooling(name: str, *, gem_p: float = 3.0, gem_learnable: bool = True) -> nn.Module:
    if name == "avg":
        return GlobalAvgPool()
    if name == "max":
        return GlobalMaxPool()
    if name == "gem":
        return GeM(p=gem_p, learnable=gem_learnable)
    raise ModelError(f"pooling={name!r}: unknown; expected one of {', '.join(POOLINGS)}")
