"""Global embedding model: backbone -> pooling -> optional FC -> BNNeck -> (classifier for the ID loss).

Follows the re-ID strong baseline (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person
Re-identification", CVPRW 2019): the triplet loss sees the features before the BNNeck, the classifier
(bias-free) sees them after it, the BNNeck shift is frozen, and retrieval uses the BN features.

    model = build_model("embedding", backbone="efficientnet_lite0", pretrained=True, num_classes=751)
    model.train(); out = model(x)   # {"features", "bn_features", "logits", "feature_map"}
    model.eval();  emb = model(x)   # (N, D), L2-normalised

With `local_dim > 0` the AlignedReID local branch (`reidkit.models.aligned.LocalBranch`) sits beside the global
head: training outputs gain "local_features" (N, stripes, local_dim), and `model.embed_with_local(x)` returns
(global embedding, local features) for inference; `model(x)` in eval mode stays the global embedding.
"""

from __future__ import annotations

from typing import TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .aligned import LocalBranch
from .backbones import build_backbone
from .backbones.pretrained import LoadReport, load_user_weights
from .pooling import build_pooling
from .registry import register_model

__all__ = ["EmbeddingModel", "EmbeddingOutput", "LoadReport", "build_embedding_model", "load_user_weights"]


class _EmbeddingOutputBase(TypedDict):
    features: torch.Tensor  # (N, D) before the BNNeck: for triplet / metric losses
    bn_features: torch.Tensor  # (N, D) after the BNNeck (== features without bnneck)
    logits: torch.Tensor | None  # (N, num_classes) for the ID loss, None without a classifier
    feature_map: torch.Tensor  # (N, C, h, w) backbone output: for local / part branches (AlignedReID)


class EmbeddingOutput(_EmbeddingOutputBase, total=False):
    local_features: torch.Tensor  # (N, h, local_dim) stripe features: only with a local branch (AlignedReID)


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
                 input_size: tuple[int, int] = (256, 128), local_dim: int = 0, local_pool: str = "max"):
        super().__init__()
        self.backbone = backbone
        self.pool = pooling
        channels = int(backbone.out_channels)
        self.fc = nn.Linear(channels, embedding_dim) if embedding_dim else None
        self.embedding_dim = int(embedding_dim or channels)
        self.bottleneck = nn.BatchNorm1d(self.embedding_dim) if bnneck else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(self.embedding_dim, num_classes, bias=False) if num_classes else None
        # AlignedReID local branch on the same feature map (0 = none); the global head is unchanged.
        self.local_branch = LocalBranch(channels, local_dim, local_pool) if local_dim else None
        self.local_dim = int(local_dim)
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

    @property
    def descriptor_dim(self) -> int:
        """Width of the eval-mode descriptor (what an extractor returns); part and attribute heads add to it."""
        return self.embedding_dim

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
        out = EmbeddingOutput(features=features, bn_features=bn_features, logits=logits, feature_map=feature_map)
        if self.local_branch is not None:
            out["local_features"] = self.local_branch(feature_map)
        return out

    def embed_with_local(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """AlignedReID inference in one backbone pass: (L2-normalised global embedding (N, D), local stripe
        features (N, h, local_dim)). Call in eval mode. The local features are left as trained (not normalised):
        the local triplet loss shaped their scale through the squashed distance d = tanh(x / 2).
        """
        if self.local_branch is None:
            raise ModelError("embed_with_local: this model has no local branch (build it with local_dim > 0)")
        feature_map = self.backbone(x)
        _, bn_features = self.embed(feature_map)
        return F.normalize(bn_features, dim=1), self.local_branch(feature_map)


def _check_options(embedding_dim: int | None, num_classes: int | None, dropout: float,
                   input_size: tuple[int, int], local_dim: int = 0, local_pool: str = "max") -> None:
    if embedding_dim is not None and embedding_dim < 1:
        raise ModelError(f"embedding_dim={embedding_dim!r}: expected a positive integer or None (no FC)")
    if num_classes is not None and num_classes < 1:
        raise ModelError(f"num_classes={num_classes!r}: expected a positive integer or None (no classifier)")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout={dropout!r}: expected 0 <= dropout < 1")
    if len(input_size) != 2 or min(input_size) < 1:
        raise ModelError(f"input_size={input_size!r}: expected (height, width)")
    if isinstance(local_dim, bool) or not isinstance(local_dim, int) or local_dim < 0:
        raise ModelError(f"local_dim={local_dim!r}: expected 0 (no local branch) or a positive integer (128 in "
                         "AlignedReID)")
    if local_pool not in ("max", "avg"):
        raise ModelError(f"local_pool={local_pool!r}: expected 'max' (AlignedReID paper) or 'avg'")


@register_model("embedding")
def build_embedding_model(backbone: str = "efficientnet_lite0", pretrained: bool = False, pooling: str = "gem",
                          embedding_dim: int | None = None, bnneck: bool = True, num_classes: int | None = None,
                          dropout: float = 0.0, gem_p: float = 3.0, gem_learnable: bool = True,
                          last_stride: int | None = None, input_size: tuple[int, int] = (256, 128),
                          backbone_options: dict | None = None, local_dim: int = 0,
                          local_pool: str = "max") -> EmbeddingModel:
    """Build the embedding model. `pretrained=True` loads the backbone's offline ImageNet weights.

    last_stride=None keeps the backbone's own stride; `backbone_options` are passed to `build_backbone`.
    local_dim > 0 adds the AlignedReID local branch (one `local_dim` feature per feature-map row, rows pooled by
    `local_pool`: "max" as in the paper, "avg" as in the popular re-implementation).
    """
    _check_options(embedding_dim, num_classes, dropout, tuple(input_size), local_dim, local_pool)
    options = dict(backbone_options or {})
    if last_stride is not None:
        options["last_stride"] = last_stride
    net = build_backbone(backbone, pretrained=pretrained, **options)
    pool = build_pooling(pooling, gem_p=gem_p, gem_learnable=gem_learnable)
    return EmbeddingModel(net, pool, embedding_dim=embedding_dim, bnneck=bnneck, num_classes=num_classes,
                          dropout=dropout, input_size=tuple(input_size), local_dim=local_dim,
                          local_pool=local_pool)
