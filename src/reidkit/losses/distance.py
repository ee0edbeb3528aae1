"""The one differentiable batch distance used by every loss and miner.

(reidkit.metrics.distance is the numpy/chunked one for evaluation; this one keeps the autograd graph.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, TrainingError

METRICS = ("euclidean", "sqeuclidean", "cosine")

# Squared distances are clamped to at least this before the sqrt: d sqrt(s)/ds = 1/(2 sqrt(s)) is infinite
# at s = 0 (an embedding against itself), and the clamp turns that into a zero gradient instead of NaN.
SQRT_CLAMP = 1e-12


def check_metric(metric: str, where: str = "metric") -> str:
    """Return `metric` if known, else raise a ConfigError naming `where` and the valid choices."""
    if metric not in METRICS:
        raise ConfigError(f"{where}: unknown distance {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def _check_embeddings(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise TrainingError(f"pairwise_distance: {name} must be a 2-D (batch, dim) tensor, got {shape}")
    if not x.is_floating_point():
        raise TrainingError(f"pairwise_distance: {name} must be floating point, got {x.dtype}")


def pairwise_distance(x: Tensor, y: Tensor | None = None, metric: str = "euclidean") -> Tensor:
    """Distance matrix D[i, j] = d(x_i, y_j) of shape (len(x), len(y)); `y` defaults to `x`.

    Against itself (y None or x) the diagonal is exactly 0. Computed in float32 or wider, even under autocast.

    metric: "euclidean" (sqrt of the clamped squared distance), "sqeuclidean" (||x - y||^2) or
    "cosine" (1 - cos(x, y), in [0, 2]).
    """
    check_metric(metric, "pairwise_distance.metric")
    self_distance = y is None or y is x
    y = x if y is None else y
    _check_embeddings(x, "x")
    _check_embeddings(y, "y")
    if x.shape[1] != y.shape[1]:
        raise TrainingError(f"pairwise_distance: x has dim {x.shape[1]} but y has dim {y.shape[1]}")
    # ||x||^2 + ||y||^2 - 2 x.y cancels catastrophically in half precision: compute in at least float32,
    # also under autocast (which would otherwise run the matmul in float16/bfloat16).
    with torch.autocast(device_type=x.device.type, enabled=False):
        dist = _distance(_at_least_float32(x), _at_least_float32(y), metric)
    if self_distance:  # d(x_i, x_i) is 0, not sqrt of the expansion's rounding noise
        dist = dist.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)
    return dist


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _distance(x: Tensor, y: Tensor, metric: str) -> Tensor:
    if metric == "cosine":
        return 1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    # ||x||^2 + ||y||^2 - 2 x.y: one matmul instead of a (n, m, dim) difference tensor.
    squared = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * (x @ y.T)
    if metric == "sqeuclidean":
        return squared.clamp(min=0.0)
    return squared.clamp(min=SQRT_CLAMP).sqrt()
