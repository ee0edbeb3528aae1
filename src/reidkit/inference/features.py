"""Batched embedding extraction from uint8 image tensors (shared by validation, Extractor and demo)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..data.transforms import normalize
from ..errors import ModelError
from ..utils import progress

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def require_finite_features(features: np.ndarray, source: str) -> np.ndarray:
    """`features` unchanged, or ModelError naming `source` (e.g. "model runs/x/best.pt") when any row holds NaN or
    inf: such rows would enter an index or a metric as NaN distances that rank arbitrarily."""
    if features.size == 0:
        return features
    rows = features.reshape(features.shape[0], -1) if features.ndim > 1 else features.reshape(-1, 1)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        raise ModelError(f"{source}: {bad.size} of {len(rows)} feature vectors hold NaN or inf (first: row "
                         f"{bad[0]}); refused before they reach an index or a metric")
    return features


def _run_batches(model: nn.Module, forward: Forward, images: torch.Tensor, *, mean: Sequence[float],
                 std: Sequence[float], device: torch.device, batch_size: int, flip: bool, show_progress: bool,
                 desc: str) -> list[tuple[torch.Tensor, ...]]:
    """Per batch, the float32 CPU outputs of `forward` in eval mode (flip=True: summed with the mirror's)."""
    was_training = model.training
    model.eval()
    chunks = []
    starts = range(0, images.shape[0], batch_size)
    for start in progress(starts, desc=desc, enabled=show_progress, leave=False):
        x = normalize(images[start:start + batch_size].to(device), mean, std)
        x = x.contiguous(memory_format=torch.channels_last)  # fastest layout on CPU; a no-op cost on CUDA
        outs = forward(x)
        if flip:
            outs = tuple(a + b for a, b in zip(outs, forward(x.flip(-1)), strict=True))
        chunks.append(tuple(o.float().cpu() for o in outs))
    model.train(was_training)
    return chunks


@torch.no_grad()
def embed_tensor(model: nn.Module, images: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, batch_size: int = 128, flip: bool = False,
                 show_progress: bool = False, desc: str = "embedding") -> torch.Tensor:
    """uint8 (N,3,H,W) -> float32 (N,D) embeddings on the CPU, L2-normalised.

    flip=True averages the embeddings of each image and its mirror image (test-time augmentation).
    """
    chunks = _run_batches(model, lambda x: (model(x),), images, mean=mean, std=std, device=device,
                          batch_size=batch_size, flip=flip, show_progress=show_progress, desc=desc)
    if not chunks:
        return torch.empty(0, 0)
    return nn.functional.normalize(torch.cat([c[0] for c in chunks]), dim=1)


@torch.no_grad()
def embed_tensor_local(model: nn.Module, images: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                       device: torch.device, batch_size: int = 128, flip: bool = False,
                       show_progress: bool = False, desc: str = "embedding") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N,3,H,W) -> (global (N,D) L2-normalised, AlignedReID local (N, stripes, local_dim)) on the CPU.

    flip=True averages image and mirror for both; local features are averaged, not normalised, so they keep
    the scale the local loss trained (row pooling makes them nearly mirror-invariant anyway).
    """
    if getattr(model, "local_branch", None) is None:
        raise ModelError("local features: the model has no AlignedReID local branch (train with model.local_dim > 0)")
    chunks = _run_batches(model, model.embed_with_local, images, mean=mean, std=std, device=device,
                          batch_size=batch_size, flip=flip, show_progress=show_progress, desc=desc)
    if not chunks:
        return torch.empty(0, 0), torch.empty(0, 0, 0)
    global_features = nn.functional.normalize(torch.cat([c[0] for c in chunks]), dim=1)
    local_features = torch.cat([c[1] for c in chunks]) / (2.0 if flip else 1.0)
    return global_features, local_features
