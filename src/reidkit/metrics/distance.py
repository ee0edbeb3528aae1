"""Query x gallery distance matrices, computed in row chunks so huge galleries fit in memory."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .rank import MetricInputError

METRICS = ("euclidean", "sqeuclidean", "l2", "cosine")


def compute_distance_matrix(input1, input2, metric: str = "euclidean", chunk_size: int = 4096):
    """Distances between the rows of `input1` (m, d) and `input2` (n, d); returns (m, n) of the input's type.

    Metrics:
        "euclidean": SQUARED Euclidean distance, exactly like torchreid's `compute_distance_matrix`
            (`euclidean_squared_distance`, not clamped, so values near 0 may be slightly negative).
        "sqeuclidean": the same, under its explicit name.
        "l2": the true Euclidean distance (square root of the above, clamped at 0). Same ranking as
            "euclidean"; use it when the values themselves matter (thresholds, plots).
        "cosine": 1 - cosine similarity of the L2-normalised rows, in 0..2.

    numpy inputs give a numpy array, torch inputs a tensor (on the inputs' device). The dtype follows the
    inputs (float32 stays float32; integers become float32). Rows of `input1` are processed `chunk_size` at a
    time so the temporary storage stays O(chunk_size * n).
    """
    if metric not in METRICS:
        raise MetricInputError(f"metric: unknown distance {metric!r}; choose one of {', '.join(METRICS)}")
    if int(chunk_size) < 1:
        raise MetricInputError(f"chunk_size: must be at least 1, got {chunk_size}")
    return_numpy = not isinstance(input1, torch.Tensor)
    a, b = _as_feature_tensor(input1, "input1"), _as_feature_tensor(input2, "input2")
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"input1/input2: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(a.device, dtype)
    if metric == "cosine":
        a, b = F.normalize(a, p=2, dim=1), F.normalize(b, p=2, dim=1)
    out = torch.empty(a.shape[0], b.shape[0], dtype=dtype, device=a.device)
    b_squared = b.pow(2).sum(dim=1)
    with torch.no_grad():
        for start in range(0, a.shape[0], chunk_size):
            rows = a[start:start + chunk_size]
            out[start:start + chunk_size] = _block(rows, b, b_squared, metric)
    return out.cpu().numpy() if return_numpy else out


def _block(rows: torch.Tensor, b: torch.Tensor, b_squared: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return 1 - rows @ b.t()
    # torchreid's formula and operation order: |a|^2 + |b|^2 - 2 a.b via addmm.
    squared = torch.addmm(rows.pow(2).sum(dim=1, keepdim=True) + b_squared[None, :], rows, b.t(),
                          beta=1, alpha=-2)
    return squared.clamp_(min=0).sqrt_() if metric == "l2" else squared


def _as_feature_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.from_numpy(np.ascontiguousarray(value))
        except (TypeError, ValueError) as exc:
            raise MetricInputError(f"{name}: cannot be read as a numeric array ({exc})") from exc
    if tensor.dim() != 2:
        raise MetricInputError(f"{name}: expected a 2-D (num_items, feature_dim) matrix, got shape "
                               f"{tuple(tensor.shape)}")
    if not torch.is_floating_point(tensor):
        tensor = tensor.float()
    return tensor
