"""Typed training configuration for embedding models (YAML + `section.key=value` CLI overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.transforms import AugmentConfig


@dataclass
class ModelConfig:
    name: str = "embedding"
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    pooling: str = "gem"  # avg | max | gem
    embedding_dim: int | None = None  # optional FC to this size
    bnneck: bool = True
    dropout: float = 0.0
    last_stride: int | None = None  # 1 keeps a larger final map (strong-baseline practice); None = backbone default
    local_dim: int = 0  # AlignedReID local branch: features per feature-map row (128 in the paper); 0 = off
    local_pool: str = "max"  # row pooling of the local branch: max (paper) | avg (popular re-implementation)


@dataclass
class DataConfig:
    root: str = ""  # dataset root (Market layout, image folder or manifest); `--data` overrides
    validation: str = "carve"  # carve: hold out `val_ids` training identities | dataset: use query/gallery | none
    val_ids: int = 150
    split_seed: int = 0
    height: int = 256
    width: int = 128
    resize: str = "stretch"  # stretch | pad (keep aspect)


@dataclass
class LossConfig:
    id_loss: str = "ce"  # "ce" (label-smoothed) or "none"
    id_weight: float = 1.0
    label_smooth: float = 0.1
    metric_loss: str = "triplet_batch_hard"  # any metric loss name of reidkit.losses, or "none"
    metric_weight: float = 1.0
    margin: float = 0.3
    soft_margin: bool = False
    metric_params: dict[str, Any] = field(default_factory=dict)  # extra loss arguments, e.g. {alpha: 0.3, beta: 0.15}
    # AlignedReID local batch-hard triplet (same margin; hard samples mined on the GLOBAL distance). Needs
    # model.local_dim > 0; joins with the ranking loss after optim.pretrain_epochs. 0 = off.
    local_weight: float = 0.0
    # Mutual learning (two students): weights of the KL and metric mutual terms.
    mutual_kl_weight: float = 1.0
    mutual_metric_weight: float = 1.0
    # Metric mutual term on the distances of L2-normalised features, as AlignedReID's mutual learning trains it.
    # On the raw 1280-d features the term reached 3-13 (more than CE) and both students collapsed (docs/benchmarks/
    # losses_cuhk03np.md).
    mutual_normalize: bool = True


@dataclass
class OptimConfig:
    epochs: int = 30
    pretrain_epochs: int = 0  # classification-only phase before the ranking loss joins
    p: int = 16  # identities per batch
    k: int = 4  # images per identity
    accum_steps: int = 1  # gradient accumulation -> effective batch p*k*accum_steps
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 2
    scheduler: str = "cosine"  # cosine | step
    milestones: list[int] = field(default_factory=lambda: [20, 40])
    gamma: float = 0.1
    grad_clip: float = 0.0


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    students: int = 1  # 2 = deep mutual learning of two copies of the model, each with its own optimiser
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision, used on CUDA only
    num_threads: int = 0  # torch CPU threads (0 = torch default)
    channels_last: bool = True  # NHWC memory format: ~2x faster training of the mobile backbones on CPU
    eval_every: int = 1
    flip_tta: bool = False  # average embeddings of the image and its mirror at validation
    # With a local branch, validation also reports "val_local": global euclidean + val_local_weight * local distance.
    val_local_weight: float = 1.0
    select_on: str = "val"  # which validation mAP picks best.pt: val (global) | val_local (global + local)
    max_minutes: float = 0.0  # stop after this wall time (0 = no limit); the run stays resumable
