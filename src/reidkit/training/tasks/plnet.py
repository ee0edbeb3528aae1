"""The plnet task: PL-Net (models/plnet.py) = the embedding task's losses on the global feature + the part loss.

Before the first epoch, each student's channels are clustered into parts from its (pretrained) backbone's feature
maps of `part_images` training images (seeded choice, no augmentation): `PLNetModel.fit_parts`. The parts are
fixed from then on (saved in the checkpoint). The part loss is the mean over the K parts of the label-smoothed
cross-entropy of each part's classifier (weight `part_weight`), from the first epoch, beside the global identity
and metric losses. Validation and best.pt as in the embedding task, on the global + part descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...data.transforms import normalize
from ...errors import ConfigError
from ...losses import CrossEntropyLabelSmooth
from ..config import ModelConfig, TrainConfig
from .base import register_task
from .embedding import EmbeddingTask


@dataclass
class PLNetModelConfig(ModelConfig):
    name: str = "plnet"


@dataclass
class PLNetTrainConfig(TrainConfig):
    """TrainConfig plus the part loss weight and the number of images the parts are found on."""

    model: PLNetModelConfig = field(default_factory=PLNetModelConfig)
    part_weight: float = 1.0  # weight of the part loss (mean of the K part cross-entropies)
    part_images: int = 256  # training images whose channel peaks are clustered into parts (before epoch 1)


@register_task("plnet")
class PLNetTask(EmbeddingTask):
    config_class = PLNetTrainConfig

    def __init__(self, cfg: PLNetTrainConfig, *args: Any, **kwargs: Any) -> None:
        if not cfg.part_weight >= 0:
            raise ConfigError(f"part_weight={cfg.part_weight}: must be >= 0")
        if cfg.part_images < 1:
            raise ConfigError(f"part_images={cfg.part_images}: must be >= 1")
        super().__init__(cfg, *args, **kwargs)

    def setup(self) -> None:
        super().setup()
        self.part_loss = CrossEntropyLabelSmooth(self.num_classes, epsilon=self.cfg.loss.label_smooth)
        rng = np.random.default_rng(self.cfg.seed)
        count = min(self.cfg.part_images, len(self.train_images))
        rows = np.sort(rng.choice(len(self.train_images), size=count, replace=False))
        for model in self.models:
            self.fit_parts(model, rows)

    @torch.no_grad()
    def fit_parts(self, model: torch.nn.Module, rows: np.ndarray) -> None:
        was_training = model.training
        model.eval()
        maps = [model.backbone(normalize(self.train_images[rows[i:i + 64]].to(self.device), self.mean, self.std))
                for i in range(0, len(rows), 64)]
        model.fit_parts(torch.cat(maps).float().cpu(), seed=self.cfg.seed)
        model.train(was_training)

    def _student_loss(self, out: dict[str, Any], labels: torch.Tensor, ranking: bool,
                      student: int = 0) -> dict[str, torch.Tensor]:
        parts = super()._student_loss(out, labels, ranking, student)
        if self.cfg.part_weight > 0:
            logits = out["part_logits"]  # (N, K, classes): one cross-entropy per part, averaged
            k = logits.shape[1]
            part_ce = self.part_loss(logits.reshape(-1, logits.shape[2]), labels.repeat_interleave(k))
            parts["part"] = self.cfg.part_weight * part_ce
        return parts
