"""Batched embedding extraction from uint8 image tensors (shared by validation, Extractor and demo)."""

from __future__ import annotations

import weakref
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


# On the CPU a forward pass is cut into chunks whose largest layer output stays within this many bytes. glibc maps
# every block above its mmap threshold (at most 32 MB) afresh and unmaps it on free, so a bigger batch page-faults
# and zeroes each layer's output again on every pass: OSNet-AIN x1.0 at 256x128 embeds 2-3x more images/s in
# chunks of 8 than in batches of 64 (docs/benchmarks/cpu_batching.md). Results do not depend on the chunking.
CPU_ACTIVATION_BYTES = 16 * 2**20
_PEAK_BYTES_PER_IMAGE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _largest_output_bytes(model: nn.Module, call: Callable[[], object]) -> tuple[int, object]:
    """(bytes of the largest tensor any module of `model` outputs during `call()`, what `call()` returned)."""
    peak = [1]

    def record(_module: nn.Module, _inputs: object, output: object) -> None:
        for out in output if isinstance(output, tuple | list) else (output,):
            if isinstance(out, torch.Tensor):
                peak[0] = max(peak[0], out.numel() * out.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        result = call()
    finally:
        for hook in hooks:
            hook.remove()
    return peak[0], result


def _chunk_and_run(model: nn.Module, key: tuple[int, ...], call: Callable[[], object]) -> tuple[int, object]:
    """(images per CPU forward pass for inputs of shape `key`, `call()`); the first time `model` sees `key`, the
    call is hooked to measure its largest module output."""
    sizes = _PEAK_BYTES_PER_IMAGE.setdefault(model, {})
    if key in sizes:
        result = call()
    else:
        sizes[key], result = _largest_output_bytes(model, call)
    return max(1, CPU_ACTIVATION_BYTES // sizes[key]), result


@torch.no_grad()
def cpu_images_per_forward(model: nn.Module, input_size: Sequence[int], mean: Sequence[float],
                           std: Sequence[float]) -> int:
    """How many images a CPU forward pass of `model` takes (as embed_tensor cuts them): the most whose largest module
    output fits CPU_ACTIVATION_BYTES; measured with one blank image unless already known."""
    key = (3, *input_size)
    if key in _PEAK_BYTES_PER_IMAGE.get(model, {}):
        return max(1, CPU_ACTIVATION_BYTES // _PEAK_BYTES_PER_IMAGE[model][key])
    one = normalize(torch.zeros(1, *key, dtype=torch.uint8), mean, std).contiguous(memory_format=torch.channels_last)
    was_training = model.training
    chunk, _ = _chunk_and_run(model.eval(), key, lambda: model(one))
    model.train(was_training)
    return chunk


def _run_batches(model: nn.Module, forward: Forward, images: torch.Tensor, *, mean: Sequence[float],
                 std: Sequence[float], device: torch.device, batch_size: int, flip: bool, show_progress: bool,
                 desc: str) -> list[tuple[torch.Tensor, ...]]:
    """Per batch, the float32 CPU outputs of `forward` in eval mode (flip=True: summed with the mirror's).
    On the CPU, batches are cut to `cpu_images_per_forward` images after the first image, which runs alone (and
    measures that size the first time a model sees an input size; its outputs are kept, so no image runs twice)."""
    was_training = model.training
    model.eval()

    def run(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = normalize(batch.to(device), mean, std)
        x = x.contiguous(memory_format=torch.channels_last)  # fastest layout on CPU; a no-op cost on CUDA
        outs = forward(x)
        if flip:
            outs = tuple(a + b for a, b in zip(outs, forward(x.flip(-1)), strict=True))
        return tuple(o.float().cpu() for o in outs)

    chunks: list[tuple[torch.Tensor, ...]] = []
    if torch.device(device).type == "cpu" and images.shape[0] > 1:
        # The first image runs alone on every call, measured the first time: the chunks, and so the float results,
        # are then the same whether or not this model was measured before.
        chunk, first = _chunk_and_run(model, tuple(images.shape[1:]), lambda: run(images[:1]))
        chunks.append(first)
        batch_size = min(batch_size, chunk)
    starts = range(len(chunks), images.shape[0], batch_size)
    for start in progress(starts, desc=desc, enabled=show_progress, leave=False):
        chunks.append(run(images[start:start + batch_size]))
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
