"""Embedding-model training: the embedding task (training/tasks/embedding.py) run by the one loop.

`train_embedding` is the Python entry point (README); `EmbeddingTrainer` keeps the old class name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig
from .loop import Trainer
from .splits import prepare_splits
from .tasks.embedding import EmbeddingTask, check_local_options

__all__ = ["EmbeddingTrainer", "check_local_options", "prepare_splits", "train_embedding"]


class EmbeddingTrainer(Trainer):
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, data_root: str | Path | None = None,
                 show_progress: bool = True):
        super().__init__(EmbeddingTask(cfg, data_root, show_progress), out_dir)


def train_embedding(cfg: TrainConfig, out_dir: str | Path, data_root: str | Path | None = None,
                    resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train an embedding model per `cfg` into `out_dir`; returns the summary (best, epochs_done) and the log."""
    return EmbeddingTrainer(cfg, out_dir, data_root, show_progress).fit(resume=resume)
