"""Pair-network training: the pair task (training/tasks/pair.py) run by the one loop.

`train_pair_model` is the Python entry point; `PairTrainer` and the config names keep their old imports.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import (
    PairDataConfig,
    PairEvalConfig,
    PairLossConfig,
    PairModelConfig,
    PairOptimConfig,
    PairSamplingConfig,
    PairTrainConfig,
)
from .loop import Trainer
from .tasks.pair import (
    IdentityHead,
    PairTask,
    load_train_records,
    plot_pair_confusion,
    plot_pair_training_curves,
    retain_freed_memory,
)

__all__ = ["IdentityHead", "PairDataConfig", "PairEvalConfig", "PairLossConfig", "PairModelConfig",
           "PairOptimConfig", "PairSamplingConfig", "PairTrainConfig", "PairTrainer", "load_train_records",
           "plot_pair_confusion", "plot_pair_training_curves", "retain_freed_memory", "train_pair_model"]


class PairTrainer(Trainer):
    def __init__(self, cfg: PairTrainConfig, out_dir: str | Path, data_root: str | Path | None = None,
                 device: str | None = None, show_progress: bool = True):
        super().__init__(PairTask(replace(cfg, device=device) if device else cfg, data_root, show_progress),
                         out_dir)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        return self.train_epoch(epoch)


def train_pair_model(cfg: PairTrainConfig, data_root: str | Path | None = None, out_dir: str | Path = "runs/pair",
                     resume: bool = False, device: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Train a pair network per `cfg`; returns the summary (also written to out_dir/summary.json).

    `data_root` overrides cfg.data.root and `device` ("auto", "cpu", "cuda", ...) overrides cfg.device.
    """
    return PairTrainer(cfg, out_dir, data_root, device, show_progress).fit(resume=resume)
