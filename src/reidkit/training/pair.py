"""Training loop for Siamese pair networks (IDLA, IDLA-NCC, MLS): same/different classification of image pairs.

Per epoch: identity-grouped balanced batches (every positive pair once, each with a negative for the same anchor
image from the batch's images; see engine/pairs.py) -> random translations (+ optional flips) -> cross-entropy on
the 2-way logits (`loss.name: ce`), or the MLS improved ranking loss (`loss.name: improved_ranking`: cross-entropy +
a margin between the positive and the negative pair of each anchor), optionally + an identity-classification term on
each image's trunk features (`loss.id_weight`) ->
from `sampling.hard_from_epoch` on, hard-negative rounds: part of the negatives are replaced by the candidate the
current model scores most "same" -> validation pair accuracy / AUC on the carved-out identities -> atomic
`last.pt` (+ `best.pt`, best balanced validation accuracy) and a JSONL log line. With `max_minutes`, no
epoch is started that would (at the last epoch's pace) end past the budget. Each epoch is seeded from
(seed, epoch), so `resume` continues to exactly the result of an uninterrupted run.

At the end the best checkpoint is evaluated in full: pair accuracy, confusion matrix, ROC/AUC and the CUHK03
classic single-shot CMC (100 validation identities, 10 draws), with pictures in the output folder; the pair accuracy
also at the threshold fitted on training-identity pairs (`calibrated`).
"""

from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from ..config import load_config, to_dict
from ..data import load_dataset, load_image_folder
from ..data.market import MARKET_FOLDERS
from ..data.pairs import (
    PairBatch,
    anchor_is_first,
    balanced_pairs,
    hardest_candidates,
    identity_batches,
    negative_candidates,
    random_flip,
    random_translate,
)
from ..data.records import Record, split_arrays
from ..data.split import carve_validation_records
from ..data.store import load_image_tensor
from ..errors import ConfigError, TrainingError
from ..losses import build_loss
from ..metrics.pair_ranking import cuhk03_single_shot_cmc
from ..metrics.plots import plot_cmc
from ..metrics.verification import best_threshold, plot_confusion, plot_roc, roc_curve, verification_report
from ..models import build_model
from ..utils import atomic_path, atomic_write_json, progress, resolve_device, seed_everything
from .runlog import append_log, start_run

PAIR_MODEL_NAMES = ("idla", "idla_ncc", "mls")
PAIR_LOSSES = ("ce", "improved_ranking")
# Options of PairModelConfig that only some pair models have: passed to those, refused for the others.
MODEL_SPECIFIC_OPTIONS = {"batchnorm": ("idla", "idla_ncc"), "mode": ("idla_ncc",), "row_radius": ("idla_ncc",),
                          "levels": ("mls",), "use_stn": ("mls",), "patch_size": ("mls",), "num_patches": ("mls",)}


@dataclass
class PairModelConfig:
    name: str = "idla"  # idla | idla_ncc | mls
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
        if self.name not in PAIR_MODEL_NAMES:
            raise ConfigError(f"model.name={self.name!r}: the pair trainer trains {', '.join(PAIR_MODEL_NAMES)}")
        self._check_applicable()
        kwargs: dict[str, Any] = {"input_size": list(input_size), "dropout": self.dropout,
                                  "channels_last": self.channels_last}
        for option, models in MODEL_SPECIFIC_OPTIONS.items():
            if self.name in models:
                value = getattr(self, option)
                kwargs[option] = list(value) if isinstance(value, list) else value
        return kwargs

    def _check_applicable(self) -> None:
        """A model-specific option set for another model would be silently ignored: refuse it instead."""
        defaults = PairModelConfig()
        for option, models in MODEL_SPECIFIC_OPTIONS.items():
            if self.name not in models and getattr(self, option) != getattr(defaults, option):
                raise ConfigError(f"model.{option}={getattr(self, option)!r} applies to model.name "
                                  f"{' / '.join(models)}, not {self.name!r}: remove it or change model.name")



