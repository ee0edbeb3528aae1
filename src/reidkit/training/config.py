"""Typed training configurations, one per task (YAML + `section.key=value` CLI overrides): `TrainConfig` for
embedding models, `PairTrainConfig` for pair networks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..data.transforms import AugmentConfig
from ..errors import ConfigError
from ..losses import build_loss, list_losses, loss_class, loss_parameters
from ..models.registry import builder_params, list_models, model_spec

VALIDATION_MODES = ("auto", "carve", "dataset", "none")


@dataclass
class ModelConfig:
    name: str = "embedding"
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    pooling: str = "gem"  # avg | max | gem | rmac
    embedding_dim: int | None = None  # optional FC to this size
    bnneck: bool = True
    dropout: float = 0.0
    last_stride: int | None = None  # 1 keeps a larger final map (strong-baseline practice); None = backbone default
    local_dim: int = 0  # AlignedReID local branch: features per feature-map row (128 in the paper); 0 = off
    local_pool: str = "max"  # row pooling of the local branch: max (paper) | avg (popular re-implementation)
    # Further keyword arguments of the model's builder (timm's create_model(name, **kwargs)), e.g. {parts: 6} for
    # PL-Net or {alpha: 0.3} for GLAD; a name the builder does not take is a ConfigError naming it.
    params: dict[str, Any] = field(default_factory=dict)

    def builder_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `build_model(self.name, ...)`: the set options, then `params` (checked against
        the builder's signature)."""
        kwargs = {k: v for k, v in asdict(self).items() if k not in ("name", "params") and v is not None}
        return {**kwargs, **builder_params(self.name, self.params)}


@dataclass
class DataConfig:
    root: str = ""  # dataset root (Market layout, image folder or manifest); `--data` overrides
    # auto: the root's own query/gallery if it has them (e.g. made by `reidkit split`), else carve | carve: hold out
    # `val_ids` training identities | dataset: the root's query/gallery | none
    validation: str = "carve"
    val_ids: int = 150
    split_seed: int = 0
    height: int = 256
    width: int = 128
    resize: str = "stretch"  # stretch | pad (keep aspect)
    # Streaming: training images come from a decoded-image cache on disk (one memory-mapped uint8 .npy, built once,
    # reused while the files are unchanged) through a DataLoader with `workers` processes, instead of one
    # in-memory tensor per process (docs/scale.md). Same batches, same augmentation.
    stream: bool = False
    workers: int = 2  # DataLoader worker processes reading cache rows (stream only; 0 = the main process)
    cache_dir: str = ""  # where decoded-image caches live ("" = utils.cache_root()/decoded: ~/.cache/reidkit/decoded)


@dataclass
class LossConfig:
    id_loss: str = "ce"  # any registered loss on logits or embeddings ("ce" label-smoothed, "center", ...) or "none"
    id_weight: float = 1.0
    label_smooth: float = 0.1
    id_params: dict[str, Any] = field(default_factory=dict)  # extra arguments of the identity loss
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
    # More loss terms, active from the first epoch: [{name: center, weight: 0.0005}, ...] (other keys are the
    # loss's arguments). A loss with parameters (the centres of "center") is trained with the model and saved in
    # the checkpoint.
    extra: list[dict[str, Any]] = field(default_factory=list)


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
class DistillConfig:
    """Knowledge distillation from a frozen teacher (docs/training.md "Distillation"); empty teacher = off.

    The teacher embeds the un-augmented training images once, flip-averaged (cached by teacher file, images and
    settings), and the student learns how the teacher relates the samples of each batch. A teacher forward pass
    on every augmented batch would cost more than the student's whole step on a CPU (OSNet x1.0 at 256x128)."""

    teacher: str = ""  # a reidkit checkpoint (.pt), an ONNX model or an OpenVINO IR (.xml): any extract backend
    backend: str = "auto"  # the teacher's backend: auto | torch | onnxruntime | openvino
    darkrank_weight: float = 1.0  # DarkRank hard transfer (listwise ranking, Chen et al. 2018)
    darkrank_alpha: float = 3.0
    darkrank_beta: float = 3.0
    darkrank_list_size: int = 0  # positions of each teacher ranking that count (0 = the whole batch)
    similarity_weight: float = 0.0  # MSE of the two cosine-similarity matrices of the batch
    feature_weight: float = 0.0  # cosine distance of each image's student and teacher embedding (same size)
    # true: the teacher embeds every augmented training batch (the student's own views, resized to the teacher's
    # input) instead of the un-augmented images once; pays with an OpenVINO / ONNX export of the teacher
    online: bool = False


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    students: int = 1  # 2 = deep mutual learning of two copies of the model, each with its own optimiser
    distill: DistillConfig = field(default_factory=DistillConfig)
    # A checkpoint whose weights start training instead of model.pretrained: every tensor must fit, the classifier
    # is kept only when it was trained on the same identities (e.g. a student that starts from its teacher).
    # The tracklet task starts its frame encoder from an image or temporal checkpoint.
    init_from: str = ""
    # Exponential moving average of the weights (training/ema.py): validation, best.pt and the final weights use
    # the average; 0 = off, 0.999 is usual (about the last 1,000 steps)
    ema_decay: float = 0.0
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
    # Distributed runs (torchrun / --nproc): BatchNorm layers whose batch statistics span all ranks: neck (the
    # BNNeck, whose statistics over few identities per rank are noisiest) | all | none
    sync_bn: str = "neck"
    dist_timeout_minutes: float = 30.0  # a collective waiting longer than this fails the run (a hung rank)


