"""The tracklet task (video re-ID) and tracklet evaluation.

Training (the embedding task's losses, optimiser and schedule, with clips instead of images): the training images
are grouped into tracklets by (pid, camera[, sequence]); a batch is P identities x K tracklets, each as a clip of
T frames drawn by restricted random sampling; frames are augmented like images, embedded by the frame encoder,
pooled (avg or the learned attention) into one feature per clip; identity loss on the clip logits + ranking loss
on the pooled features. Validation: tracklet-level rank-1 / mAP / mINP (best.pt on its mAP) and, from the same
frame embeddings, the image-level figures of the same model (`val_image`).

Evaluation (`evaluate_tracklets`, used by validation and `reidkit evaluate --tracklets`): every frame embedded
once, tracklet features by pooling (avg / attention / consensus) or set distances (mean feature / min over
frame pairs), then the MARS protocol: reidkit.metrics.evaluate_rank_full (same pid + camera gallery items removed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...checkpoint import init_weights_from, load_checkpoint, model_from_checkpoint
from ...data.images import load_image_tensor
from ...data.records import relabel, split_arrays
from ...data.sampler import PKSampler
from ...data.tracklets import (
    Tracklet,
    TrackletDataset,
    group_records,
    restricted_random_sample,
    tracklet_arrays,
)
from ...data.transforms import BatchAugment
from ...distance import compute_distance_matrix, set_distance_matrix
from ...errors import ConfigError, DataError, ModelError
from ...inference.features import embed_tensor, require_finite_features
from ...metrics import evaluate_rank_full, summarize
from ...metrics.rank import RankResult
from ...models import build_model
from ...models.temporal import POOLINGS, TemporalModel, pool_ragged
from ..config import TEMPORAL_POOLINGS, TRACKLET_PROTOCOLS, TrackletTrainConfig
from ..splits import describe_split, prepare_splits
from .base import Member, register_task
from .embedding import EmbeddingTask

# ------------------------------------------------------------------------------------------------ evaluation


@dataclass
class FrameEmbedder:
    """Embeds frames with a checkpoint (image or temporal model) or any reidkit inference backend; `scores`
    gives the learned attention scores of a temporal checkpoint (None otherwise)."""

    model: nn.Module | None
    extractor: Any = None  # a FeatureExtractor (ONNX / OpenVINO) when model is None
    input_size: tuple[int, int] = (256, 128)
    resize: str = "stretch"
    device: torch.device = torch.device("cpu")
    flip: bool = False
    batch_size: int = 128

    @property
    def has_attention(self) -> bool:
        return isinstance(self.model, TemporalModel) and self.model.attention is not None

    def embed(self, paths: list[str], show_progress: bool = False) -> torch.Tensor:
        if self.model is None:
            return torch.from_numpy(np.asarray(self.extractor.embed(paths, show_progress=show_progress)))
        images = load_image_tensor(paths, self.input_size, self.resize, show_progress, desc="decoding frames")
        return self.embed_uint8(images, show_progress)

    def embed_uint8(self, images: torch.Tensor, show_progress: bool = False) -> torch.Tensor:
        m = self.model
        feats = embed_tensor(m, images, mean=m.input_mean, std=m.input_std, device=self.device, flip=self.flip,
                             batch_size=self.batch_size, show_progress=show_progress, desc="embedding frames")
        return torch.from_numpy(require_finite_features(feats.numpy(), "frame embeddings"))

    @torch.no_grad()
    def scores(self, features: torch.Tensor) -> torch.Tensor | None:
        if not self.has_attention:
            return None
        self.model.eval()
        return self.model.frame_scores(features.to(self.device)).float().cpu()


def frame_embedder(spec: str | Path, device: str = "auto", flip: bool = False, batch_size: int = 128
                   ) -> FrameEmbedder:
    """A FrameEmbedder for a reidkit checkpoint (image `embedding` or `temporal` model) or an ONNX / OpenVINO
    model (through reidkit.inference.backends)."""
    from ...utils import resolve_device

    path = Path(spec)
    if path.suffix.lower() not in (".pt", ".pth"):
        from ...inference.backends import build_extractor

        ext = build_extractor(path, device=device, batch_size=batch_size, flip=flip)
        return FrameEmbedder(None, ext, tuple(ext.input_size), ext.resize, flip=flip, batch_size=batch_size)
    from ...models.registry import model_spec

    dev = resolve_device(device)
    name = load_checkpoint(path)["model_name"]
    if model_spec(name).task == "pair":
        raise ModelError(f"checkpoint {path}: model {name!r} is a pair network; tracklets need a model that embeds "
                         "frames (an embedding or temporal checkpoint)")
    model, payload = model_from_checkpoint(path, map_location=dev)
    model.to(dev).eval()
    resize = payload.get("config", {}).get("data", {}).get("resize", "stretch")
    return FrameEmbedder(model, None, tuple(model.input_size), resize, dev, flip, batch_size)


@dataclass
class TrackletFeatures:
    """Frame embeddings of tracklets, frames offsets[i]:offsets[i+1] belonging to tracklet i."""

    frames: torch.Tensor
    offsets: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    scores: torch.Tensor | None = None


def gather_features(tracklets: list[Tracklet], features: torch.Tensor, row: dict[str, int],
                    scores: torch.Tensor | None) -> TrackletFeatures:
    paths, pids, camids, offsets = tracklet_arrays(tracklets)
    index = torch.as_tensor([row[p] for p in paths], dtype=torch.long)
    return TrackletFeatures(features[index], offsets, pids, camids, None if scores is None else scores[index])


def tracklet_distances(query: TrackletFeatures, gallery: TrackletFeatures, pooling: str = "avg",
                       set_distance: str = "mean", metric: str = "cosine") -> np.ndarray:
    """(num query, num gallery) tracklet distances: pooled features ("mean") or the closest frame pair ("min")."""
    if set_distance == "min":
        return set_distance_matrix(query.frames, query.offsets, gallery.frames, gallery.offsets, "min", metric)
    q = pool_ragged(query.frames, torch.from_numpy(query.offsets), pooling, query.scores)
    g = q if gallery is query else pool_ragged(gallery.frames, torch.from_numpy(gallery.offsets), pooling,
                                               gallery.scores)
    return compute_distance_matrix(q.numpy(), g.numpy(), metric=metric)


def check_evaluation_options(pooling: str, set_distance: str, has_attention: bool, where: str) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    if set_distance not in ("mean", "min"):
        raise ConfigError(f"set distance {set_distance!r}: expected mean or min")
    if set_distance == "min" and pooling != "avg":
        raise ConfigError(f"set distance min compares frames, not pooled features: pooling {pooling!r} does not "
                          "apply (use --set-distance mean with it)")
    if pooling == "attention" and not has_attention:
        raise ConfigError(f"pooling attention: {where} has no learned attention head (only a temporal checkpoint "
                          "trained with temporal_pooling=attention has one); use avg or consensus")


def evaluate_tracklets(embedder: FrameEmbedder, dataset: TrackletDataset, pooling: str = "avg",
                       set_distance: str = "mean", metric: str = "cosine", max_rank: int = 50,
                       show_progress: bool = True) -> tuple[RankResult, dict[str, Any]]:
    """MARS-protocol evaluation of query tracklets against gallery tracklets; (result, arrays: distmat, ids,
    features, the paths of each tracklet's first frame)."""
    check_evaluation_options(pooling, set_distance, embedder.has_attention, "the model")
    if not dataset.query or not dataset.gallery:
        raise DataError(f"{dataset.name}: needs query and gallery tracklets to evaluate")
    paths = list(dict.fromkeys(p for t in dataset.query + dataset.gallery for p in t.paths))
    features = embedder.embed(paths, show_progress)
    scores = embedder.scores(features)
    row = {p: i for i, p in enumerate(paths)}
    query = gather_features(dataset.query, features, row, scores)
    gallery = query if dataset.gallery is dataset.query else gather_features(dataset.gallery, features, row, scores)
    distmat = tracklet_distances(query, gallery, pooling, set_distance, metric)
    result = evaluate_rank_full(distmat, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=max_rank)
    arrays = {"distmat": distmat, "q_pids": query.pids, "g_pids": gallery.pids, "q_camids": query.camids,
              "g_camids": gallery.camids, "q_paths": np.asarray([t.paths[0] for t in dataset.query]),
              "g_paths": np.asarray([t.paths[0] for t in dataset.gallery])}
    return result, arrays


# -------------------------------------------------------------------------------------------------- training


@register_task("tracklet")
class TrackletTask(EmbeddingTask):
    config_class = TrackletTrainConfig
    best_key = "mAP"
    supports_distillation = False

    def __init__(self, cfg: TrackletTrainConfig, data_root: str | Path | None = None, show_progress: bool = True):
        if cfg.model.temporal_pooling not in TEMPORAL_POOLINGS:
            raise ConfigError(f"model.temporal_pooling={cfg.model.temporal_pooling!r}: expected "
                              f"{' or '.join(TEMPORAL_POOLINGS)}")
        if cfg.data.val_protocol not in TRACKLET_PROTOCOLS:
            raise ConfigError(f"data.val_protocol={cfg.data.val_protocol!r}: expected "
                              f"{' or '.join(TRACKLET_PROTOCOLS)}")
        if cfg.students != 1:
            raise ConfigError(f"students={cfg.students}: the tracklet task trains one model")
        if cfg.model.local_dim:
            raise ConfigError("model.local_dim: the tracklet task has no AlignedReID local branch")
        super().__init__(cfg, data_root, show_progress)

    def setup(self) -> None:
        cfg = self.cfg
        self.splits = prepare_splits(self.data_root, cfg.data)
        train, self.label_map = relabel(self.splits.train)
        self.num_classes = len(self.label_map)
        self.train_tracklets = group_records(train, cfg.data.by_sequence)
        paths, labels, _, offsets = tracklet_arrays(self.train_tracklets)
        self.train_labels, self.offsets = labels, offsets
        self.lengths = np.diff(offsets)
        print(describe_split(self.splits) + f"; training tracklets {len(self.train_tracklets):,} "
              f"({self.lengths.mean():.1f} frames each), clips of {cfg.data.clip_len}", flush=True)
        size = (cfg.data.height, cfg.data.width)
        self.train_images = self._load_train_images(paths, "train frames")  # in memory, or streamed (data.stream)
        self.has_val = bool(self.splits.query)
        if self.has_val:
            self._setup_validation(size)
        self.sampler = PKSampler(self.train_labels, cfg.optim.p, cfg.optim.k, seed=cfg.seed)
        self.model_name = cfg.model.name
        self.model_cfg = cfg.model.builder_kwargs()
        self.model_cfg.update(num_classes=self.num_classes, input_size=size)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = build_model(cfg.model.name, **self.model_cfg)
        if not isinstance(model, TemporalModel):
            raise ConfigError(f"model.name={cfg.model.name!r}: the tracklet task trains temporal models")
        if cfg.init_from:
            print("frame encoder: " + init_weights_from(model.frame_model, "embedding", cfg.init_from, self.label_map),
                  flush=True)
        self.models = [model.to(self.device, memory_format=self.memory_format)]
        self.mean, self.std = model.input_mean, model.input_std
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.optim.accum_steps)
        self.augment = BatchAugment(cfg.augment)
        self._build_losses()

    def _setup_validation(self, size: tuple[int, int]) -> None:
        cfg, splits = self.cfg, self.splits
        val_records = splits.query + splits.gallery
        self.val_paths = [r.path for r in val_records]
        self.val_images = load_image_tensor(self.val_paths, size, cfg.data.resize, self.show_progress,
                                            desc="loading validation frames")
        if cfg.data.val_protocol == "pooled":
            pooled = group_records(val_records, cfg.data.by_sequence)
            self.val_tracklets = TrackletDataset(query=pooled, gallery=pooled, protocol="pooled")
        else:
            self.val_tracklets = TrackletDataset(query=group_records(splits.query, cfg.data.by_sequence),
                                                 gallery=group_records(splits.gallery, cfg.data.by_sequence))
        print(f"validation tracklets ({cfg.data.val_protocol}): {len(self.val_tracklets.query)} query, "
              f"{len(self.val_tracklets.gallery)} gallery", flush=True)

    def optimizer(self, member: Member) -> torch.optim.Optimizer:
        """The embedding task's optimiser; the attention head in its own group at attention_lr_mult x lr."""
        optimizer = super().optimizer(member)
        head = member.model.attention
        if head is None or self.cfg.attention_lr_mult == 1.0:
            return optimizer
        ids = {id(p) for p in head.parameters()}
        group = optimizer.param_groups[0]
        group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.add_param_group({"params": list(head.parameters()),
                                   "lr": group["lr"] * self.cfg.attention_lr_mult})
        return optimizer

    # --------------------------------------------------------------- training
    def _clip_batch(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Frame indices (len(idx) * T,) of one restricted-random clip per sampled tracklet, clip-major."""
        picks = restricted_random_sample(self.lengths[idx], self.cfg.data.clip_len, rng)
        return (self.offsets[idx][:, None] + picks).ravel()

    def _step_losses(self, x: torch.Tensor, labels: torch.Tensor, ranking: bool) -> dict[str, torch.Tensor]:
        out = self.models[0](x, clip_len=self.cfg.data.clip_len)
        return self._student_loss(out, labels, ranking, 0)

    def _batch_rows(self, idx: np.ndarray, epoch: int) -> np.ndarray:
        # one generator per epoch, drawn in batch order: the same clips whatever happened in earlier epochs
        if getattr(self, "_clip_epoch", None) != epoch:
            self._clip_rng, self._clip_epoch = np.random.default_rng([self.cfg.seed, epoch, 7]), epoch
        return self._clip_batch(idx, self._clip_rng)

    # ------------------------------------------------------------- validation
    def validate(self) -> dict[str, Any]:
        """val: tracklets with the model's pooling; val_avg (attention models): average pooling; val_image: the
        image-level query/gallery of the same validation identities."""
        model = self.models[0]
        embedder = FrameEmbedder(model, input_size=tuple(model.input_size), device=self.device,
                                 flip=self.cfg.flip_tta)
        features = embedder.embed_uint8(self.val_images, self.show_progress)
        scores = embedder.scores(features)
        row_of = {p: i for i, p in enumerate(self.val_paths)}
        vt = self.val_tracklets
        query = gather_features(vt.query, features, row_of, scores)
        gallery = query if vt.gallery is vt.query else gather_features(vt.gallery, features, row_of, scores)
        out: dict[str, Any] = {}
        poolings = [("val", self.cfg.model.temporal_pooling)] + \
            ([("val_avg", "avg")] if self.cfg.model.temporal_pooling != "avg" else [])
        for key, pooling in poolings:
            out[key] = _summary(tracklet_distances(query, gallery, pooling), query, gallery)
        nq = len(self.splits.query)  # image level: the carve's query images against its gallery images
        _, q_pids, q_cams = split_arrays(self.splits.query)
        _, g_pids, g_cams = split_arrays(self.splits.gallery)
        r = evaluate_rank_full(compute_distance_matrix(features[:nq].numpy(), features[nq:].numpy(), "cosine"),
                               q_pids, g_pids, q_cams, g_cams)
        out["val_image"] = summarize(r.cmc, r.mAP, r.mINP)
        return out

    def selection(self, row: dict[str, Any]) -> dict[str, Any]:
        return dict(row["val"])

    def console_line(self, row: dict[str, Any], best: dict[str, Any]) -> str:
        v, im = row["val"], row["val_image"]
        return (f"epoch {row['epoch']}/{self.epochs} validation: tracklets rank-1 {v['rank1']:.1f}%  mAP "
                f"{v['mAP']:.1f}%  (images rank-1 {im['rank1']:.1f}%  mAP {im['mAP']:.1f}%)  (best tracklet mAP "
                f"{best['mAP']:.1f}% at epoch {best['epoch']})")

    def report(self, summary: dict[str, Any]) -> None:
        best = summary["best"]
        if best:
            print(f"best tracklet validation (epoch {best['epoch']}): rank-1 {best['rank1']:.1f}  mAP "
                  f"{best['mAP']:.1f}  mINP {best['mINP']:.1f}")


def _summary(distmat: np.ndarray, query: TrackletFeatures, gallery: TrackletFeatures) -> dict[str, Any]:
    r = evaluate_rank_full(distmat, query.pids, gallery.pids, query.camids, gallery.camids)
    return summarize(r.cmc, r.mAP, r.mINP)