@dataclass
class PairLossConfig:
    name: str = "ce"  # ce: cross-entropy on the pair logits | improved_ranking: + anchor ranking hinge (MLS paper)
    margin: float = 0.5  # improved_ranking: s(anchor, positive) - s(anchor, negative) must reach this
    verification_weight: float = 1.0
    ranking_weight: float = 1.0
    score: str = "prob"  # improved_ranking: s = P(same) ("prob") or the log-odds ("logit")
    # Identity classification of each image's trunk features beside the pair loss (verification +
    # identification, Zheng et al. 2017): a training-only head; 0 = off (the papers' pair loss alone).
    id_weight: float = 0.0
    id_label_smooth: float = 0.1

    def build(self) -> torch.nn.Module | None:
        """The ranking loss module, or None for plain cross-entropy."""
        if self.name not in PAIR_LOSSES:
            raise ConfigError(f"loss.name={self.name!r}: the pair trainer supports {', '.join(PAIR_LOSSES)}")
        if self.name == "ce":
            return None
        return build_loss(self.name, margin=self.margin, verification_weight=self.verification_weight,
                          ranking_weight=self.ranking_weight, score=self.score)


@dataclass
class PairDataConfig:
    root: str = ""  # dataset root (Market layout, or a root with only bounding_box_train); --data overrides
    validation: str = "carve"  # carve: hold out `val_ids` identities | none
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


def retain_freed_memory() -> bool:
    """Ask glibc malloc to serve large blocks from the heap and keep freed memory instead of unmapping it.

    Pair training allocates and frees ~100 MB temporaries every step; with glibc's defaults each is a fresh
    mmap whose pages fault in one by one, which made the pair layers ~2x slower on the 2-core CPU
    (docs/pair_networks.md). Process-wide and harmless elsewhere; returns False where it does not apply.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameter numbers from <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


class IdentityHead(nn.Module):
    """Training-only identity classifier on a pair model's (N, C, h, w) trunk features: average-pooled to a small
    grid (keeps coarse layout: head vs legs), BatchNorm, linear layer to the training identities."""

    def __init__(self, channels: int, num_ids: int, grid: tuple[int, int] = (8, 4)):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.norm = nn.BatchNorm1d(channels * grid[0] * grid[1])
        self.classifier = nn.Linear(channels * grid[0] * grid[1], num_ids)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(self.pool(feats).flatten(1)))


def load_train_records(root: str | Path) -> list[Record]:
    """Training records of `root`: its bounding_box_train when that is all it has, else the dataset's train."""
    root = Path(root)
    train_dir = root / MARKET_FOLDERS["train"]
    if train_dir.is_dir() and not (root / MARKET_FOLDERS["query"]).is_dir():
        return load_image_folder(train_dir).train
    return load_dataset(root).train


def plot_pair_confusion(report: dict[str, Any], path: Path, name: str) -> Path:
    """The validation pairs' confusion matrix picture of a `verification_report`."""
    return plot_confusion(np.asarray(report["confusion_matrix"]), path,
                          title=f"{name}\nvalidation pairs: {report['accuracy']:.1f}% correct")


