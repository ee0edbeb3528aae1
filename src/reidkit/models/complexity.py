"""Model size and compute: parameter counts and FLOPs of one forward pass.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`, which sees every ATen convolution (grouped and
functional ones too, e.g. the MLS depth-wise correlation `F.conv2d`, which module hooks would miss) and matrix
product (mm, addmm, bmm, baddbmm, ...). Convention: FLOPs = 2 x multiply-accumulates of those operations; biases,
BatchNorm, activations, pooling and sampling are not counted (the usual convention of ReID/CNN papers, which
often quote MACs = FLOPs / 2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ModelError


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN running statistics are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flop_breakdown(fn: Callable[..., object], *inputs: object) -> dict[str, int]:
    """FLOPs of `fn(*inputs)` (a module or any callable) per ATen operator, e.g. {"convolution": ..., "addmm": ...}.

    Runs once under `torch.no_grad()`; the module's train/eval mode is left as it is.
    """
    if not callable(fn):
        raise ModelError(f"count_flops: expected a module or callable, got {type(fn).__name__}")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    totals = counter.get_flop_counts().get("Global", {})
    return {str(getattr(op, "__name__", op)).split(".")[-1]: int(n) for op, n in totals.items() if n}


def count_flops(fn: Callable[..., object], *inputs: object) -> int:
    """Total FLOPs (2 per multiply-accumulate of convolutions and matrix products) of `fn(*inputs)`."""
    return sum(flop_breakdown(fn, *inputs).values())
