"""AlignedReID local distance (Zhang et al. 2017): the shortest path through a stripe-to-stripe distance matrix.

Two images give local features x (m stripes) and y (n stripes). Their stripe distances are squashed with
d = (e^x - 1) / (e^x + 1) = tanh(x / 2), which keeps d in [0, 1) so that one far-off stripe (occlusion,
misdetection) cannot dominate, and the local distance is the cost of the cheapest path from (0, 0) to
(m - 1, n - 1) moving only right or down: dynamic programming S[i, j] = d[i, j] + min(S[i-1, j], S[i, j-1]).

The DP runs over the anti-diagonals of the small m x n grid (m + n - 1 tensor steps), each step vectorised over
every pair of images, and is differentiable (gradients reach the cells on the chosen path), so losses can use it.
"""

from __future__ import annotations

import torch

from ..errors import DataError

# Elements of one (pairs, m, n) stripe-distance block in `local_distance`.
_BLOCK_ELEMENTS = 2**24


def squash_distance(x: torch.Tensor) -> torch.Tensor:
    """(e^x - 1) / (e^x + 1), computed as tanh(x / 2) (same value, no overflow for large x)."""
    return torch.tanh(x / 2.0)


def _diagonal_index(m: int, n: int, device: torch.device) -> torch.Tensor:
    """Flat positions (into an m * n grid followed by one padding cell) of the anti-diagonals: entry [s, i] is
    cell (i, s - i), or the padding cell m * n where that is off the grid."""
    steps = torch.arange(m + n - 1, device=device).unsqueeze(1)
    rows = torch.arange(m, device=device).unsqueeze(0)
    cols = steps - rows
    on_grid = (cols >= 0) & (cols < n)
    return torch.where(on_grid, rows * n + cols, m * n)


def shortest_path(grid: torch.Tensor) -> torch.Tensor:
    """Cost of the cheapest right/down path from the top-left to the bottom-right cell of each (m, n) grid.

    Args:
        grid: (..., m, n) non-negative cell costs.

    Returns:
        (...) path costs (start and end cells included).
    """
    if grid.dim() < 2 or grid.shape[-1] == 0 or grid.shape[-2] == 0:
        raise DataError(f"grid: expected shape (..., m, n) with m, n >= 1, got {tuple(grid.shape)}")
    *batch, m, n = grid.shape
    flat = grid.reshape(-1, m * n)
    padded = torch.cat([flat, flat.new_full((flat.shape[0], 1), torch.inf)], dim=1)
    # diagonals[s, b, i] = cost of cell (i, s - i) of grid b (inf off the grid, so off-grid cells stay unreachable).
    index = _diagonal_index(m, n, grid.device)
    diagonals = padded[:, index.reshape(-1)].reshape(-1, m + n - 1, m).transpose(0, 1).contiguous()
    best = diagonals[0].clone()  # row 0 holds cell (0, 0); the other rows are off the grid (inf)
    for s in range(1, m + n - 1):
        # Cell (i, j) is reached from (i - 1, j) (row i - 1 of the previous diagonal) or (i, j - 1) (row i).
        from_above = torch.nn.functional.pad(best[:, :-1], (1, 0), value=torch.inf)
        best = diagonals[s] + torch.minimum(from_above, best)
    return best[:, m - 1].reshape(batch)


def _check_local(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name}: expected a torch.Tensor of shape (N, stripes, dim), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[1] == 0:
        raise DataError(f"{name}: expected shape (N, stripes, dim), got {tuple(x.shape)}")
    return x


def _check_pair(x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str) -> None:
    if x.shape[-1] != y.shape[-1]:
        raise DataError(f"{x_name} has feature dimension {x.shape[-1]} but {y_name} has {y.shape[-1]}")


def local_distance_pairs(x_local: torch.Tensor, y_local: torch.Tensor) -> torch.Tensor:
    """Local distance of aligned pairs: x_local (P, m, c) against y_local (P, n, c) -> (P,)."""
    _check_local(x_local, "x_local")
    _check_local(y_local, "y_local")
    _check_pair(x_local, y_local, "x_local", "y_local")
    if len(x_local) != len(y_local):
        raise DataError(f"x_local has {len(x_local)} items but y_local has {len(y_local)}; pairs need equal counts")
    return shortest_path(squash_distance(torch.cdist(x_local, y_local)))


def local_distance(x_local: torch.Tensor, y_local: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Local distance of every pair: x_local (M, m, c) against y_local (N, n, c) -> (M, N).

    Rows of x are processed in chunks so one (rows, N, m, n) stripe-distance block stays around 64 MB
    (`chunk_size` overrides the number of rows).
    """
    _check_local(x_local, "x_local")
    _check_local(y_local, "y_local")
    _check_pair(x_local, y_local, "x_local", "y_local")
    M, m, _ = x_local.shape
    N, n, _ = y_local.shape
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // max(N * m * n, 1))
    y_flat = y_local.reshape(N * n, -1)
    blocks = []
    for start in range(0, M, chunk_size):
        x_chunk = x_local[start:start + chunk_size]
        stripes = torch.cdist(x_chunk.reshape(-1, x_chunk.shape[-1]), y_flat)  # (rows * m, N * n)
        grid = stripes.reshape(len(x_chunk), m, N, n).permute(0, 2, 1, 3)
        blocks.append(shortest_path(squash_distance(grid)))
    return torch.cat(blocks)


@torch.no_grad()
def aligned_distance_matrix(qf_global: torch.Tensor, gf_global: torch.Tensor, qf_local: torch.Tensor | None = None,
                            gf_local: torch.Tensor | None = None, weight: float = 1.0, *,
                            chunk_size: int | None = None) -> torch.Tensor:
    """Inference distance: euclidean global distance + weight * local (aligned) distance, shape (Q, G).

    weight = 0 (or no local features) gives the global distance only; the paper reports both settings.
    """
    if qf_global.dim() != 2 or gf_global.dim() != 2:
        raise DataError(f"qf_global/gf_global: expected (N, dim) tensors, got {tuple(qf_global.shape)} and "
                        f"{tuple(gf_global.shape)}")
    _check_pair(qf_global, gf_global, "qf_global", "gf_global")
    distance = torch.cdist(qf_global.float(), gf_global.float())
    if weight == 0:
        return distance
    if qf_local is None or gf_local is None:
        raise DataError("qf_local and gf_local are required when weight != 0")
    for name, local, glob in (("qf_local", qf_local, qf_global), ("gf_local", gf_local, gf_global)):
        if len(local) != len(glob):
            raise DataError(f"{name} has {len(local)} items but its global features have {len(glob)}")
    return distance + weight * local_distance(qf_local.float(), gf_local.float(), chunk_size=chunk_size)
