"""ACRN, the attribute-complementary re-id net (Schumann & Stiefelhagen, CVPRW 2017), on one shared backbone.

The embedding model (backbone -> pooling -> BNNeck, models/embedding.py) plus an attribute head: one logit per
binary attribute from the BN features, p = sigmoid(logits) being the attribute representation. Training (task
"attributes", training/tasks/attributes.py) adds the weighted attribute cross-entropy and ACRN's triplet term on
the attribute representation (losses/attributes.py). Inference fuses both:

    fused = normalize([ f / |f|,  lambda * p / |p| ])      lambda = fusion_weight

so the cosine distance of fused vectors is (d_cos(f) + lambda^2 d_cos(p)) / (1 + lambda^2): the ReID distance and
the attribute distance averaged with weights 1 and lambda^2 (lambda = 0: the ReID features alone). The paper
trains a separate attribute network on PETA and concatenates its attribute layer with the ReID features; here
both branches share the backbone (one CPU pass per image) and the attributes come from manifest labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .embedding import EmbeddingModel, build_embedding_model
from .registry import register_model


class ACRNModel(EmbeddingModel):
    """Training outputs: the embedding model's plus "attribute_logits" (N, A) and "attributes" (N, A)
    probabilities. Eval: the fused embedding (N, D + A), L2-normalised."""

    def __init__(self, base: EmbeddingModel, num_attributes: int, attribute_names: Sequence[str] = (),
                 fusion_weight: float = 1.0) -> None:
        super().__init__(base.backbone, base.pool, embedding_dim=base.fc.out_features if base.fc else None,
                         bnneck=base.bottleneck is not None, num_classes=base.num_classes,
                         dropout=getattr(base.dropout, "p", 0.0), input_size=base.input_size)
        self.num_attributes = int(num_attributes)
        self.attribute_names = tuple(attribute_names)
        self.fusion_weight = float(fusion_weight)
        self.attribute_head = nn.Linear(self.embedding_dim, self.num_attributes)
        nn.init.normal_(self.attribute_head.weight, std=0.001)
        nn.init.zeros_(self.attribute_head.bias)

    def forward(self, x: torch.Tensor) -> dict | torch.Tensor:
        if not self.training:
            reid, probs = self.embed_parts(x)
            return self.fuse(reid, probs, self.fusion_weight)
        out = super().forward(x)
        logits = self.attribute_head(out["bn_features"])
        out["attribute_logits"] = logits
        out["attributes"] = torch.sigmoid(logits)
        return out

    @property
    def descriptor_dim(self) -> int:
        return self.embedding_dim + self.num_attributes

    def embed_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised ReID features (N, D), attribute probabilities (N, A)) in one backbone pass."""
        _, bn_features = self.embed(self.backbone(x))
        return F.normalize(bn_features, dim=1), torch.sigmoid(self.attribute_head(bn_features))

    @staticmethod
    def fuse(reid: torch.Tensor, probs: torch.Tensor, weight: float) -> torch.Tensor:
        """normalize([reid / |reid|, weight * probs / |probs|]): the fused inference descriptor."""
        return F.normalize(torch.cat([F.normalize(reid, dim=1), weight * F.normalize(probs, dim=1)], dim=1), dim=1)

    @torch.no_grad()
    def predict_attributes(self, x: torch.Tensor) -> torch.Tensor:
        """Attribute probabilities (N, A) (call in eval mode)."""
        return self.embed_parts(x)[1]


@register_model("acrn", task="attributes")
def build_acrn(num_attributes: int = 0, attribute_names: Sequence[str] = (), fusion_weight: float = 1.0,
               backbone: str = "efficientnet_lite0", pretrained: bool = False, pooling: str = "gem",
               embedding_dim: int | None = None, bnneck: bool = True, num_classes: int | None = None,
               dropout: float = 0.0, last_stride: int | None = None, input_size: tuple[int, int] = (256, 128),
               backbone_options: dict | None = None, local_dim: int = 0, local_pool: str = "max") -> ACRNModel:
    """ACRN on the embedding model's options; `num_attributes` and `attribute_names` come from the training data
    (the task fills them in), `fusion_weight` is lambda of the fused descriptor (model.params.fusion_weight)."""
    if isinstance(num_attributes, bool) or not isinstance(num_attributes, int) or num_attributes < 1:
        raise ModelError(f"acrn: num_attributes={num_attributes!r}: expected a positive integer (the attr_<name> "
                         "columns of the training manifest)")
    if attribute_names and len(attribute_names) != num_attributes:
        raise ModelError(f"acrn: {len(attribute_names)} attribute_names for num_attributes={num_attributes}")
    if not fusion_weight >= 0:
        raise ModelError(f"acrn: fusion_weight={fusion_weight!r}: expected >= 0 (0 = ReID features alone)")
    if local_dim:
        raise ModelError("acrn: model.local_dim must be 0 (no AlignedReID local branch on ACRN)")
    base = build_embedding_model(backbone=backbone, pretrained=pretrained, pooling=pooling,
                                 embedding_dim=embedding_dim, bnneck=bnneck, num_classes=num_classes,
                                 dropout=dropout, last_stride=last_stride, input_size=input_size,
                                 backbone_options=backbone_options, local_pool=local_pool)
    return ACRNModel(base, num_attributes, attribute_names, fusion_weight)
