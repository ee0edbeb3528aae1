"""Exponential moving average of the trained weights (`ema_decay` in the config; 0 = off).

After every optimiser step: ema <- d * ema + (1 - d) * weights, over parameters AND floating-point buffers (the
BatchNorm statistics), with the warm-up of timm's ModelEma, d_n = min(decay, (1 + n) / (10 + n)) after n updates,
so early averages are not dominated by the initial weights. The averaged copy is torch's
`torch.optim.swa_utils.AveragedModel`; only the averaging rule is ours. Validation, best.pt and the final
weights use the average; last.pt keeps the raw weights and the average, so a resumed run continues both exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from ..errors import ConfigError


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay={decay}: expected 0 < decay < 1 (0.999 is usual; 0 = no average)")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)

    def _average(self, averaged: Sequence[torch.Tensor], current: Sequence[torch.Tensor],
                 num_averaged: torch.Tensor | int) -> None:
        n = float(num_averaged)
        decay = min(self.decay, (1.0 + n) / (10.0 + n))
        for avg, now in zip(averaged, current):
            if avg.is_floating_point():
                avg.lerp_(now.to(avg.dtype), 1.0 - decay)
            else:  # counters (num_batches_tracked) follow the model
                avg.copy_(now)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)

    @contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[None]:
        """`model` holds the averaged weights inside the block and its own again after it."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.averaged.module.state_dict())
        try:
            yield
        finally:
            model.load_state_dict(raw)


@contextmanager
def averaged_weights(emas: Sequence[WeightEMA], models: Sequence[nn.Module]) -> Iterator[None]:
    """Every model with its average inside the block (no-op without averages)."""
    with ExitStack() as stack:
        for ema, model in zip(emas, models):
            stack.enter_context(ema.applied_to(model))
        yield
