"""The pair task: Siamese pair networks (IDLA, IDLA-NCC, MLS, any model registered with task="pair"):
same/different classification of image pairs.

Per epoch: identity-grouped balanced batches (every positive pair once, each with a negative for the same anchor
image from the batch's images; see data/pairs.py) -> random translations (+ optional flips) -> cross-entropy on
the 2-way logits (`loss.name: ce`), or a registered loss on pair logits such as the MLS improved ranking loss
(`loss.name: improved_ranking`: cross-entropy + a margin between the positive and the negative pair of each
anchor), optionally + an identity-classification term on each image's trunk features (`loss.id_weight`) ->
from `sampling.hard_from_epoch` on, hard-negative rounds: part of the negatives are replaced by the candidate the
current model scores most "same" -> validation pair accuracy / AUC -> best.pt on the best balanced validation
accuracy.

At the end the best checkpoint is evaluated in full: pair accuracy, confusion matrix, ROC/AUC and the CUHK03
classic single-shot CMC (100 validation identities, 10 draws), with pictures in the output folder; the pair accuracy
also at the threshold fitted on training-identity pairs (`calibrated`).
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...checkpoint import load_checkpoint
from ...data import load_dataset
from ...data.images import load_image_tensor
from ...data.pairs import (
    PairBatch,
    anchor_is_first,
    balanced_pairs,
    hardest_candidates,
    identity_batches,
    negative_candidates,
    random_flip,
    random_translate,
)
from ...data.records import Record, split_arrays
from ...errors import ConfigError
from ...losses import build_loss
from ...metrics.pair_ranking import cuhk03_single_shot_cmc
from ...metrics.plots import plot_cmc
from ...metrics.verification import best_threshold, plot_confusion, plot_roc, roc_curve, verification_report
from ...models import build_model
from ...utils import atomic_path, progress
from ..config import PairTrainConfig
from ..optim import build_optimizer, caffe_schedule
from ..splits import describe_split, prepare_splits
from .base import Member, Optimise, Task, check_finite, register_task

if TYPE_CHECKING:
    from ..loop import Trainer


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
    """Training records of `root` (its bounding_box_train when that is all it has)."""
    return load_dataset(root).train


def plot_pair_confusion(report: dict[str, Any], path: Path, name: str) -> Path:
    """The validation pairs' confusion matrix picture of a `verification_report`."""
    return plot_confusion(np.asarray(report["confusion_matrix"]), path,
                          title=f"{name}\nvalidation pairs: {report['accuracy']:.1f}% correct")