# ------------------------------------------------------------------------------------------------ tracklets
TEMPORAL_POOLINGS = ("avg", "attention")
TRACKLET_PROTOCOLS = ("pooled", "split")


@dataclass
class TrackletModelConfig(ModelConfig):
    name: str = "temporal"  # any model registered with task="tracklet"
    temporal_pooling: str = "attention"  # avg | attention (a small learned head over the frame embeddings)
    attention_hidden: int = 128  # hidden units of the attention head


@dataclass
class TrackletDataConfig(DataConfig):
    clip_len: int = 4  # T frames per training clip (restricted random sampling: one frame from each of T chunks)
    by_sequence: bool = True  # group Market names also by their sequence sN (camera, sequence) when present
    # Validation tracklets: pooled = the validation query + gallery images grouped by (pid, camera), every tracklet
    # against the others (same pid + camera removed) | split = query/ and gallery/ grouped separately
    val_protocol: str = "pooled"


@dataclass
class TrackletTrainConfig(TrainConfig):
    """The tracklet task: P identities x K clips of T frames, temporal pooling head (docs/tracklets.md)."""

    model: TrackletModelConfig = field(default_factory=TrackletModelConfig)
    data: TrackletDataConfig = field(default_factory=TrackletDataConfig)
    # Learning rate of the attention head as a multiple of optim.lr: its last layer starts at zero and Adam moves it
    # by about lr per step, so at a fine-tuning lr it stays near uniform for a long time (docs/tracklets.md).
    attention_lr_mult: float = 1.0


# ------------------------------------------------------------------------------------------------ pair networks
@dataclass
class PairModelConfig:
    name: str = "idla"  # any model registered with task="pair": idla | idla_ncc | mls | ...
    dropout: float = 0.5
    mode: str = "replace"  # idla_ncc: NCC "replace"s or sits "beside" the neighbourhood differences
    row_radius: int = 2  # idla_ncc: search band = rows y-r..y+r, whole width
    channels_last: bool = True
    batchnorm: bool = False  # idla, idla_ncc: BatchNorm after the tied convolutions (not in the paper)
    levels: list[str] = field(default_factory=lambda: ["low", "mid", "high"])  # mls: CSN after these stages
    use_stn: bool = True  # mls: STN-placed patches (false: fixed patches)
    patch_size: list[int] = field(default_factory=lambda: [3, 3])  # mls: kernel patch (height, width), odd
    num_patches: int = 1  # mls: patches per view and level

    def build_kwargs(self, input_size: tuple[int, int]) -> dict[str, Any]:
        """Builder arguments: the options every pair model takes, plus those its registration declares."""
        if self.name not in list_models("pair"):
            raise ConfigError(f"model.name={self.name!r}: the pair task trains {', '.join(list_models('pair'))}")
        spec = model_spec(self.name)
        self._check_applicable(spec.options)
        kwargs: dict[str, Any] = {"input_size": list(input_size), "dropout": self.dropout,
                                  "channels_last": self.channels_last}
        for option in spec.options:
            value = getattr(self, option)
            kwargs[option] = list(value) if isinstance(value, list) else value
        return kwargs

    def _check_applicable(self, own: tuple[str, ...]) -> None:
        """A model-specific option set for another model would be silently ignored: refuse it instead."""
        defaults = PairModelConfig()
        for option in (f.name for f in fields(self)):
            if option in own or option in COMMON_PAIR_OPTIONS or getattr(self, option) == getattr(defaults, option):
                continue
            takers = [n for n in list_models("pair") if option in model_spec(n).options]
            raise ConfigError(f"model.{option}={getattr(self, option)!r} applies to model.name "
                              f"{' / '.join(takers)}, not {self.name!r}: remove it or change model.name")


