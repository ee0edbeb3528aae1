"""The embedding task: global embedding models (one student, or several trained mutually).

Per epoch: P x K batches from the in-memory image store -> batched augmentation (cut-out curriculum) ->
identity loss (+ extra loss terms) (+ ranking loss after the classification pre-training phase) (+ AlignedReID
local loss) (+ mutual terms between students) -> validation (rank-k / mAP; with a local branch also the aligned
distance) -> best.pt on the validation mAP. Any registered loss works as the identity, metric or extra loss; a
loss with parameters (CenterLoss centres) is optimised with its student (no weight decay), saved in the
checkpoint and restored on resume.

The training images are one in-memory uint8 tensor or, with data.stream, the rows of a decoded-image cache on disk
read by DataLoader workers (data/stream.py); both give the same batches. Distributed (training/distributed.py):
each rank takes its share of the global P x K batch, the per-item model outputs are all-gathered with gradients,
and the losses are computed on the global batch, as one process would.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ...checkpoint import init_weights_from
from ...data.images import load_image_tensor
from ...data.records import relabel, split_arrays
from ...data.sampler import PKSampler
from ...data.stream import DecodedImages, batch_images, open_cache
from ...data.transforms import BatchAugment, normalize
from ...errors import ConfigError
from ...inference.features import embed_tensor, embed_tensor_local
from ...losses import MutualLearningLoss, build_loss, loss_class, loss_parameters
from ...metrics import compute_distance_matrix, evaluate_rank_full, summarize
from ...metrics.alignment import aligned_distance_matrix, local_distance_pairs
from ...models import build_model
from ...utils import progress
from ..config import LossConfig, TrainConfig
from ..distill import OnlineTeacher, check_teacher, distillation_losses, teacher_embeddings
from ..distributed import SYNC_BN_MODES, current, gather_with_grad
from ..optim import build_optimizer, warmup_then_decay
from ..plots import plot_training_curves
from ..splits import describe_split, prepare_splits
from .base import Member, Optimise, Task, check_finite, register_task

# What the task passes to a loss, by the loss's `inputs` (docs/losses.md).
EMBEDDING_INPUTS = ("logits", "embeddings", "embeddings+local")


def check_local_options(cfg: TrainConfig) -> None:
    """The AlignedReID options must agree (checked before any image is loaded)."""
    local_dim, weight = cfg.model.local_dim, cfg.loss.local_weight
    if local_dim < 0:
        raise ConfigError(f"model.local_dim={local_dim}: expected 0 (off) or a positive size (128 in AlignedReID)")
    if weight < 0:
        raise ConfigError(f"loss.local_weight={weight}: must be >= 0 (0 = no local loss)")
    if weight > 0 and local_dim == 0:
        raise ConfigError(f"loss.local_weight={weight} needs the AlignedReID local branch: set model.local_dim "
                          "(128 in the paper)")
    if local_dim > 0 and weight == 0:
        # An untrained branch would only add noise to val_local and to inference.
        raise ConfigError(f"model.local_dim={local_dim} adds a local branch that only loss.local_weight trains: "
                          "set loss.local_weight > 0 (1.0 in AlignedReID) or model.local_dim=0")
    if cfg.val_local_weight < 0:
        raise ConfigError(f"val_local_weight={cfg.val_local_weight}: must be >= 0")
    if cfg.select_on not in ("val", "val_local"):
        raise ConfigError(f"select_on={cfg.select_on!r}: expected val (global) or val_local (global + local)")
    if cfg.select_on == "val_local" and local_dim == 0:
        raise ConfigError("select_on=val_local needs the AlignedReID local branch: set model.local_dim")
    if cfg.sync_bn not in SYNC_BN_MODES:
        raise ConfigError(f"sync_bn={cfg.sync_bn!r}: expected one of {', '.join(SYNC_BN_MODES)}")


def build_task_loss(name: str, key: str, context: dict[str, Any], params: dict[str, Any]) -> nn.Module:
    """Loss `name` with the task's context arguments it accepts (num_classes, feat_dim, ...) and `params`
    (which win); refused when its call convention is not one the embedding task can feed."""
    inputs = getattr(loss_class(name), "inputs", "embeddings")
    if inputs not in EMBEDDING_INPUTS:
        raise ConfigError(f"{key}={name!r}: a loss on {inputs!r} does not apply to embedding models")
    accepted = loss_parameters(name)
    return build_loss(name, **{**{k: v for k, v in context.items() if k in accepted}, **params})


def apply_loss(loss: nn.Module, out: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
    inputs = getattr(loss, "inputs", "embeddings")
    if inputs == "logits":
        return loss(out["logits"], labels)
    if inputs == "embeddings+local":
        return loss(out["features"], labels, out["local_features"])
    return loss(out["features"], labels)


class GlobalOutputs(dict):
    """A model's outputs gathered over the ranks: the global batch, rank-major (what one process would see)."""