@register_task("pair")
class PairTask(Task):
    config_class = PairTrainConfig
    best_key = "balanced_accuracy"
    extra_options = {"id_head": "loss.id_weight"}

    def __init__(self, cfg: PairTrainConfig, data_root: str | Path | None = None, show_progress: bool = True):
        super().__init__(cfg, data_root, show_progress)
        self.data_root = data_root or cfg.data.root
        if not self.data_root:
            raise ConfigError("no dataset: pass --data DIR or set data.root in the config")
        self.grad_clip = cfg.optim.grad_clip
        if cfg.retain_memory:
            retain_freed_memory()

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        cfg = self.cfg
        self._load_data()
        self.model_name = cfg.model.name
        self.model_cfg = cfg.model.build_kwargs((cfg.data.height, cfg.data.width))
        self.model = build_model(cfg.model.name, **self.model_cfg).to(self.device)
        self.loss_fn = cfg.loss.build()
        self.id_head = self._build_identity_head()
        extras = {"id_head": self.id_head} if self.id_head is not None else {}
        if self.loss_fn is not None:
            extras["loss"] = self.loss_fn
        self.members = [Member(self.model, extras)]
        self.steps_per_epoch = len(identity_batches(self.train_pids, self.train_cams, cfg.sampling.ids_per_batch,
                                                    np.random.default_rng(cfg.seed), cfg.data.cross_camera))

    def _load_data(self) -> None:
        cfg = self.cfg
        splits = prepare_splits(self.data_root, cfg.data)
        train, val = sorted(splits.train, key=lambda r: r.path), splits.query + splits.gallery
        if cfg.data.max_train_ids > 0:
            keep = set(sorted({r.pid for r in train})[:cfg.data.max_train_ids])
            train = [r for r in train if r.pid in keep]
            splits.train = train
        print(describe_split(splits), flush=True)
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

    def optimizer(self, member: Member) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = list(member.model.parameters()) + [p for e in member.extras.values() for p in e.parameters()]
        return build_optimizer(params, o.optimizer, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                               choices=("sgd", "adam"))

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        o = self.cfg.optim
        factor = caffe_schedule(o.schedule, self.steps_per_epoch * o.epochs, o.warmup_steps, o.inv_gamma,
                                o.inv_power)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

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
                    where: str, optimise: Optimise, step: int, num_steps: int) -> tuple[float, float, dict]:
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
        check_finite(loss, where)
        optimise(loss, step, num_steps)
        correct = (logits.argmax(1) == labels).float().mean().item()
        return loss.item(), correct, terms

    def train_epoch(self, epoch: int, optimise: Optimise) -> dict[str, Any]:
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
            loss, acc, step_terms = self._train_step(batch, gen, rng, hard, f"epoch {epoch + 1}, step {step + 1}",
                                                     optimise, step, len(batches))
            losses.append(loss)
            accuracies.append(acc)
            terms.append(step_terms)
            pairs += batch.label.size
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{100 * np.mean(accuracies[-20:]):.1f}")
        elapsed = time.perf_counter() - start
        term_means = {k: float(np.mean([t[k] for t in terms])) for k in terms[0]} if terms else {}
        return {"loss": float(np.mean(losses)), "train_accuracy": 100.0 * float(np.mean(accuracies)),
                **term_means, "pairs": pairs, "hard_negatives": hard, "epoch_seconds": elapsed,
                "pairs_per_second": pairs / max(elapsed, 1e-9)}

    # ------------------------------------------------------------- validation
    def validation_scores(self, symmetric: bool | None = None, flip: bool | None = None) -> np.ndarray:
        """Same-person log-odds of the fixed balanced validation pairs (test-time views: `eval` unless given)."""
        e, pairs = self.cfg.eval, self.val_pairs
        symmetric = e.symmetric if symmetric is None else symmetric
        flip = e.flip if flip is None else flip
        return self.model.image_pair_scores(self.val_images, self.val_images, torch.from_numpy(pairs.first),
                                            torch.from_numpy(pairs.second), e.batch_size, symmetric, flip,
                                            self.show_progress, "validation: scoring pairs").numpy()

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

    def validate(self) -> dict[str, Any]:
        return {"val": self.evaluate()}

    def console_line(self, row: dict[str, Any], best: dict[str, Any]) -> str:
        v = row["val"]
        return (f"epoch {row['epoch']}/{self.epochs} validation: pair accuracy {v['balanced_accuracy']:.1f}% "
                f"(balanced)  AUC {v['auc']:.3f}  (best {best['balanced_accuracy']:.1f}% at epoch {best['epoch']})")

    def plot_curves(self, rows: list[dict], out: Path) -> None:
        plot_pair_training_curves(rows, out / "pair_training_curves.png")

    def finish(self, trainer: Trainer, best: dict[str, Any]) -> dict[str, Any]:
        self.model.load_state_dict(load_checkpoint(trainer.out / "best.pt", self.device)["model"])
        return {"final": self.final_report(trainer.out)}

    def report(self, summary: dict[str, Any]) -> None:
        best = summary.get("best") or {}
        if best:
            print(f"best validation (epoch {best['epoch']}): pair accuracy {best['balanced_accuracy']:.1f}%  "
                  f"AUC {best['auc']:.3f}")
        final = summary.get("final")
        if final:
            calibrated = final["calibrated"]
            print(f"at the threshold fitted on training identities (log-odds {calibrated['threshold']:+.2f}): "
                  f"pair accuracy {calibrated['balanced_accuracy']:.1f}%")
            print(f"CUHK03 single-shot ({final['cmc']['num_ids']} ids, {final['cmc']['num_draws']} draws): "
                  f"rank-1 {final['cmc']['rank1']:.1f}%  rank-5 {final['cmc']['rank5']:.1f}%")

    def validation_cmc(self, symmetric: bool, flip: bool) -> dict[str, Any]:
        e = self.cfg.eval
        return cuhk03_single_shot_cmc(self.model, self.val_images, self.val_pids, self.val_cams, e.cmc_ids,
                                      e.cmc_draws, seed=self.cfg.data.split_seed, max_rank=e.max_rank,
                                      batch_size=e.batch_size, symmetric=symmetric, flip=flip)

    def final_report(self, out: Path) -> dict[str, Any]:
        """Full evaluation of the current weights with pictures: ROC, confusion matrix, CMC. Unless `eval` already
        asks for both test-time views, the pair metrics and CMC with both (`tta`) are reported too, with their own
        confusion matrix and ROC curve."""
        e = self.cfg.eval
        labels = self.val_pairs.label
        scores = self.validation_scores()
        report = verification_report(scores, labels, e.threshold)
        name = self.cfg.model.name
        curves = {f"{name} (AUC {report['auc']:.3f})": roc_curve(scores, labels)[:2]}
        plot_pair_confusion(report, out / "pair_confusion.png", name)
        cmc = self.validation_cmc(e.symmetric, e.flip)
        plot_cmc(np.asarray(cmc["cmc"]) / 100.0, out / "pair_cmc.png",
                 title=f"{name}: single-shot CMC, {e.cmc_ids} ids x {e.cmc_draws} draws")
        result: dict[str, Any] = {"pairs": report, "cmc": cmc, "views": {"symmetric": e.symmetric, "flip": e.flip},
                                  "calibrated": self.calibrated_report(scores, e.symmetric, e.flip)}
        if not (e.symmetric and e.flip):
            tta_scores = self.validation_scores(True, True)
            tta = verification_report(tta_scores, labels, e.threshold)
            curves[f"{name}, test-time views (AUC {tta['auc']:.3f})"] = roc_curve(tta_scores, labels)[:2]
            plot_pair_confusion(tta, out / "pair_confusion_tta.png", f"{name}, test-time views")
            result["tta"] = {"pairs": tta, "cmc": self.validation_cmc(True, True),
                             "views": {"symmetric": True, "flip": True},
                             "calibrated": self.calibrated_report(tta_scores, True, True)}
        plot_roc(curves, out / "pair_roc.png", title=f"{name}: validation pairs")
        return result


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