COMMON_PAIR_OPTIONS = ("name", "dropout", "channels_last")


@dataclass
class PairLossConfig:
    # ce: cross-entropy on the pair logits | any registered loss on pair logits, e.g. improved_ranking (MLS
    # paper: cross-entropy + a margin between the positive and the negative pair of each anchor)
    name: str = "ce"
    margin: float = 0.5  # improved_ranking: s(anchor, positive) - s(anchor, negative) must reach this
    verification_weight: float = 1.0
    ranking_weight: float = 1.0
    score: str = "prob"  # improved_ranking: s = P(same) ("prob") or the log-odds ("logit")
    # Identity classification of each image's trunk features beside the pair loss (verification +
    # identification, Zheng et al. 2017): a training-only head; 0 = off (the papers' pair loss alone).
    id_weight: float = 0.0
    id_label_smooth: float = 0.1

    def build(self) -> Any:
        """The loss module on pair logits, or None for plain cross-entropy."""
        if self.name not in pair_losses():
            raise ConfigError(f"loss.name={self.name!r}: the pair task supports {', '.join(pair_losses())}")
        if self.name == "ce":
            return None
        settings = {"margin": self.margin, "verification_weight": self.verification_weight,
                    "ranking_weight": self.ranking_weight, "score": self.score}
        accepted = loss_parameters(self.name)
        return build_loss(self.name, **{k: v for k, v in settings.items() if k in accepted})


def pair_losses() -> list[str]:
    """"ce" (cross-entropy on the pair logits) and every registered loss on pair logits."""
    return ["ce"] + [n for n in list_losses() if getattr(loss_class(n), "inputs", "") == "pair_logits"]


@dataclass
class PairDataConfig:
    root: str = ""  # dataset root (Market layout, or a root with only bounding_box_train); --data overrides
    validation: str = "carve"  # auto | carve: hold out `val_ids` identities | dataset | none (see DataConfig)
    val_ids: int = 150
    split_seed: int = 0
    height: int = 160
    width: int = 60
    resize: str = "stretch"
    cross_camera: bool = True  # pairs (positive and negative) always join two different cameras
    max_train_ids: int = 0  # train on the first N training identities only (0 = all): quick smoke runs


@dataclass
class PairSamplingConfig:
    ids_per_batch: int = 8  # a batch = all positive pairs of this many identities + as many negatives
    translate: float = 0.05  # random shift up to this fraction of height/width (the paper's augmentation)
    flip: bool = True
    hard_from_epoch: int = 0  # first epoch (1-based) of hard-negative rounds; 0 = random negatives only
    hard_fraction: float = 0.5  # share of each batch's negatives replaced by mined ones
    hard_candidates: int = 8  # random negatives scored per anchor; the most "same"-looking one is kept


@dataclass
class PairOptimConfig:
    epochs: int = 20
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4  # L2 regularisation
    schedule: str = "inv"  # inv: lr * (1 + gamma * step) ** -power (the paper's Caffe policy) | cosine | constant
    inv_gamma: float = 1e-4
    inv_power: float = 0.75
    warmup_steps: int = 0
    grad_clip: float = 0.0


