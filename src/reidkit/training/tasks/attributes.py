"""The attributes task: ACRN (models/acrn.py) trained with identity + ACRN triplet + weighted attribute losses.

The embedding task's epoch, losses and validation, plus:
- per-image 0/1 attribute labels from the training manifest's attr_<name> columns (data/manifest.py), looked up
  for each batch through `self.batch_items`;
- the weighted attribute cross-entropy (`attribute_wce`, weight `attributes.weight`, DeepMAR weights from the
  training positive rates) from the first epoch;
- the metric loss `attribute_triplet` (loss.metric_loss; gamma in loss.metric_params) fed with the predicted
  attribute probabilities; gamma = 0 is the plain batch-hard triplet;
- validation: rank-k / mAP of the fused descriptor ("val", picks best.pt), of the ReID features alone
  ("val_reid") and the accuracy of each attribute at p > 0.5 on the validation images ("val_attributes").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...data.records import attribute_matrix, attribute_names
from ...errors import ConfigError, DataError
from ...inference.features import _run_batches
from ...losses import build_loss
from ...losses.attributes import WEIGHTINGS, WeightedAttributeCrossEntropy
from ...metrics import compute_distance_matrix
from ..config import ModelConfig, TrainConfig
from ..splits import prepare_splits
from .base import register_task
from .embedding import EmbeddingTask

ATTRIBUTE_INPUTS = "embeddings+attributes"


@dataclass
class AttributeModelConfig(ModelConfig):
    name: str = "acrn"


@dataclass
class AttributeConfig:
    # Attributes to learn (manifest columns attr_<name>, named without the prefix); empty = every attr_ column.
    names: list[str] = field(default_factory=list)
    weight: float = 1.0  # weight of the attribute cross-entropy in the total loss
    # positive_rate: DeepMAR's w_i = exp(-p_i / sigma^2) from the training positive rates p_i | none: w_i = 1
    weighting: str = "positive_rate"
    sigma: float = 1.0
    # Start the attribute head's biases at the log-odds of the training positive rates (p_i = r_i before training,
    # the prior initialisation of Lin et al. 2017) instead of 0 (p_i = 0.5): with a few hundred steps the head
    # otherwise stays below the majority-class predictor (docs/benchmarks/acrn.md).
    prior_bias: bool = True


@dataclass
class AttributeTrainConfig(TrainConfig):
    """TrainConfig plus the `attributes` section (docs/models.md, "ACRN (attributes)")."""

    model: AttributeModelConfig = field(default_factory=AttributeModelConfig)
    attributes: AttributeConfig = field(default_factory=AttributeConfig)


def select_attributes(available: tuple[str, ...], wanted: list[str], source: str) -> list[str]:
    """The attribute names to train: `wanted` (each must be a column of `source`), or every available one."""
    if not available:
        raise DataError(f"{source}: no attribute labels: the attributes task reads a manifest (.csv/.json) with "
                        "0/1 columns attr_<name> (reidkit.data.synth.write_attribute_manifest writes one)")
    missing = [n for n in wanted if n not in available]
    if missing:
        raise ConfigError(f"attributes.names: {', '.join('attr_' + n for n in missing)} not a column of {source} "
                          f"(its attribute columns: {', '.join('attr_' + n for n in available)})")
    return list(wanted) or list(available)


@register_task("attributes")
class AttributeTask(EmbeddingTask):
    config_class = AttributeTrainConfig

    def __init__(self, cfg: AttributeTrainConfig, data_root: str | Path | None = None, show_progress: bool = True):
        a = cfg.attributes
        if a.weighting not in WEIGHTINGS:
            raise ConfigError(f"attributes.weighting={a.weighting!r}: expected {' or '.join(WEIGHTINGS)}")
        if not a.weight >= 0:
            raise ConfigError(f"attributes.weight={a.weight}: must be >= 0")
        if cfg.loss.metric_loss not in ("attribute_triplet", "none"):  # another metric loss would ignore the attributes
            raise ConfigError(f"loss.metric_loss={cfg.loss.metric_loss!r}: the attributes task trains ACRN with "
                              "'attribute_triplet' (gamma: 0 in loss.metric_params gives the plain triplet) or 'none'")
        super().__init__(cfg, data_root, show_progress)

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        cfg = self.cfg
        source = str(self.data_root or cfg.data.root)
        splits = prepare_splits(self.data_root, cfg.data)  # a manifest is read twice (here and in super): cheap
        self.attribute_names = select_attributes(attribute_names(splits.train), cfg.attributes.names, source)
        train_labels = attribute_matrix(splits.train, self.attribute_names, source)
        self.positive_rates = train_labels.mean(axis=0)
        cfg.model.params = {**cfg.model.params, "num_attributes": len(self.attribute_names),
                            "attribute_names": list(self.attribute_names)}
        super().setup()
        if cfg.attributes.prior_bias:
            rates = torch.as_tensor(self.positive_rates).clamp(1e-3, 1 - 1e-3)
            for model in self.models:
                with torch.no_grad():
                    model.attribute_head.bias.copy_(torch.logit(rates).to(model.attribute_head.bias))
        self.train_attributes = torch.as_tensor(attribute_matrix(self.splits.train, self.attribute_names, source))
        if self.has_val:
            self.val_attributes = attribute_matrix(self.splits.query + self.splits.gallery, self.attribute_names,
                                                   source)

    def _metric_loss(self, context: dict[str, Any]) -> nn.Module | None:
        if self.cfg.loss.metric_loss != "attribute_triplet":
            return super()._metric_loss(context)
        lc = self.cfg.loss
        shared = {"margin": lc.margin, "soft_margin": lc.soft_margin, **lc.metric_params}
        return build_loss("attribute_triplet", **shared)

    def _losses_for(self, model: nn.Module | None) -> dict[str, nn.Module | None]:
        losses = super()._losses_for(model)
        a = self.cfg.attributes
        rates = self.positive_rates.tolist() if a.weighting == "positive_rate" else None
        losses["attribute"] = WeightedAttributeCrossEntropy(positive_rates=rates, sigma=a.sigma) if a.weight else None
        return losses

    # --------------------------------------------------------------- training
    def _student_loss(self, out: dict[str, Any], labels: torch.Tensor, ranking: bool,
                      student: int = 0) -> dict[str, torch.Tensor]:
        losses = self.student_losses[student]
        metric = losses["metric"]
        acrn = metric is not None and getattr(metric, "inputs", "") == ATTRIBUTE_INPUTS
        parts = super()._student_loss(out, labels, ranking and not acrn, student)
        if ranking and acrn:
            parts["metric"] = self.cfg.loss.metric_weight * metric(out["features"], labels, out["attributes"])
        if losses["attribute"] is not None:
            targets = self.train_attributes[torch.as_tensor(self.batch_items)].to(out["attribute_logits"].device)
            parts["attribute"] = self.cfg.attributes.weight * losses["attribute"](out["attribute_logits"], targets)
        return parts

    # ------------------------------------------------------------- validation
    def validate(self) -> dict[str, Any]:
        row = super().validate()
        model = self.models[0]
        kw = dict(mean=self.mean, std=self.std, device=self.device, batch_size=128, flip=self.cfg.flip_tta,
                  show_progress=False, desc="validation: attributes")
        images = torch.cat([self.query_images, self.gallery_images])
        with torch.no_grad():
            chunks = _run_batches(model, model.embed_parts, images, **kw)
        reid = nn.functional.normalize(torch.cat([c[0] for c in chunks]), dim=1).numpy()
        probs = torch.cat([c[1] for c in chunks]).numpy() / (2.0 if self.cfg.flip_tta else 1.0)
        nq = len(self.query_images)
        row["val_reid"] = self._rank_summary(compute_distance_matrix(reid[:nq], reid[nq:], metric="cosine"))
        row["val_attributes"] = attribute_accuracy(probs, self.val_attributes, self.attribute_names)
        return row


def attribute_accuracy(probs: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, float]:
    """Per attribute: % of images whose prediction (p > 0.5) equals the label; "mean" over attributes."""
    correct = ((probs > 0.5) == (labels > 0.5)).mean(axis=0) * 100.0
    result = {name: float(c) for name, c in zip(names, correct)}
    result["mean"] = float(correct.mean()) if len(names) else 0.0
    return result


__all__ = ["AttributeConfig", "AttributeTask", "AttributeTrainConfig", "attribute_accuracy", "select_attributes"]
