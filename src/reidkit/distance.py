"""The one distance vocabulary of reidkit, used by losses, miners, metrics and re-ranking.

    "euclidean"    true L2 distance ||x - y||                       (in [0, inf))
    "sqeuclidean"  squared L2 distance ||x - y||^2                  (in [0, inf); torchreid's "euclidean")
    "cosine"       1 - cos(x, y); the rows are L2-normalised here,  (in [0, 2])
                   so raw (un-normalised) features are fine

Both squared forms are computed as |x|^2 + |y|^2 - 2 x.y (one matrix product instead of a (n, m, dim)
difference tensor) and clamped at 0, so rounding never gives a negative distance.

Two entry points share that arithmetic:
- `pairwise_distance(x, y, metric)`: differentiable, torch in / torch out, for losses and miners;
- `compute_distance_matrix(a, b, metric)`: evaluation (no autograd), numpy or torch in -> the same type out,
  computed in row chunks so large galleries fit in memory.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, MetricInputError, TrainingError

METRICS = ("euclidean", "sqeuclidean", "cosine")

# Squared distances are clamped to at least this before the sqrt: d sqrt(s)/ds = 1/(2 sqrt(s)) is infinite
# at s = 0 (an embedding against itself), and the clamp turns that into a zero gradient instead of NaN.
SQRT_CLAMP = 1e-12


def check_metric(metric: str, where: str = "metric", error: type[Exception] = ConfigError) -> str:
    """Return `metric` if it is one of METRICS, else raise `error` naming `where` and the valid choices."""
    if metric not in METRICS:
        raise error(f"{where}: unknown distance {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def _distance(x: Tensor, y: Tensor, metric: str) -> Tensor:
    """(len(x), len(y)) distances; x and y already share dtype and device."""
    if metric == "cosine":
        return 1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    # torchreid's operation order (addmm), so "sqeuclidean" reproduces its evaluation figures.
    squared = torch.addmm(x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0), x, y.T, beta=1, alpha=-2)
    # In place: addmm's backward does not need its output, so autograd allows it and no (n, m) copy is made.
    if metric == "sqeuclidean":
        return squared.clamp_(min=0.0)
    return squared.clamp_(min=SQRT_CLAMP).sqrt_()


# ------------------------------------------------------------------------------- differentiable (training)

def _check_embeddings(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise TrainingError(f"pairwise_distance: {name} must be a 2-D (batch, dim) tensor, got {shape}")
    if not x.is_floating_point():
        raise TrainingError(f"pairwise_distance: {name} must be floating point, got {x.dtype}")


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def pairwise_distance(x: Tensor, y: Tensor | None = None, metric: str = "euclidean") -> Tensor:
    """Differentiable distance matrix D[i, j] = d(x_i, y_j) of shape (len(x), len(y)); `y` defaults to `x`.

    Against itself (y None or x) the diagonal is exactly 0. Computed in float32 or wider, even under autocast.
    """
    check_metric(metric, "pairwise_distance.metric")
    self_distance = y is None or y is x
    y = x if y is None else y
    _check_embeddings(x, "x")
    _check_embeddings(y, "y")
    if x.shape[1] != y.shape[1]:
        raise TrainingError(f"pairwise_distance: x has dim {x.shape[1]} but y has dim {y.shape[1]}")
    # |x|^2 + |y|^2 - 2 x.y cancels catastrophically in half precision: compute in at least float32,
    # also under autocast (which would otherwise run the matmul in float16/bfloat16).
    with torch.autocast(device_type=x.device.type, enabled=False):
        x32, y32 = _at_least_float32(x), _at_least_float32(y)
        dist = _distance(x32, y32.to(x32.dtype), metric)
    if self_distance:  # d(x_i, x_i) is 0, not sqrt of the expansion's rounding noise
        dist = dist.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), 0.0)
    return dist


# ------------------------------------------------------------------------------------ evaluation (no grad)

def compute_distance_matrix(input1, input2, metric: str = "euclidean", chunk_size: int = 4096):
    """Distances between the rows of `input1` (m, d) and `input2` (n, d); returns (m, n) of the input's type.

    numpy inputs give a numpy array, torch inputs a tensor (on input1's device). The dtype follows the inputs
    (float32 stays float32; integers become float32). Rows of `input1` are processed `chunk_size` at a time
    so the temporary storage stays O(chunk_size * n). Raises MetricInputError on bad input.
    """
    check_metric(metric, "metric", MetricInputError)
    if int(chunk_size) < 1:
        raise MetricInputError(f"chunk_size: must be at least 1, got {chunk_size}")
    return_numpy = not isinstance(input1, torch.Tensor)
    a, b = _as_feature_tensor(input1, "input1"), _as_feature_tensor(input2, "input2")
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"input1/input2: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(a.device, dtype)
    out = torch.empty(a.shape[0], b.shape[0], dtype=dtype, device=a.device)
    with torch.no_grad():
        for start in range(0, a.shape[0], chunk_size):
            out[start:start + chunk_size] = _distance(a[start:start + chunk_size], b, metric)
    return out.cpu().numpy() if return_numpy else out


def _as_feature_tensor(value, name: str) -> Tensor:
    if isinstance(value, Tensor):
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


# ------------------------------------------------------------------------------------ set-to-set (tracklets)

SET_DISTANCES = ("mean", "min")


def _check_offsets(offsets, num_rows: int, name: str) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64).ravel()
    if offsets.size < 2 or offsets[0] != 0 or offsets[-1] != num_rows:
        raise MetricInputError(f"{name}: offsets must run from 0 to the {num_rows} rows, got "
                               f"{offsets[:3].tolist()}...{offsets[-1:].tolist()}")
    empty = np.flatnonzero(np.diff(offsets) < 1)
    if empty.size:
        raise MetricInputError(f"{name}: set {int(empty[0])} is empty (every tracklet needs at least one frame)")
    return offsets


def _chunks(offsets: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """(first set, end set) runs whose rows total at most `max_rows` (a larger single set is its own chunk)."""
    out, start = [], 0
    while start < len(offsets) - 1:
        end = int(np.searchsorted(offsets, offsets[start] + max_rows, side="right")) - 1
        end = max(end, start + 1)
        out.append((start, end))
        start = end
    return out


def set_distance_matrix(input1, offsets1, input2, offsets2, mode: str = "mean", metric: str = "cosine",
                        max_elements: int = 1 << 24) -> np.ndarray:
    """(M1, M2) distances between sets of rows: set i of `input1` is rows offsets1[i]:offsets1[i+1].

    mode "mean": the distance between the sets' mean rows (the mean feature of a tracklet);
    mode "min": the smallest distance over all pairs of rows (the closest pair of frames).
    "min" is computed in blocks of about `max_elements` row pairs aligned to set boundaries, each reduced with
    np.minimum.reduceat, so memory stays bounded for MARS-sized galleries. Returns numpy float.
    """
    if mode not in SET_DISTANCES:
        raise MetricInputError(f"set distance {mode!r}: expected one of {', '.join(SET_DISTANCES)}")
    check_metric(metric, "metric", MetricInputError)
    a, b = _as_feature_tensor(input1, "input1"), _as_feature_tensor(input2, "input2")
    o1, o2 = _check_offsets(offsets1, len(a), "offsets1"), _check_offsets(offsets2, len(b), "offsets2")
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"input1/input2: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    if mode == "mean":
        return compute_distance_matrix(_segment_means(a, o1), _segment_means(b, o2), metric).numpy()
    out = np.empty((len(o1) - 1, len(o2) - 1), dtype=np.float64 if dtype == torch.float64 else np.float32)
    rows_b = max(1, int(np.sqrt(max_elements)))
    with torch.no_grad():
        for g0, g1 in _chunks(o2, rows_b):
            block_b = b[o2[g0]:o2[g1]]
            rows_a = max(1, max_elements // max(1, len(block_b)))
            for q0, q1 in _chunks(o1, rows_a):
                d = _distance(a[o1[q0]:o1[q1]], block_b, metric).numpy()
                d = np.minimum.reduceat(d, o2[g0:g1] - o2[g0], axis=1)
                out[q0:q1, g0:g1] = np.minimum.reduceat(d, o1[q0:q1] - o1[q0], axis=0)
    return out


def _segment_means(x: Tensor, offsets: np.ndarray) -> Tensor:
    lengths = torch.from_numpy(np.diff(offsets))
    segments = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    sums = torch.zeros(len(lengths), x.shape[1], dtype=x.dtype).index_add_(0, segments, x)
    return sums / lengths[:, None].to(x.dtype)
