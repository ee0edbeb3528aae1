"""What a training task is: everything the loop (training/loop.py) does not decide.

The loop owns the run: set-up order, optimiser steps (accumulation, AMP, clipping, schedules), checkpoints,
resume, the JSONL log, the time budget and the console. A task says what to optimise and how to judge it:
  setup()              data, the trained members (models + their training-only modules), model name/options
  optimizer(member) / scheduler(optimizer)   built from the task's config with training/optim.py factories
  train_epoch(epoch, optimise)               batches -> losses -> `optimise(loss, step, num_steps)`
  validate() / selection(row)                validation row entries; the metrics that pick best.pt
  console_line(row, best), plot_curves(rows) what is shown per evaluation
  finish(trainer, best)                      end-of-run report (pictures, final metrics)
Tasks register by name; a model declares its task in its registration (`register_model(name, task=...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn

from ...errors import ConfigError, TrainingError
from ...registry import Registry
from ...utils import resolve_device

if TYPE_CHECKING:
    from ..loop import Trainer

Optimise = Callable[[torch.Tensor, int, int], None]


@dataclass
class Member:
    """One trained network and the training-only modules optimised with it (loss parameters, heads). The extras
    that hold state are saved in the checkpoint under their names and restored on resume."""

    model: nn.Module
    extras: dict[str, nn.Module] = field(default_factory=dict)

    def stateful_extras(self) -> dict[str, nn.Module]:
        return {name: m for name, m in self.extras.items() if m.state_dict()}


def check_finite(loss: torch.Tensor, where: str, parts: dict[str, torch.Tensor] | None = None) -> None:
    """A NaN/inf loss stops the run with the place and the terms that went wrong."""
    if not torch.isfinite(loss):
        detail = f" ({', '.join(f'{k}={v.item():.4g}' for k, v in parts.items())})" if parts else ""
        raise TrainingError(f"loss became {loss.item()} at {where}{detail}; lower optim.lr or check the data")


class Task:
    """Base class of the training tasks; see the module docstring for the contract."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    best_key: ClassVar[str]  # the metric of `selection(row)` that picks best.pt (higher is better)
    amp: bool = False  # float16 autocast with gradient scaling (CUDA)
    accum_steps: int = 1
    grad_clip: float = 0.0
    extra_options: ClassVar[dict[str, str]] = {}  # extra name -> the config option that creates it (messages)
    # Whether the task splits its batches over torch.distributed ranks (training/distributed.py); the loop refuses
    # to run other tasks under torchrun rather than train the same batches N times.
    supports_distributed: ClassVar[bool] = False

    def __init__(self, cfg: Any, data_root: str | Path | None = None, show_progress: bool = True):
        self.cfg, self.data_root, self.show_progress = cfg, data_root, show_progress
        self.device = resolve_device(cfg.device)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.members: list[Member] = []
        self.model_name: str = ""
        self.model_cfg: dict[str, Any] = {}
        self.steps_per_epoch = 1
        self.has_val = False

    @property
    def epochs(self) -> int:
        return self.cfg.optim.epochs

    def setup(self) -> None:
        raise NotImplementedError

    def optimizer(self, member: Member) -> torch.optim.Optimizer:
        raise NotImplementedError

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        raise NotImplementedError

    def train_epoch(self, epoch: int, optimise: Optimise) -> dict[str, Any]:
        raise NotImplementedError

    def validate_now(self, epoch: int, last: bool) -> bool:
        return self.has_val

    def validate(self) -> dict[str, Any]:
        raise NotImplementedError

    def selection(self, row: dict[str, Any]) -> dict[str, Any]:
        """The metrics that decide best.pt (with `best_key`), stored as "best" in the log and the summary."""
        return dict(row["val"])

    def console_line(self, row: dict[str, Any], best: dict[str, Any]) -> str:
        raise NotImplementedError

    def plot_curves(self, rows: list[dict], out: Path) -> None:
        raise NotImplementedError

    def checkpoint_extra(self, member: int) -> dict[str, Any]:
        """Task entries of a checkpoint's `extra` beside the members' extras (e.g. the label map)."""
        return {}

    def check_resume(self, payload: dict[str, Any], path: Path) -> None:
        """Refuse to resume a checkpoint of another model or other model options."""
        if payload["model_name"] != self.model_name:
            raise ConfigError(f"resume: {path} holds a {payload['model_name']!r} model but the config trains "
                              f"{self.model_name!r}")
        saved = payload["model_cfg"]  # keys missing there predate the option: the model had its default
        changed = sorted(k for k in saved.keys() & self.model_cfg.keys() if saved[k] != self.model_cfg[k])
        if changed:
            raise ConfigError(f"resume: {path} was trained with other model options ("
                              + ", ".join(f"model.{k}: {saved[k]!r} there, {self.model_cfg[k]!r} now"
                                          for k in changed)
                              + "); resume with the same options or start a new run")

    def finish(self, trainer: Trainer, best: dict[str, Any]) -> dict[str, Any]:
        """Summary entries after the last epoch (final reports, pictures)."""
        return {}

    def report(self, summary: dict[str, Any]) -> None:
        """Print the headline numbers of a finished run."""


_TASKS: Registry[type[Task]] = Registry("training task", ConfigError)


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def decorator(cls: type[Task]) -> type[Task]:
        cls.name = name
        return _TASKS.register(name)(cls)

    return decorator


def task_class(name: str) -> type[Task]:
    return _TASKS.get(name)