@dataclass
class PairEvalConfig:
    cmc_ids: int = 100  # CUHK03 classic protocol: identities per draw
    cmc_draws: int = 10
    max_rank: int = 20
    batch_size: int = 512  # pairs per forward pass when scoring
    threshold: float = 0.0  # log-odds threshold for "same" (0 = probability 0.5)
    # test-time augmentation of validation and CMC scores: average both input orders / the mirrored pair
    symmetric: bool = False
    flip: bool = False


@dataclass
class PairTrainConfig:
    model: PairModelConfig = field(default_factory=PairModelConfig)
    data: PairDataConfig = field(default_factory=PairDataConfig)
    sampling: PairSamplingConfig = field(default_factory=PairSamplingConfig)
    optim: PairOptimConfig = field(default_factory=PairOptimConfig)
    loss: PairLossConfig = field(default_factory=PairLossConfig)
    eval: PairEvalConfig = field(default_factory=PairEvalConfig)
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # torch CPU threads (0 = torch default)
    bf16: bool = False  # bfloat16 autocast (CPU with AVX512-BF16 / CUDA)
    max_minutes: float = 0.0  # wall-time budget: no epoch is started that would end past it (0 = none); resumable
    retain_memory: bool = True  # keep freed heap memory for reuse (see retain_freed_memory)


# ------------------------------------------------------------------------------------------------ validation
# key -> (lowest allowed value, whether the bound itself is allowed); checked before any work is done.
_MIN = 0.0, True
_POSITIVE = 0.0, False
_AT_LEAST_1 = 1, True
BOUNDS: dict[str, tuple[float, bool]] = {
    "data.height": _AT_LEAST_1, "data.width": _AT_LEAST_1, "data.val_ids": _MIN,
    "optim.epochs": _AT_LEAST_1, "optim.pretrain_epochs": _MIN, "optim.p": _AT_LEAST_1, "optim.k": _AT_LEAST_1,
    "optim.accum_steps": _AT_LEAST_1, "optim.lr": _POSITIVE, "optim.weight_decay": _MIN, "optim.momentum": _MIN,
    "optim.warmup_epochs": _MIN, "optim.gamma": _POSITIVE, "optim.grad_clip": _MIN,
    "optim.warmup_steps": _MIN, "optim.inv_gamma": _MIN, "optim.inv_power": _MIN,
    "eval_every": _AT_LEAST_1, "students": _AT_LEAST_1, "num_threads": _MIN, "max_minutes": _MIN,
    "model.dropout": _MIN, "model.local_dim": _MIN, "loss.margin": _MIN, "loss.label_smooth": _MIN,
    "sampling.ids_per_batch": _AT_LEAST_1, "eval.batch_size": _AT_LEAST_1, "eval.max_rank": _AT_LEAST_1,
    "eval.cmc_ids": _AT_LEAST_1, "eval.cmc_draws": _AT_LEAST_1,
    "data.clip_len": _AT_LEAST_1, "model.attention_hidden": _AT_LEAST_1, "attention_lr_mult": _POSITIVE,
    "data.workers": _MIN, "dist_timeout_minutes": _POSITIVE,
    "distill.darkrank_weight": _MIN, "distill.similarity_weight": _MIN, "distill.feature_weight": _MIN,
    "distill.darkrank_alpha": _POSITIVE, "distill.darkrank_beta": _POSITIVE, "distill.darkrank_list_size": _MIN,
    "ema_decay": _MIN,
}
UPPER: dict[str, float] = {"model.dropout": 1.0, "loss.label_smooth": 1.0, "ema_decay": 1.0}  # exclusive upper bounds


def check_config(cfg: Any) -> None:
    """Raise a ConfigError naming the first key of `cfg` (TrainConfig, PairTrainConfig) outside its range."""
    for key, (low, inclusive) in BOUNDS.items():
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part, None)
        if node is None:  # a key of the other task's config
            continue
        below = node < low if inclusive else node <= low
        if below or (key in UPPER and node >= UPPER[key]):
            allowed = f"{'>=' if inclusive else '>'} {low:g}" + (f" and < {UPPER[key]:g}" if key in UPPER else "")
            raise ConfigError(f"{key}={node!r}: must be {allowed}")