class PairTrainer:
    def __init__(self, cfg: PairTrainConfig, out_dir: str | Path, data_root: str | Path | None = None,
                 device: str | None = None, show_progress: bool = True):
        self.cfg, self.out = cfg, Path(out_dir)
        self.device = resolve_device(device or cfg.device)
        self.data_root = data_root or cfg.data.root
        self.show_progress = show_progress
        if not self.data_root:
            raise ConfigError("no dataset: pass --data DIR or set data.root in the config")
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        if cfg.retain_memory:
            retain_freed_memory()
        self.out.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self._load_data()
        self.model_cfg = cfg.model.build_kwargs((cfg.data.height, cfg.data.width))
        self.model = build_model(cfg.model.name, **self.model_cfg).to(self.device)
        self.loss_fn = cfg.loss.build()
        self.id_head = self._build_identity_head()
        self.optimizer = self._build_optimizer()
        steps = len(identity_batches(self.train_pids, self.train_cams, cfg.sampling.ids_per_batch,
                                     np.random.default_rng(cfg.seed), cfg.data.cross_camera))
        self.scheduler = self._build_scheduler(steps * cfg.optim.epochs)

    def _load_data(self) -> None:
        cfg = self.cfg
        records = load_train_records(self.data_root)
        if cfg.data.validation == "carve":
            split = carve_validation_records(records, cfg.data.val_ids, cfg.data.split_seed)
            train, val = split.train, split.query + split.gallery
        elif cfg.data.validation == "none":
            train, val = sorted(records, key=lambda r: r.path), []
        else:
            raise ConfigError(f"data.validation={cfg.data.validation!r}: expected carve or none")
        if cfg.data.max_train_ids > 0:
            keep = set(sorted({r.pid for r in train})[:cfg.data.max_train_ids])
            train = [r for r in train if r.pid in keep]
        size = (cfg.data.height, cfg.data.width)
        _, self.train_pids, self.train_cams = split_arrays(train)
        self.train_images = load_image_tensor([r.path for r in train], size, cfg.data.resize, self.show_progress,
                                              desc="loading train images")
        self.has_val = bool(val)
        if self.has_val:
            _, self.val_pids, self.val_cams = split_arrays(val)
            self.val_images = load_image_tensor([r.path for r in val], size, cfg.data.resize, self.show_progress,
                                                desc="loading validation images")
            self.val_pairs = balanced_pairs(self.val_pids, self.val_cams, np.random.default_rng(cfg.data.split_seed),
                                            cfg.data.cross_camera)

    def _build_identity_head(self) -> IdentityHead | None:
        lc = self.cfg.loss
        if lc.id_weight < 0 or not 0 <= lc.id_label_smooth < 1:
            raise ConfigError(f"loss.id_weight={lc.id_weight} must be >= 0 and loss.id_label_smooth="
                              f"{lc.id_label_smooth} in [0, 1)")
        if lc.id_weight == 0:
            return None
        was_training = self.model.training
        self.model.eval()  # a probe for the feature shape must not touch BatchNorm running statistics
        with torch.no_grad():
            probe = self.model.embed(self.model.prepare(self.train_images[:2]))
        self.model.train(was_training)
        if probe.dim() != 4:
            raise ConfigError(f"loss.id_weight applies to models with a convolutional trunk (idla, idla_ncc), "
                              f"not {self.cfg.model.name!r}: set it to 0")
        self.id_labels = torch.from_numpy(np.unique(self.train_pids, return_inverse=True)[1]).long()
        head = IdentityHead(probe.shape[1], int(self.id_labels.max()) + 1).to(self.device)
        self.id_loss = build_loss("ce", num_classes=head.classifier.out_features, epsilon=lc.id_label_smooth)
        return head

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = list(self.model.parameters()) + (list(self.id_head.parameters()) if self.id_head else [])
        if o.optimizer == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if o.optimizer == "adam":
            return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        raise ConfigError(f"optim.optimizer={o.optimizer!r}: expected sgd or adam")

    def _build_scheduler(self, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        o = self.cfg.optim
        if o.schedule not in ("inv", "cosine", "constant"):
            raise ConfigError(f"optim.schedule={o.schedule!r}: expected inv, cosine or constant")

        def factor(step: int) -> float:
            warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
            if o.schedule == "inv":
                return warm * (1.0 + o.inv_gamma * step) ** -o.inv_power
            if o.schedule == "cosine":
                return warm * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step / max(1, total_steps), 1.0))))
            return warm

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # --------------------------------------------------------------- training
    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def _augment(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        s = self.cfg.sampling
        x = random_translate(images, s.translate, gen)
        return random_flip(x, gen) if s.flip else x

    def _mine_hard_negatives(self, batch: PairBatch, feats: torch.Tensor,
                             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(first, second) with a share of the negatives replaced by the candidate the current model scores highest.

        The anchor keeps its place: `first` for cross-entropy, the image shared with the positive pair for the
        ranking loss (so each triplet keeps a common anchor); the other image is replaced.
        """
        s = self.cfg.sampling
        negatives = np.flatnonzero(batch.label == 0)
        chosen = negatives[rng.random(negatives.size) < s.hard_fraction]
        first, second = batch.first.copy(), batch.second.copy()
        if chosen.size == 0:
            return first, second
        pids, cams = self.train_pids[batch.images], self.train_cams[batch.images]
        keep_first = anchor_is_first(batch)[chosen] if self.loss_fn is not None else np.ones(chosen.size, bool)
        anchors = np.where(keep_first, first[chosen], second[chosen])
        candidates, valid = negative_candidates(pids[anchors], cams[anchors], pids, cams, s.hard_candidates, rng,
                                                self.cfg.data.cross_camera)
        was_training = self.model.training
        self.model.eval()  # score without dropout, as the model would at test time
        try:
            detached = feats.detach()
            scores = self.model.pair_scores(detached, detached, torch.from_numpy(anchors).repeat_interleave(
                candidates.shape[1]), torch.from_numpy(candidates.ravel()), self.cfg.eval.batch_size)
        finally:
            self.model.train(was_training)
        hard = hardest_candidates(scores.view(candidates.shape), candidates, valid)
        replaced = np.where(keep_first, second[chosen], first[chosen])
        replaced = np.where(hard >= 0, hard, replaced)
        first[chosen] = np.where(keep_first, first[chosen], replaced)
        second[chosen] = np.where(keep_first, replaced, second[chosen])
        return first, second

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: PairBatch) -> tuple[torch.Tensor, dict]:
        """The training loss and, for the ranking loss, its unweighted terms (for the log)."""
        if self.loss_fn is None:
            return F.cross_entropy(logits, labels), {}
        triplets = torch.from_numpy(batch.triplets if batch.triplets is not None else np.zeros((0, 2), np.int64))
        verification, ranking = self.loss_fn.terms(logits, labels, triplets)
        return self.loss_fn.combine(verification, ranking), {"verification_loss": verification.item(),
                                                             "ranking_loss": ranking.item()}

    def _train_step(self, batch: PairBatch, gen: torch.Generator, rng: np.random.Generator, hard: bool,
                    where: str) -> tuple[float, float, dict]:
        x = self.model.prepare(self._augment(self.train_images[torch.from_numpy(batch.images)], gen))
        labels = torch.from_numpy(batch.label).to(self.device)
        with self._autocast():
            feats = self.model.embed(x)
            first, second = self._mine_hard_negatives(batch, feats, rng) if hard else (batch.first, batch.second)
            logits = self.model.pair_logits(feats[torch.from_numpy(first)], feats[torch.from_numpy(second)])
        loss, terms = self._loss(logits.float(), labels, batch)
        if self.id_head is not None:
            id_loss = self.id_loss(self.id_head(feats).float(), self.id_labels[batch.images].to(self.device))
            loss = loss + self.cfg.loss.id_weight * id_loss
            terms = {**terms, "identity_loss": id_loss.item()}
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at {where}; lower optim.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        correct = (logits.argmax(1) == labels).float().mean().item()
        return loss.item(), correct, terms

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        self.model.train()
        if self.id_head is not None:
            self.id_head.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        batches = identity_batches(self.train_pids, self.train_cams, cfg.sampling.ids_per_batch, rng,
                                   cfg.data.cross_camera)
        hard = 0 < cfg.sampling.hard_from_epoch <= epoch + 1
        losses, accuracies, terms, pairs, start = [], [], [], 0, time.perf_counter()
        bar = progress(batches, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}" + (" (hard)" if hard else ""),
                       enabled=self.show_progress)
        for step, batch in enumerate(bar):
            loss, acc, step_terms = self._train_step(batch, gen, rng, hard, f"epoch {epoch + 1}, step {step + 1}")
            losses.append(loss)
            accuracies.append(acc)
            terms.append(step_terms)
            pairs += batch.label.size
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{100 * np.mean(accuracies[-20:]):.1f}")
        elapsed = time.perf_counter() - start
        term_means = {k: float(np.mean([t[k] for t in terms])) for k in terms[0]} if terms else {}
        return {"loss": float(np.mean(losses)), "train_accuracy": 100.0 * float(np.mean(accuracies)),
                **term_means, "pairs": pairs, "hard_negatives": hard, "epoch_seconds": elapsed,
                "pairs_per_second": pairs / max(elapsed, 1e-9), "lr": self.optimizer.param_groups[0]["lr"]}

    # ------------------------------------------------------------- validation
    def validation_scores(self, symmetric: bool | None = None, flip: bool | None = None) -> np.ndarray:
        """Same-person log-odds of the fixed balanced validation pairs (test-time views: `eval` unless given)."""
        e, pairs = self.cfg.eval, self.val_pairs
        symmetric = e.symmetric if symmetric is None else symmetric
        flip = e.flip if flip is None else flip
        return self.model.image_pair_scores(self.val_images, self.val_images, torch.from_numpy(pairs.first),
                                            torch.from_numpy(pairs.second), e.batch_size, symmetric, flip).numpy()

    def training_pair_scores(self, symmetric: bool, flip: bool,
                             num_pairs: int = 7_000) -> tuple[np.ndarray, np.ndarray]:
        """(log-odds, labels) of a fixed balanced subset of cross-camera pairs among the training identities, scored
        like the validation pairs (eval mode, no augmentation): for fitting a threshold, and to measure the fit."""
        cfg = self.cfg
        pairs = balanced_pairs(self.train_pids, self.train_cams, np.random.default_rng(123), cfg.data.cross_camera)
        pick = np.random.default_rng(5).choice(pairs.label.size, min(num_pairs, pairs.label.size), replace=False)
        scores = self.model.image_pair_scores(self.train_images, self.train_images, torch.from_numpy(pairs.first[pick]),
                                              torch.from_numpy(pairs.second[pick]), cfg.eval.batch_size, symmetric,
                                              flip).numpy()
        return scores, pairs.label[pick]

    def calibrated_report(self, val_scores: np.ndarray, symmetric: bool, flip: bool) -> dict[str, Any]:
        """Validation pair metrics at the threshold that is best on training-identity pairs (no validation label is
        used to choose it). Hard-negative rounds move the model's natural threshold towards "different"."""
        threshold = best_threshold(*self.training_pair_scores(symmetric, flip))
        report = verification_report(val_scores, self.val_pairs.label, threshold)
        return {"threshold": threshold, **{k: report[k] for k in ("balanced_accuracy", "confusion_matrix")}}

    def evaluate(self) -> dict[str, Any]:
        report = verification_report(self.validation_scores(), self.val_pairs.label, self.cfg.eval.threshold)
        return {k: report[k] for k in ("accuracy", "balanced_accuracy", "auc")}

    def validation_cmc(self, symmetric: bool, flip: bool) -> dict[str, Any]:
        e = self.cfg.eval
        return cuhk03_single_shot_cmc(self.model, self.val_images, self.val_pids, self.val_cams, e.cmc_ids,
                                      e.cmc_draws, seed=self.cfg.data.split_seed, max_rank=e.max_rank,
                                      batch_size=e.batch_size, symmetric=symmetric, flip=flip)

    def final_report(self) -> dict[str, Any]:
        """Full evaluation of the current weights with pictures: ROC, confusion matrix, CMC. Unless `eval` already
        asks for both test-time views, the pair metrics and CMC with both (`tta`) are reported too, with their own
        confusion matrix and ROC curve."""
        e = self.cfg.eval
        labels = self.val_pairs.label
        scores = self.validation_scores()
        report = verification_report(scores, labels, e.threshold)
        name = self.cfg.model.name
        curves = {f"{name} (AUC {report['auc']:.3f})": roc_curve(scores, labels)[:2]}
        plot_pair_confusion(report, self.out / "pair_confusion.png", name)
        cmc = self.validation_cmc(e.symmetric, e.flip)
        plot_cmc(np.asarray(cmc["cmc"]) / 100.0, self.out / "pair_cmc.png",
                 title=f"{name}: single-shot CMC, {e.cmc_ids} ids x {e.cmc_draws} draws")
        result: dict[str, Any] = {"pairs": report, "cmc": cmc, "views": {"symmetric": e.symmetric, "flip": e.flip},
                                  "calibrated": self.calibrated_report(scores, e.symmetric, e.flip)}
        if not (e.symmetric and e.flip):
            tta_scores = self.validation_scores(True, True)
            tta = verification_report(tta_scores, labels, e.threshold)
            curves[f"{name}, test-time views (AUC {tta['auc']:.3f})"] = roc_curve(tta_scores, labels)[:2]
            plot_pair_confusion(tta, self.out / "pair_confusion_tta.png", f"{name}, test-time views")
            result["tta"] = {"pairs": tta, "cmc": self.validation_cmc(True, True),
                             "views": {"symmetric": True, "flip": True},
                             "calibrated": self.calibrated_report(tta_scores, True, True)}
        plot_roc(curves, self.out / "pair_roc.png", title=f"{name}: validation pairs")
        return result

    # ---------------------------------------------------------- checkpointing
    def _save(self, name: str, epoch: int, metrics: dict) -> None:
        save_checkpoint(self.out / name, model=self.model, model_name=self.cfg.model.name, model_cfg=self.model_cfg,
                        epoch=epoch, optimizer=self.optimizer, scheduler=self.scheduler, config=to_dict(self.cfg),
                        metrics=metrics, extra={"id_head": self.id_head.state_dict()} if self.id_head else None)

    def _resume(self) -> tuple[int, dict]:
        payload = load_checkpoint(self.out / "last.pt", map_location=self.device)
        if payload["model_name"] != self.cfg.model.name:
            raise ConfigError(f"resume: {self.out / 'last.pt'} holds a {payload['model_name']!r} model but the "
                              f"config trains {self.cfg.model.name!r}")
        saved = payload["model_cfg"]  # keys missing there predate the option: the model had its default
        changed = sorted(k for k in saved.keys() & self.model_cfg.keys() if saved[k] != self.model_cfg[k])
        if changed:
            raise ConfigError(f"resume: {self.out / 'last.pt'} was trained with other model options ("
                              + ", ".join(f"model.{k}: {saved[k]!r} there, {self.model_cfg[k]!r} now"
                                          for k in changed)
                              + "); resume with the same options or start a new run")
        self.model.load_state_dict(payload["model"])
        if self.id_head is not None:
            if "id_head" not in payload.get("extra", {}):
                raise ConfigError(f"resume: {self.out / 'last.pt'} was trained without loss.id_weight; resume it "
                                  "with the same loss settings or start a new run")
            self.id_head.load_state_dict(payload["extra"]["id_head"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"])
        return payload["epoch"], payload["metrics"].get("best", {})

    # -------------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        self.setup()
        start_epoch, best = 0, {}
        if resume and (self.out / "last.pt").exists():
            start_epoch, best = self._resume()
        rows, deadline = start_run(self.out, to_dict(cfg), start_epoch, cfg.max_minutes)
        epochs_done = start_epoch
        for epoch in range(start_epoch, cfg.optim.epochs):
            epoch_start = time.monotonic()
            seed_everything(cfg.seed * 1_000 + epoch)  # dropout masks: same per epoch with or without resume
            row = {"epoch": epoch + 1, **self._train_epoch(epoch)}
            if self.has_val:
                row["val"] = self.evaluate()
                if not best or row["val"]["balanced_accuracy"] > best["balanced_accuracy"]:
                    best = {**row["val"], "epoch": epoch + 1}
                    self._save("best.pt", epoch + 1, {"best": best})
            self._save("last.pt", epoch + 1, {"best": best, "last": row.get("val", {})})
            rows.append(row)
            append_log(self.out / "log.jsonl", row)
            plot_pair_training_curves(rows, self.out / "pair_training_curves.png")
            epochs_done = epoch + 1
            # Stop when the next epoch (assumed as long as this one) would end past the budget.
            if 2 * time.monotonic() - epoch_start > deadline and epochs_done < cfg.optim.epochs:
                print(f"time budget of {cfg.max_minutes} min: stopping after epoch {epochs_done} (another epoch "
                      f"would not fit); resume with --resume to continue")
                break
        return self._finish(epochs_done, best)

    def _finish(self, epochs_done: int, best: dict) -> dict[str, Any]:
        summary: dict[str, Any] = {"model": self.cfg.model.name, "epochs_done": epochs_done, "best": best}
        if not self.has_val:  # without validation the final weights are the deliverable
            self._save("best.pt", epochs_done, {})
        elif best:
            self.model.load_state_dict(load_checkpoint(self.out / "best.pt", self.device)["model"])
            summary["final"] = self.final_report()
        atomic_write_json(summary, self.out / "summary.json")
        return summary


def plot_pair_training_curves(rows: list[dict], path: str | Path) -> None:
    """Training loss, and train / validation pair accuracy per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.4), dpi=90)
    FigureCanvasAgg(figure)
    ax_loss, ax_acc = figure.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["loss"] for r in rows], "k.-", label="total")
    if all("ranking_loss" in r for r in rows):
        ax_loss.plot(epochs, [r["verification_loss"] for r in rows], ".--", label="verification (CE)")
        ax_loss.plot(epochs, [r["ranking_loss"] for r in rows], ".--", label="ranking hinge")
    if all("identity_loss" in r for r in rows):
        ax_loss.plot(epochs, [r["identity_loss"] for r in rows], ".--", label="identity (unweighted)")
    if ax_loss.get_legend_handles_labels()[0][1:]:
        ax_loss.legend(fontsize=8)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_acc.plot(epochs, [r["train_accuracy"] for r in rows], ".-", label="train pairs")
    val = [r for r in rows if "val" in r]
    if val:
        ax_acc.plot([r["epoch"] for r in val], [r["val"]["balanced_accuracy"] for r in val], "o-",
                    label="validation pairs (balanced)")
    ax_acc.set(xlabel="epoch", ylabel="%", title="pair accuracy", ylim=(40, 100))
    ax_acc.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def train_pair_model(cfg: PairTrainConfig, data_root: str | Path | None = None, out_dir: str | Path = "runs/pair",
                     resume: bool = False, device: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Train a pair network per `cfg`; returns the summary (also written to out_dir/summary.json).

    `data_root` overrides cfg.data.root and `device` ("auto", "cpu", "cuda", ...) overrides cfg.device.
    """
    return PairTrainer(cfg, out_dir, data_root, device, show_progress).fit(resume=resume)


def train_pair_model_from_cli(config: str | Path | None, overrides: list[str], data: str | Path | None,
                              out: str | Path, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """What `reidkit train --config <pair config>` runs; prints the headline numbers."""
    cfg = load_config(PairTrainConfig, config, overrides)
    summary = train_pair_model(cfg, data_root=data, out_dir=out, resume=resume, show_progress=show_progress)
    best = summary.get("best") or {}
    if best:
        print(f"best validation (epoch {best['epoch']}): pair accuracy {best['balanced_accuracy']:.1f}%  "
              f"AUC {best['auc']:.3f}")
    final = summary.get("final")
    if final:
        calibrated = final["calibrated"]
        print(f"at the threshold fitted on training identities (log-odds {calibrated['threshold']:+.2f}): pair "
              f"accuracy {calibrated['balanced_accuracy']:.1f}%")
        print(f"CUHK03 single-shot ({final['cmc']['num_ids']} ids, {final['cmc']['num_draws']} draws): "
              f"rank-1 {final['cmc']['rank1']:.1f}%  rank-5 {final['cmc']['rank5']:.1f}%")
    print(f"checkpoints and logs in {out}")
    return summary
