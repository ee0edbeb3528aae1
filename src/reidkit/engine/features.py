"""Batched embedding extraction from uint8 image tensors (shared by validation, Extractor and demo)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..utils import progress
from .transforms import normalize


@torch.no_grad()
def embed_tensor(model: nn.Module, images: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, batch_size: int = 128, flip: bool = False,
                 show_progress: bool = False, desc: str = "embedding") -> torch.Tensor:
    """uint8 (N,3,H,W) -> float32 (N,D) embeddings on the CPU, L2-normalised.

    flip=True averages the embeddings of each image and its mirror image (test-time augmentation).
    """
    was_training = model.training
    model.eval()
    chunks = []
    starts = range(0, images.shape[0], batch_size)
    for start in progress(starts, desc=desc, enabled=show_progress, leave=False):
        x = normalize(images[start:start + batch_size].to(device), mean, std)
        x = x.contiguous(memory_format=torch.channels_last)  # fastest layout on CPU; a no-op cost on CUDA
        emb = model(x)
        if flip:
            emb = emb + model(x.flip(-1))
        chunks.append(nn.functional.normalize(emb.float(), dim=1).cpu())
    model.train(was_training)
    if not chunks:
        return torch.empty(0, 0)
    return torch.cat(chunks)
