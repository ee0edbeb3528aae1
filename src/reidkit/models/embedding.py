"""Global embedding model: backbone -> pooling -> optional FC -> BNNeck -> (classifier for the ID loss).

Follows the re-ID strong baseline (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person
Re-identification", CVPRW 2019): the triplet loss sees the features before the BNNeck, the classifier
(bias-free) sees them after it, the BNNeck shift is frozen, and retrieval uses the BN features.

    model = build_model("embedding", backbone="efficientnet_lite0", pretrained=True, num_classes=751)
    model.train(); out = model(x)   # {"features", "bn_features", "logits", "feature_map"}
    model.eval();  emb = model(x)   # (N, D), L2-normalised
"""

from __future__ import annotations

from typing import TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .backbones import build_backbone
from .backbones.pretrained import LoadReport, load_user_weights
from .pooling import build_pooling
from .registry import register_model

__all__ = ["EmbeddingModel", "EmbeddingOutput", "LoadReport", "build_embedding_model", "load_user_weights"]


class EmbeddingOutput(TypedDict):
    features: torch.Tensor  # (N, D) before the BNNeck: for triplet / metric losses
    bn_features: torch.Tensor  # (N, D) after the BNNeck (== features without bnneck)
    logits: torch.Tensor | None  # (N, num_classes) for the ID loss, None without a classifier
    feature_map: torch.Tensor  # (N, C, h, w) backbone output: for local / part branches (AlignedReID)


def init_kaiming(module: nn.Module) -> None:
    """Strong-baseline init for the FC and BNNeck: kaiming (fan_out) weights, zero biases, BN scale 1."""
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class EmbeddingModel(nn.Module):
    def __init__(self, backbone: nn.Module, pooling: nn.Module, embedding_dim: int | None = None,
                 bnneck: bool = True, num_classes: int | None = None, dropout: float = 0.0,
                 input_size: tuple[int, int] = (256, 128)):
        super().__init__()
        self.backbone = backbone
        self.pool = pooling
        channels = int(backbone.out_channels)
        self.fc = nn.Linear(channels, embedding_dim) if embedding_dim else None
        self.embedding_dim = int(embedding_dim or channels)
        self.bottleneck = nn.BatchNorm1d(self.embedding_dim) if bnneck else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(self.embedding_dim, num_classes, bias=False) if num_classes else None
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.input_mean = tuple(backbone.input_mean)
        self.input_std = tuple(backbone.input_std)
        self._init_head()

    def _init_head(self) -> None:
        if self.fc is not None:
            init_kaiming(self.fc)
        if self.bottleneck is not None:
            init_kaiming(self.bottleneck)
            self.bottleneck.bias.requires_grad_(False)  # BNNeck without shift (strong baseline)
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def embed(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature map -> (features before the BNNeck, features after it)."""
        features = self.pool(feature_map)
        if self.fc is not None:
            features = self.fc(features)
        bn_features = self.bottleneck(features) if self.bottleneck is not None else features
        return features, bn_features

    def forward(self, x: torch.Tensor) -> EmbeddingOutput | torch.Tensor:
        feature_map = self.backbone(x)
        features, bn_features = self.embed(feature_map)
        if not self.training:
            return F.normalize(bn_features, dim=1)
        logits = self.classifier(self.dropout(bn_features)) if self.classifier is not None else None
        return EmbeddingOutput(features=features, bn_features=bn_features, logits=logits,
                               feature_map=feature_map)


def _check_options(embedding_dim: int | None, num_classes: int | None, dropout: float,
                   input_size: tuple[int, int]) -> None:
    if embedding_dim is not None and embedding_dim < 1:
        raise ModelError(f"embedding_dim={embedding_dim!r}: expected a positive integer or None (no FC)")
    if num_classes is not None and num_classes < 1:
        raise ModelError(f"num_classes={num_classes!r}: expected a positive integer or None (no classifier)")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout={dropout!r}: expected 0 <= dropout < 1")
    if len(input_size) != 2 or min(input_size) < 1:
        raise ModelError(f"input_size={input_size!r}: expected (height, width)")


@register_model("embedding")
def build_embedding_model(backbone: str = "efficientnet_lite0", pretrained: bool = False, pooling: str = "gem",
                          embedding_dim: int | None = None, bnneck: bool = True, num_classes: int | None = None,
                          dropout: float = 0.0, gem_p: float = 3.0, gem_learnable: bool = True,
                          last_stride: int | None = None, input_size: tuple[int, int] = (256, 128),
                          backbone_options: dict | None = None) -> EmbeddingModel:
    """Build the embedding model. `pretrained=True` loads the backbone's offline ImageNet weights.

    last_stride=None keeps the backbone's own stride; `backbone_options` are passed to `build_backbone`.
    """
    _check_options(embedding_dim, num_classes, dropout, tuple(input_size))
    options = dict(backbone_options or {})
    if last_stride is not None:
        options["last_stride"] = last_stride
    net = build_backbone(backbone, pretrained=pretrained, **options)
    pool = build_pooling(pooling, gem_p=gem_p, gem_learnable=gem_learnable)
    return EmbeddingModel(net, pool, embedding_dim=embedding_dim, bnneck=bnneck, num_classes=num_classes,
                          dropout=dropout, input_size=tuple(input_size))
