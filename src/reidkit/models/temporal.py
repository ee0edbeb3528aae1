"""Temporal pooling over frame embeddings: one feature per tracklet (video re-ID).

    model = build_model("temporal", temporal_pooling="attention", backbone="efficientnet_lite0", num_classes=617)
    model.train(); out = model(frames, clip_len=4)  # frames (B*T, 3, H, W) -> clip-level features / logits
    model.eval();  emb = model(frames)              # (N, D) L2-normalised FRAME embeddings, as an image model

The frame encoder is the image embedding model (models/embedding.py), so an image checkpoint's weights load into
it and a temporal checkpoint embeds single images like an image model. Pooling ("Revisiting Temporal Modeling for
Video-based Person ReID", Gao & Nevatia 2018: temporal attention pooling of frame features):

- avg: the mean of the frame features;
- attention: weights softmax_t(a(f_t)) from a small learned head a (Linear-ReLU-Linear) on the L2-normalised
  frame embeddings; its last layer starts at zero, so training starts from the average;
- consensus (no parameters, any model): weights softmax_t(cos(f_t, mean) / tau): frames unlike the rest of
  their tracklet (occlusion, a wrong detection) count less.

`pool_ragged` pools tracklets of different lengths given as frame features + offsets (evaluation).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError
from .embedding import EmbeddingModel, build_embedding_model
from .registry import register_model

POOLINGS = ("avg", "attention", "consensus")
CONSENSUS_TEMPERATURE = 0.1


class TemporalAttention(nn.Module):
    """Per-frame score a(f) of an L2-normalised frame embedding; softmax over a tracklet's frames gives weights."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)  # uniform weights at the start: training starts from average pooling
        nn.init.zeros_(self.net[2].bias)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings).squeeze(-1)


class TemporalModel(nn.Module):
    """Frame encoder (an EmbeddingModel) + temporal pooling; see the module docstring."""

    def __init__(self, frame_model: EmbeddingModel, pooling: str = "attention", attention_hidden: int = 128):
        super().__init__()
        if pooling not in ("avg", "attention"):
            raise ModelError(f"temporal_pooling={pooling!r}: a temporal model trains avg or attention pooling")
        self.frame_model = frame_model
        self.pooling = pooling
        self.attention = TemporalAttention(frame_model.embedding_dim, attention_hidden) \
            if pooling == "attention" else None
        for name in ("embedding_dim", "descriptor_dim", "input_size", "input_mean", "input_std", "num_classes",
                     "local_dim"):
            setattr(self, name, getattr(frame_model, name))
        self.local_branch = None

    def clip_weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, D) normalised frame embeddings -> (B, T) pooling weights (rows sum to 1)."""
        if self.attention is None:
            return torch.full(embeddings.shape[:2], 1.0 / embeddings.shape[1], device=embeddings.device,
                              dtype=embeddings.dtype)
        return torch.softmax(self.attention(embeddings), dim=1)

    def forward(self, x: torch.Tensor, clip_len: int | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
        """Eval without clip_len: frame embeddings. With clip_len T (frames of B clips, clip-major): training
        outputs per clip ({"features", "bn_features", "logits", "weights"}), or pooled embeddings in eval."""
        fm = self.frame_model
        if clip_len is None:
            return fm(x)
        if x.shape[0] % clip_len:
            raise ModelError(f"temporal model: {x.shape[0]} frames are not whole clips of {clip_len}")
        features, bn_features = fm.embed(fm.backbone(x))
        features = features.view(-1, clip_len, features.shape[-1])
        bn_features = bn_features.view(-1, clip_len, bn_features.shape[-1])
        weights = self.clip_weights(F.normalize(bn_features, dim=-1))
        if not self.training:
            return F.normalize((weights.unsqueeze(-1) * F.normalize(bn_features, dim=-1)).sum(1), dim=1)
        # BN is affine in eval, so pooling before or after it agrees at inference; in training the frame batch
        # statistics are used once (frames), not twice.
        pooled = (weights.unsqueeze(-1) * features).sum(1)
        pooled_bn = (weights.unsqueeze(-1) * bn_features).sum(1)
        logits = fm.classifier(fm.dropout(pooled_bn)) if fm.classifier is not None else None
        return {"features": pooled, "bn_features": pooled_bn, "logits": logits, "weights": weights}

    def frame_scores(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """Attention scores of (N, D) normalised frame embeddings (None for average pooling)."""
        return None if self.attention is None else self.attention(embeddings)


def segment_ids(offsets: torch.Tensor) -> torch.Tensor:
    """Tracklet index of every frame from offsets (M + 1,): frames offsets[i]:offsets[i+1] belong to i."""
    lengths = offsets[1:] - offsets[:-1]
    if bool((lengths < 1).any()):
        raise ModelError(f"pool_ragged: tracklet {int(torch.nonzero(lengths < 1)[0])} has no frames")
    return torch.repeat_interleave(torch.arange(len(lengths), device=offsets.device), lengths)


def ragged_softmax(scores: torch.Tensor, segments: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of `scores` within each segment (vectorised: segment max, exp, segment sum)."""
    seg_max = torch.full((num_segments,), -torch.inf, dtype=scores.dtype, device=scores.device)
    seg_max = seg_max.scatter_reduce(0, segments, scores, "amax")
    e = torch.exp(scores - seg_max[segments])
    total = torch.zeros(num_segments, dtype=scores.dtype, device=scores.device).index_add_(0, segments, e)
    return e / total[segments]


@torch.no_grad()
def pool_ragged(features: torch.Tensor, offsets: torch.Tensor, pooling: str = "avg",
                scores: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D) frame embeddings of M tracklets (frames offsets[i]:offsets[i+1]) -> (M, D) L2-normalised tracklet
    features. `scores`: per-frame attention scores (pooling "attention", from `TemporalModel.frame_scores`)."""
    if pooling not in POOLINGS:
        raise ModelError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
    segments = segment_ids(offsets)
    num = len(offsets) - 1
    features = F.normalize(features.float(), dim=1)
    if pooling == "avg":
        scores = torch.zeros(len(features), dtype=features.dtype, device=features.device)
    elif pooling == "consensus":
        mean = torch.zeros(num, features.shape[1], dtype=features.dtype).index_add_(0, segments, features)
        scores = (features * F.normalize(mean, dim=1)[segments]).sum(1) / CONSENSUS_TEMPERATURE
    elif scores is None:
        raise ModelError("pooling=attention needs attention scores: a checkpoint trained with temporal_pooling="
                         "attention (reidkit train --config configs/cuhk03np_tracklet.yaml); an image model can "
                         "use avg or consensus")
    weights = ragged_softmax(scores.float(), segments, num)
    pooled = torch.zeros(num, features.shape[1], dtype=features.dtype).index_add_(0, segments,
                                                                                 weights[:, None] * features)
    return F.normalize(pooled, dim=1)


@register_model("temporal", task="tracklet", options=("temporal_pooling", "attention_hidden"))
def build_temporal_model(temporal_pooling: str = "attention", attention_hidden: int = 128,
                         **embedding_options) -> TemporalModel:
    """A temporal model around `build_embedding_model(**embedding_options)` (same backbones and options)."""
    if attention_hidden < 1:
        raise ModelError(f"attention_hidden={attention_hidden!r}: expected a positive integer")
    return TemporalModel(build_embedding_model(**embedding_options), temporal_pooling, attention_hidden)