@register_task("embedding")
class EmbeddingTask(Task):
    config_class = TrainConfig
    best_key = "mAP"
    supports_distributed = True
    # Distributed runs gather every per-item model output (first dimension = this rank's items, at most 3-d) over
    # the ranks, with gradients, before the losses; feature maps and the outputs named here stay local.
    local_outputs: ClassVar[tuple[str, ...]] = ("feature_map",)
    # Distillation targets are per training image; tasks whose batch items are not images (tracklets) opt out.
    supports_distillation: ClassVar[bool] = True
    online_teacher: OnlineTeacher | None = None  # set by setup() with distill.online; other tasks keep None

    def __init__(self, cfg: TrainConfig, data_root: str | Path | None = None, show_progress: bool = True):
        if cfg.students < 1:
            raise ConfigError(f"students={cfg.students}: must be >= 1")
        check_local_options(cfg)
        if cfg.init_from and not Path(cfg.init_from).is_file():
            raise ConfigError(f"init_from={cfg.init_from}: file not found")
        self.distill_losses = self._check_distillation(cfg)
        super().__init__(cfg, data_root, show_progress)
        self.data_root = data_root or cfg.data.root
        self.amp = cfg.amp and self.device.type == "cuda"
        self.accum_steps, self.grad_clip = cfg.optim.accum_steps, cfg.optim.grad_clip

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        cfg = self.cfg
        self.splits = prepare_splits(self.data_root, cfg.data)
        print(describe_split(self.splits), flush=True)
        train, self.label_map = relabel(self.splits.train)
        self.train_labels = np.asarray([r.pid for r in train])
        self.num_classes = len(self.label_map)
        size = (cfg.data.height, cfg.data.width)
        load = (size, cfg.data.resize, self.show_progress)
        self.train_paths = [r.path for r in train]  # in the order of the training images' rows
        self.train_images = self._load_train_images(self.train_paths, "train images")
        if self.distill_losses and cfg.distill.online:
            self.online_teacher = OnlineTeacher(cfg.distill, cfg.device)
        elif self.distill_losses:
            self.teacher_features = teacher_embeddings(cfg.distill, self.train_paths, cfg.device, self.show_progress)
        self.has_val = bool(self.splits.query)
        if self.has_val and current().is_main:  # only rank 0 validates
            self.query_images = load_image_tensor([r.path for r in self.splits.query],
                                                  *load, desc="loading validation query images")
            self.gallery_images = load_image_tensor([r.path for r in self.splits.gallery],
                                                    *load, desc="loading validation gallery images")
        ctx = current()
        self.sampler = PKSampler(self.train_labels, cfg.optim.p, cfg.optim.k, seed=cfg.seed, rank=ctx.rank,
                                 world_size=ctx.world_size)
        self.model_name = cfg.model.name
        self.model_cfg = cfg.model.builder_kwargs()
        self.model_cfg.update(num_classes=self.num_classes, input_size=size)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        # init_from overwrites every pretrained tensor: skip reading the ImageNet / Intel weights first
        build_kwargs = {**self.model_cfg, "pretrained": False} if cfg.init_from else self.model_cfg
        self.models = [build_model(cfg.model.name, **build_kwargs) for _ in range(cfg.students)]
        if cfg.init_from:
            messages = [init_weights_from(m, cfg.model.name, cfg.init_from, self.label_map) for m in self.models]
            print(messages[0], flush=True)
        self.models = [model.to(self.device, memory_format=self.memory_format) for model in self.models]
        self.mean, self.std = self.models[0].input_mean, self.models[0].input_std
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.optim.accum_steps)
        self.augment = BatchAugment(cfg.augment)
        self._build_losses()

    def _check_distillation(self, cfg: TrainConfig) -> dict[str, tuple[float, nn.Module]]:
        if not cfg.distill.teacher:
            return {}
        if not self.supports_distillation:
            raise ConfigError(f"distill.teacher: the {self.name} task does not distil (its batch items are not "
                              "single training images)")
        check_teacher(cfg.distill)
        return distillation_losses(cfg.distill)

    def _load_train_images(self, paths: list[str], what: str) -> torch.Tensor | DecodedImages:
        """The training images as one in-memory uint8 tensor, or (data.stream) as the rows of a decoded-image cache
        on disk; both answer images[rows] with the same uint8 tensor."""
        d = self.cfg.data
        size = (d.height, d.width)
        if d.stream:
            return open_cache(paths, size, d.resize, d.cache_dir or None, self.show_progress, f"caching {what}")
        return load_image_tensor(paths, size, d.resize, self.show_progress, desc=f"loading {what}")

    def _build_losses(self) -> None:
        """One set of losses per student (a loss with parameters is trained with its student)."""
        self.student_losses = [self._losses_for(model) for model in self.models]
        self.id_loss = self.student_losses[0]["id"]
        self.metric_loss = self.student_losses[0]["metric"]
        self.local_loss = self.student_losses[0]["local"]
        self.members = [Member(model, {f"loss.{k}": v for k, v in losses.items() if v is not None})
                        for model, losses in zip(self.models, self.student_losses)]
        self.mutual_loss = None
        lc = self.cfg.loss
        if len(self.models) > 1:
            self.mutual_loss = MutualLearningLoss(num_students=len(self.models), kl_weight=lc.mutual_kl_weight,
                                                  metric_weight=lc.mutual_metric_weight,
                                                  normalize=lc.mutual_normalize)

    def _losses_for(self, model: nn.Module | None) -> dict[str, nn.Module | None]:
        lc = self.cfg.loss
        context = {"num_classes": self.num_classes}
        if model is not None:
            context["feat_dim"] = model.embedding_dim
        losses: dict[str, nn.Module | None] = {"id": None, "metric": None, "local": None}
        if lc.id_loss != "none":
            losses["id"] = build_task_loss(lc.id_loss, "loss.id_loss", {**context, "epsilon": lc.label_smooth},
                                           lc.id_params)
        losses["metric"] = self._metric_loss(context)
        if lc.local_weight > 0:
            # Mined with batch-hard on the same global features and metric as the global triplet: the same hard
            # samples, as in the paper; the loss then scores their local (aligned) distances.
            metric = lc.metric_params.get("metric", "euclidean")
            losses["local"] = build_loss("aligned_triplet", local_distance_fn=local_distance_pairs,
                                         margin=lc.margin, soft_margin=lc.soft_margin, metric=metric)
        for i, entry in enumerate(lc.extra):
            params = dict(entry)
            if "name" not in params:
                raise ConfigError(f"loss.extra[{i}]={entry!r}: needs a name (a registered loss, e.g. center)")
            name = params.pop("name")
            params.pop("weight", None)
            losses[f"extra{i}"] = build_task_loss(name, f"loss.extra[{i}].name", context, params)
        return losses

    def _metric_loss(self, context: dict[str, Any]) -> nn.Module | None:
        lc = self.cfg.loss
        accepted = loss_parameters(lc.metric_loss) if lc.metric_loss != "none" else []
        if lc.margin != LossConfig.margin and "margin" not in accepted and lc.local_weight == 0:
            raise ConfigError(f"loss.margin={lc.margin}: loss.metric_loss={lc.metric_loss!r} has no margin (its own "
                              "settings go in loss.metric_params, e.g. alpha/beta for quadruplet)")
        if lc.metric_loss == "none":
            return None
        if lc.soft_margin and "soft_margin" not in accepted:
            raise ConfigError(f"loss.soft_margin=true: loss.metric_loss={lc.metric_loss!r} has no soft margin")
        shared = {"margin": lc.margin, "soft_margin": lc.soft_margin, **context}
        # metric_params override the shared settings (e.g. a loss-specific margin)
        return build_task_loss(lc.metric_loss, "loss.metric_loss", shared, lc.metric_params)

    def optimizer(self, member: Member) -> torch.optim.Optimizer:
        o = self.cfg.optim
        groups = [{"params": [p for p in member.model.parameters() if p.requires_grad]}]
        loss_params = [p for extra in member.extras.values() for p in extra.parameters() if p.requires_grad]
        if loss_params:  # no weight decay: it would pull e.g. the centres of CenterLoss towards the origin
            groups.append({"params": loss_params, "weight_decay": 0.0})
        return build_optimizer(groups, o.optimizer, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                               nesterov=True)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Per-step schedule: linear warm-up from 10% then cosine decay (or step decay at milestones)."""
        o = self.cfg.optim
        factor = warmup_then_decay(o.warmup_epochs * self.steps_per_epoch, max(1, o.epochs * self.steps_per_epoch),
                                   self.steps_per_epoch, o.scheduler, o.milestones, o.gamma)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def checkpoint_extra(self, member: int) -> dict[str, Any]:
        extra = {"label_map": self.label_map, "students": len(self.models), "student": member}
        if self.distill_losses:
            extra["distilled_from"] = str(Path(self.cfg.distill.teacher).resolve())
        return extra

    # --------------------------------------------------------------- training
    def _student_loss(self, out: dict[str, Any], labels: torch.Tensor, ranking: bool,
                      student: int = 0) -> dict[str, torch.Tensor]:
        lc = self.cfg.loss
        losses = self.student_losses[student]
        out = self._global_outputs(out)  # tasks that call the model themselves (tracklet) pass local outputs
        parts: dict[str, torch.Tensor] = {}
        if losses["id"] is not None:
            parts["id"] = lc.id_weight * apply_loss(losses["id"], out, labels)
        for i, entry in enumerate(lc.extra):
            name = entry["name"] if entry["name"] not in parts else f"extra{i}"
            parts[name] = float(entry.get("weight", 1.0)) * apply_loss(losses[f"extra{i}"], out, labels)
        if ranking and losses["metric"] is not None:
            parts["metric"] = lc.metric_weight * apply_loss(losses["metric"], out, labels)
        if ranking and losses["local"] is not None:
            parts["local"] = lc.local_weight * losses["local"](out["features"], labels, out["local_features"])
        if self.distill_losses:  # how the frozen teacher relates this batch's images (from the first epoch)
            targets = (self.batch_targets if self.online_teacher is not None else
                       self.teacher_features[torch.as_tensor(self.batch_items)].to(out["features"].device))
            for name, (weight, loss) in self.distill_losses.items():
                student = out[getattr(loss, "student_output", "features")]
                parts[f"distill_{name}"] = weight * loss(student, targets)
        if not parts:
            raise ConfigError("no loss is active: set loss.id_loss or loss.metric_loss")
        return parts

    def _forward(self, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
        """One model's outputs on the augmented batch `x`. Tasks whose models take per-image side data (keypoint
        boxes, attributes) override this and read the batch's sampled items from `self.batch_items`."""
        return model(x)

    def _global_outputs(self, out: dict[str, Any]) -> dict[str, Any]:
        """`out` with the `gathered_outputs` of every rank joined (rank-major, differentiable); from here on
        `self.batch_items` names the global batch's items too. Unchanged in one process."""
        if not current().active or isinstance(out, GlobalOutputs):
            return out
        n = len(self.local_items)

        def per_item(key: str, value: Any) -> bool:
            return (isinstance(value, torch.Tensor) and 1 <= value.dim() <= 3 and value.shape[0] == n
                    and key not in self.local_outputs)

        gathered = GlobalOutputs({k: gather_with_grad(v) if per_item(k, v) else v for k, v in out.items()})
        self.batch_items = self.global_items
        return gathered

    def _step_losses(self, x: torch.Tensor, labels: torch.Tensor, ranking: bool) -> dict[str, torch.Tensor]:
        outs = [self._forward(m, x) for m in self.models]
        outs = [self._global_outputs(out) for out in outs]
        parts: dict[str, torch.Tensor] = {}
        for i, out in enumerate(outs):
            for name, value in self._student_loss(out, labels, ranking, i).items():
                parts[name if len(outs) == 1 else f"s{i}_{name}"] = value
        if self.mutual_loss is not None:
            parts.update(self.mutual_loss.parts(logits=[o["logits"] for o in outs],
                                                embeddings=[o["features"] for o in outs]))
        return parts

    def _batch_rows(self, idx: np.ndarray, epoch: int) -> np.ndarray:
        """Rows of `train_images` that make the batch of sampled items `idx`: here the images themselves (the
        tracklet task picks a clip of frames per sampled tracklet)."""
        return idx

    def epoch_plan(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(this rank's items, their rows of `train_images`, the global batch's items) per step of `epoch`.

        Rows are picked for the global batch and then split, so the ranks' rows joined are one process's rows
        (the tracklet task's clips included)."""
        ctx = current()
        if self.cfg.optim.p % ctx.world_size:
            raise ConfigError(f"optim.p={self.cfg.optim.p}: the global batch's identities must split evenly over "
                              f"{ctx.world_size} processes (choose a multiple of {ctx.world_size})")
        plan = []
        for items in self.sampler.global_batches(epoch):
            rows = self._batch_rows(items, epoch)
            n, per = len(items) // ctx.world_size, len(rows) // len(items)
            lo, hi = ctx.rank * n, (ctx.rank + 1) * n
            plan.append((items[lo:hi], rows[lo * per:hi * per], items))
        return plan

    def train_epoch(self, epoch: int, optimise: Optimise) -> dict[str, Any]:
        cfg, ctx = self.cfg, current()
        for m in self.models:
            m.train()
        # Augmentation draws: one stream per rank (rank 0's is the single-process stream).
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 1_000_003 * ctx.rank)
        ranking = epoch >= cfg.optim.pretrain_epochs
        totals: dict[str, float] = {}
        n_batches, n_images, start = 0, 0, time.perf_counter()
        plan = self.epoch_plan(epoch)
        self._warn_unused_stream()
        workers = cfg.data.workers if cfg.data.stream else 0
        images = batch_images(self.train_images, [rows for _, rows, _ in plan], workers)
        bar = progress(zip(plan, images), desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", total=len(plan),
                       enabled=self.show_progress)
        for step, ((idx, rows, global_idx), pixels) in enumerate(bar):
            frac = (epoch + step / len(plan)) / max(1, cfg.optim.epochs)
            self.batch_items = idx  # the sampled items of this batch, for tasks with per-image side data
            self.local_items, self.global_items = idx, global_idx  # all ranks' items: the losses' batch
            x = normalize(pixels.to(self.device), self.mean, self.std)
            x = self.augment(x, frac, generator=gen).contiguous(memory_format=self.memory_format)
            if self.online_teacher is not None:  # every rank's views, in the global batch's order
                self.batch_targets = gather_with_grad(self.online_teacher(x, self.mean, self.std))
            labels = torch.as_tensor(self.train_labels[global_idx], device=self.device)
            with torch.autocast(self.device.type, enabled=self.amp):
                parts = self._step_losses(x, labels, ranking)
            loss = sum(parts.values())
            check_finite(loss, f"epoch {epoch + 1}, step {step + 1}", parts)
            optimise(loss, step, len(plan))
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v.item()
            n_batches += 1
            n_images += len(rows) * ctx.world_size
            bar.set_postfix(loss=f"{loss.item():.3f}")
        elapsed = time.perf_counter() - start
        row = {f"loss_{k}": v / max(1, n_batches) for k, v in totals.items()}
        row.update(loss=sum(row.values()), epoch_seconds=elapsed, images_per_second=n_images / max(elapsed, 1e-9),
                   ranking_loss_active=ranking,
                   max_erasing_area=self.augment.max_erasing_area((epoch + 1) / max(1, cfg.optim.epochs)))
        return row

    def _warn_unused_stream(self) -> None:
        if self.cfg.data.stream and not isinstance(self.train_images, DecodedImages) and \
                not getattr(self, "_stream_warned", False):
            self._stream_warned = True
            warnings.warn(f"data.stream: the {self.name} task loads its training images itself (in memory); "
                          "data.stream has no effect on it", stacklevel=3)

    # ------------------------------------------------------------- validation
    @property
    def has_local(self) -> bool:
        return self.cfg.model.local_dim > 0

    def validate_now(self, epoch: int, last: bool) -> bool:
        return self.has_val and ((epoch + 1) % self.cfg.eval_every == 0 or last)

    def evaluate(self) -> list[dict[str, float]]:
        """Validation metrics (percentages) per student, on the global distance."""
        return [self._validate_student(model, with_local=False)["val"] for model in self.models]

    def _validate_student(self, model: nn.Module, with_local: bool) -> dict[str, dict[str, float]]:
        """{"val": global metrics} (+ "val_local": global euclidean + val_local_weight * local distance)."""
        kw = dict(mean=self.mean, std=self.std, device=self.device, flip=self.cfg.flip_tta,
                  show_progress=self.show_progress)
        splits = (("query", self.query_images), ("gallery", self.gallery_images))
        embed = embed_tensor_local if with_local else embed_tensor  # one backbone pass gives global + local
        query, gallery = (embed(model, images, desc=f"validation: embedding {name}", **kw) for name, images in splits)
        qf, gf = (query[0], gallery[0]) if with_local else (query, gallery)
        result = {"val": self._rank_summary(compute_distance_matrix(qf.numpy(), gf.numpy(), metric="cosine"))}
        if with_local:  # the AlignedReID inference distance
            aligned = aligned_distance_matrix(qf, gf, query[1], gallery[1], weight=self.cfg.val_local_weight)
            result["val_local"] = self._rank_summary(aligned.numpy())
        return result

    def _rank_summary(self, distmat: np.ndarray) -> dict[str, float]:
        _, q_pids, q_cams = split_arrays(self.splits.query)
        _, g_pids, g_cams = split_arrays(self.splits.gallery)
        r = evaluate_rank_full(distmat, q_pids, g_pids, q_cams, g_cams)
        return summarize(r.cmc, r.mAP, r.mINP)

    def validate(self) -> dict[str, Any]:
        """Log entries: val (+ val_local), and per-student lists when several students train."""
        per_student = [self._validate_student(model, self.has_local) for model in self.models]
        row: dict[str, Any] = dict(per_student[0])
        if len(per_student) > 1:
            for key in per_student[0]:
                row[f"{key}_students"] = [s[key] for s in per_student]
        return row

    def selection(self, row: dict[str, Any]) -> dict[str, Any]:
        selected = dict(row[self.cfg.select_on])
        if self.has_local:
            selected["selected_on"] = self.cfg.select_on
        return selected

    def console_line(self, row: dict[str, Any], best: dict[str, Any]) -> str:
        v = row[self.cfg.select_on]
        return (f"epoch {row['epoch']}/{self.epochs} validation: rank-1 {v['rank1']:.1f}%  mAP {v['mAP']:.1f}%  "
                f"(best mAP {best['mAP']:.1f}% at epoch {best['epoch']})")

    def plot_curves(self, rows: list[dict], out: Path) -> None:
        plot_training_curves(rows, out / "training_curves.png")

    def report(self, summary: dict[str, Any]) -> None:
        best = summary["best"]
        if best:
            print(f"best validation (epoch {best['epoch']}): rank-1 {best['rank1']:.1f}  mAP {best['mAP']:.1f}  "
                  f"mINP {best['mINP']:.1f}")
