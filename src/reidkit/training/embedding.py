"""Training loop for global embedding models (one student, or several trained mutually).

Flow per epoch: P x K batches from the in-memory image store -> batched augmentation (cut-out curriculum)
-> identity loss (+ ranking loss after the classification pre-training phase) -> gradient accumulation
-> validation (rank-k / mAP) -> atomic `last.pt` (+ `best.pt`) and a JSONL log line. Every epoch is seeded
from (seed, epoch), so `resume` continues to exactly the result of an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from ..config import to_dict
from ..data import load_dataset
from ..data.records import ReIDDataset, relabel, split_arrays
from ..data.sampler import PKSampler
from ..data.split import carve_validation_records
from ..data.store import load_image_tensor
from ..data.transforms import BatchAugment, normalize
from ..errors import ConfigError, TrainingError
from ..inference.features import embed_tensor, embed_tensor_local
from ..losses import MutualLearningLoss, build_loss, loss_parameters
from ..metrics import compute_distance_matrix, evaluate_rank_full, summarize
from ..metrics.alignment import aligned_distance_matrix, local_distance_pairs
from ..models import build_model
from ..utils import atomic_write_json, progress, resolve_device, seed_everything
from .config import LossConfig, TrainConfig
from .plots import plot_training_curves
from .runlog import append_log, start_run


def prepare_splits(cfg: TrainConfig, data_root: str | Path | None = None) -> ReIDDataset:
    """Load the dataset and decide which part validates (carve-out, its own query/gallery, or none)."""
    root = data_root or cfg.data.root
    if not root:
        raise ConfigError("no dataset: pass --data DIR or set data.root in the config")
    dataset = load_dataset(root)
    mode = cfg.data.validation
    if mode == "carve":
        carved = carve_validation_records(dataset.train, cfg.data.val_ids, cfg.data.split_seed)
        return ReIDDataset(carved.train, carved.query, carved.gallery, name=f"{dataset.name} (val carve-out)",
                          notes=dataset.notes)
    if mode == "dataset":
        if not dataset.query or not dataset.gallery:
            raise ConfigError(f"data.validation=dataset but {root} has no query/gallery split")
        return dataset
    if mode == "none":
        return ReIDDataset(dataset.train, [], [], name=dataset.name)
    raise ConfigError(f"data.validation={mode!r}: expected carve, dataset or none")


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


class EmbeddingTrainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, data_root: str | Path | None = None,
                 show_progress: bool = True):
        if cfg.students < 1:
            raise ConfigError(f"students={cfg.students}: must be >= 1")
        check_local_options(cfg)
        self.cfg, self.out = cfg, Path(out_dir)
        self.show_progress = show_progress
        self.device = resolve_device(cfg.device)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.data_root = data_root
        self.out.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.splits = prepare_splits(cfg, self.data_root)
        train, self.label_map = relabel(self.splits.train)
        self.train_labels = np.asarray([r.pid for r in train])
        self.num_classes = len(self.label_map)
        size = (cfg.data.height, cfg.data.width)
        self.train_images = load_image_tensor([r.path for r in train], size, cfg.data.resize,
                                              self.show_progress, desc="loading train images")
        self.has_val = bool(self.splits.query)
        if self.has_val:
            self.query_images = load_image_tensor([r.path for r in self.splits.query], size, cfg.data.resize,
                                                  self.show_progress, desc="loading query images")
            self.gallery_images = load_image_tensor([r.path for r in self.splits.gallery], size, cfg.data.resize,
                                                    self.show_progress, desc="loading gallery images")
        self.sampler = PKSampler(self.train_labels, cfg.optim.p, cfg.optim.k, seed=cfg.seed)
        self.model_cfg = {k: v for k, v in asdict(cfg.model).items() if k != "name" and v is not None}
        self.model_cfg.update(num_classes=self.num_classes, input_size=size)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.models = [build_model(cfg.model.name, **self.model_cfg).to(self.device, memory_format=self.memory_format)
                       for _ in range(cfg.students)]
        self.mean, self.std = self.models[0].input_mean, self.models[0].input_std
        self.optimizers = [self._build_optimizer(m) for m in self.models]
        self.iters_per_epoch = math.ceil(len(self.sampler) / cfg.optim.accum_steps)
        self.schedulers = [self._build_scheduler(o) for o in self.optimizers]
        use_amp = cfg.amp and self.device.type == "cuda"
        # One scaler for all students: they share one loss and one backward(), so one scale applies to every
        # gradient; each optimiser is stepped through it and the scale is updated once per step.
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        self.autocast = use_amp
        self.augment = BatchAugment(cfg.augment)
        self._build_losses()

    def _build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = [p for p in model.parameters() if p.requires_grad]
        if o.optimizer == "adam":
            return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        if o.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        if o.optimizer == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True)
        raise ConfigError(f"optim.optimizer={o.optimizer!r}: expected adam, adamw or sgd")

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Per-step schedule: linear warm-up from 10% then cosine decay (or step decay at milestones)."""
        o = self.cfg.optim
        warmup = o.warmup_epochs * self.iters_per_epoch
        total = max(1, o.epochs * self.iters_per_epoch)
        if o.scheduler not in ("cosine", "step"):
            raise ConfigError(f"optim.scheduler={o.scheduler!r}: expected cosine or step")

        def factor(step: int) -> float:
            if step < warmup:
                return 0.1 + 0.9 * step / warmup
            if o.scheduler == "cosine":
                progress_ = (step - warmup) / max(1, total - warmup)
                return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0)))
            epoch = step // self.iters_per_epoch
            return o.gamma ** sum(epoch >= m for m in o.milestones)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _build_losses(self) -> None:
        lc = self.cfg.loss
        self.id_loss = None
        if lc.id_loss == "ce":
            self.id_loss = build_loss("ce", num_classes=self.num_classes, epsilon=lc.label_smooth)
        elif lc.id_loss != "none":
            raise ConfigError(f"loss.id_loss={lc.id_loss!r}: expected ce or none")
        self.metric_loss = None
        accepted = loss_parameters(lc.metric_loss) if lc.metric_loss != "none" else []
        if lc.margin != LossConfig.margin and "margin" not in accepted and lc.local_weight == 0:
            raise ConfigError(f"loss.margin={lc.margin}: loss.metric_loss={lc.metric_loss!r} has no margin (its own "
                              "settings go in loss.metric_params, e.g. alpha/beta for quadruplet)")
        if lc.metric_loss != "none":
            if lc.soft_margin and "soft_margin" not in accepted:
                raise ConfigError(f"loss.soft_margin=true: loss.metric_loss={lc.metric_loss!r} has no soft margin")
            common = {k: v for k, v in (("margin", lc.margin), ("soft_margin", lc.soft_margin)) if k in accepted}
            # metric_params override the shared settings (e.g. a loss-specific margin)
            self.metric_loss = build_loss(lc.metric_loss, **{**common, **lc.metric_params})
        self.local_loss = None
        if lc.local_weight > 0:
            # Mined with batch-hard on the same global features and metric as the global triplet: the same hard
            # samples, as in the paper; the loss then scores their local (aligned) distances.
            metric = lc.metric_params.get("metric", "euclidean")
            self.local_loss = build_loss("aligned_triplet", local_distance_fn=local_distance_pairs, margin=lc.margin,
                                         soft_margin=lc.soft_margin, metric=metric)
        self.mutual_loss = None
        if len(self.models) > 1:
            self.mutual_loss = MutualLearningLoss(num_students=len(self.models), kl_weight=lc.mutual_kl_weight,
                                                  metric_weight=lc.mutual_metric_weight,
                                                  normalize=lc.mutual_normalize)

    # --------------------------------------------------------------- training
    def _student_loss(self, out: dict[str, Any], labels: torch.Tensor, ranking: bool) -> dict[str, torch.Tensor]:
        lc = self.cfg.loss
        parts: dict[str, torch.Tensor] = {}
        if self.id_loss is not None:
            parts["id"] = lc.id_weight * self.id_loss(out["logits"], labels)
        if ranking and self.metric_loss is not None:
            parts["metric"] = lc.metric_weight * self.metric_loss(out["features"], labels)
        if ranking and self.local_loss is not None:
            parts["local"] = lc.local_weight * self.local_loss(out["features"], labels, out["local_features"])
        if not parts:
            raise ConfigError("no loss is active: set loss.id_loss or loss.metric_loss")
        return parts

    def _step_losses(self, x: torch.Tensor, labels: torch.Tensor, ranking: bool) -> dict[str, torch.Tensor]:
        outs = [m(x) for m in self.models]
        parts: dict[str, torch.Tensor] = {}
        for i, out in enumerate(outs):
            for name, value in self._student_loss(out, labels, ranking).items():
                parts[name if len(outs) == 1 else f"s{i}_{name}"] = value
        if self.mutual_loss is not None:
            parts.update(self.mutual_loss.parts(logits=[o["logits"] for o in outs],
                                                embeddings=[o["features"] for o in outs]))
        return parts

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        for m in self.models:
            m.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        ranking = epoch >= cfg.optim.pretrain_epochs
        totals: dict[str, float] = {}
        n_batches, n_images, start = 0, 0, time.perf_counter()
        batches = list(self.sampler.batches(epoch))
        bar = progress(batches, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", enabled=self.show_progress)
        for step, idx in enumerate(bar):
            frac = (epoch + step / len(batches)) / max(1, cfg.optim.epochs)
            x = normalize(self.train_images[idx].to(self.device), self.mean, self.std)
            x = self.augment(x, frac, generator=gen).contiguous(memory_format=self.memory_format)
            labels = torch.as_tensor(self.train_labels[idx], device=self.device)
            with torch.autocast(self.device.type, enabled=self.autocast):
                parts = self._step_losses(x, labels, ranking)
            loss = sum(parts.values())
            if not torch.isfinite(loss):
                detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} ({detail}); "
                                    "lower optim.lr or check the data")
            self.scaler.scale(loss / cfg.optim.accum_steps).backward()
            if (step + 1) % cfg.optim.accum_steps == 0 or step + 1 == len(batches):
                self._optimizer_step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v.item()
            n_batches += 1
            n_images += len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        elapsed = time.perf_counter() - start
        row = {f"loss_{k}": v / max(1, n_batches) for k, v in totals.items()}
        row.update(loss=sum(row.values()), epoch_seconds=elapsed, images_per_second=n_images / max(elapsed, 1e-9),
                   lr=self.optimizers[0].param_groups[0]["lr"], ranking_loss_active=ranking,
                   max_erasing_area=self.augment.max_erasing_area((epoch + 1) / max(1, cfg.optim.epochs)))
        return row

    def _optimizer_step(self) -> None:
        clip = self.cfg.optim.grad_clip
        for model, opt, sched in zip(self.models, self.optimizers, self.schedulers):
            if clip > 0:
                self.scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            self.scaler.step(opt)
            opt.zero_grad(set_to_none=True)
            sched.step()
        self.scaler.update()

    # ------------------------------------------------------------- validation
    @property
    def has_local(self) -> bool:
        return self.cfg.model.local_dim > 0

    def evaluate(self) -> list[dict[str, float]]:
        """Validation metrics (percentages) per student, on the global distance."""
        return [self._validate_student(model, with_local=False)["val"] for model in self.models]

    def _validate_student(self, model: nn.Module, with_local: bool) -> dict[str, dict[str, float]]:
        """{"val": global metrics} (+ "val_local": global euclidean + val_local_weight * local distance)."""
        kw = dict(mean=self.mean, std=self.std, device=self.device, flip=self.cfg.flip_tta)
        splits = (self.query_images, self.gallery_images)
        if with_local:  # one backbone pass gives both the global and the local features
            (qf, ql), (gf, gl) = (embed_tensor_local(model, images, **kw) for images in splits)
        else:
            qf, gf = (embed_tensor(model, images, **kw) for images in splits)
        result = {"val": self._rank_summary(compute_distance_matrix(qf.numpy(), gf.numpy(), metric="cosine"))}
        if with_local:  # the AlignedReID inference distance
            aligned = aligned_distance_matrix(qf, gf, ql, gl, weight=self.cfg.val_local_weight)
            result["val_local"] = self._rank_summary(aligned.numpy())
        return result

    def _rank_summary(self, distmat: np.ndarray) -> dict[str, float]:
        _, q_pids, q_cams = split_arrays(self.splits.query)
        _, g_pids, g_cams = split_arrays(self.splits.gallery)
        r = evaluate_rank_full(distmat, q_pids, g_pids, q_cams, g_cams)
        return summarize(r.cmc, r.mAP, r.mINP)

    def _validation_row(self) -> dict[str, Any]:
        """Log entries: val (+ val_local), and per-student lists when several students train."""
        per_student = [self._validate_student(model, self.has_local) for model in self.models]
        row: dict[str, Any] = dict(per_student[0])
        if len(per_student) > 1:
            for key in per_student[0]:
                row[f"{key}_students"] = [s[key] for s in per_student]
        return row

    # ---------------------------------------------------------- checkpointing
    def _save(self, name: str, epoch: int, metrics: dict, student: int = 0) -> None:
        extra = {"label_map": self.label_map, "students": len(self.models), "student": student}
        if student == 0 and len(self.models) > 1:
            extra["other_students"] = [
                {"model": m.state_dict(), "optimizer": o.state_dict(), "scheduler": s.state_dict()}
                for m, o, s in zip(self.models[1:], self.optimizers[1:], self.schedulers[1:])]
        save_checkpoint(self.out / name, model=self.models[student], model_name=self.cfg.model.name,
                        model_cfg=self.model_cfg, epoch=epoch, optimizer=self.optimizers[student],
                        scheduler=self.schedulers[student], scaler=self.scaler,
                        config=to_dict(self.cfg), metrics=metrics, extra=extra)

    def _resume(self) -> tuple[int, dict]:
        payload = load_checkpoint(self.out / "last.pt", map_location=self.device)
        self.models[0].load_state_dict(payload["model"])
        self.optimizers[0].load_state_dict(payload["optimizer"])
        self.schedulers[0].load_state_dict(payload["scheduler"])
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        for state, m, o, s in zip(payload["extra"].get("other_students", []), self.models[1:],
                                  self.optimizers[1:], self.schedulers[1:]):
            m.load_state_dict(state["model"])
            o.load_state_dict(state["optimizer"])
            s.load_state_dict(state["scheduler"])
        set_rng_state(payload["rng"])
        return payload["epoch"], payload["metrics"].get("best", {})

    # -------------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        self.setup()
        start_epoch, best = 0, {}
        if resume and (self.out / "last.pt").exists():
            start_epoch, best = self._resume()
        log_path = self.out / "log.jsonl"
        rows, deadline = start_run(self.out, to_dict(cfg), start_epoch, cfg.max_minutes)
        epoch = start_epoch
        for epoch in range(start_epoch, cfg.optim.epochs):
            seed_everything(cfg.seed * 1_000 + epoch)
            row = {"epoch": epoch + 1, **self._train_epoch(epoch)}
            out_of_time = time.monotonic() > deadline
            last_epoch = epoch + 1 == cfg.optim.epochs or out_of_time
            if self.has_val and ((epoch + 1) % cfg.eval_every == 0 or last_epoch):
                row.update(self._validation_row())
                selected = row[cfg.select_on]
                if not best or selected["mAP"] > best["mAP"]:
                    best = {**selected, "epoch": epoch + 1}
                    if self.has_local:
                        best["selected_on"] = cfg.select_on
                    for s in range(len(self.models)):
                        self._save("best.pt" if s == 0 else f"best_student{s}.pt", epoch + 1, {"best": best}, s)
            self._save("last.pt", epoch + 1, {"best": best, "last": row.get("val", {})})
            rows.append(row)
            append_log(log_path, row)
            plot_training_curves(rows, self.out / "training_curves.png")
            if out_of_time and epoch + 1 < cfg.optim.epochs:
                print(f"time budget of {cfg.max_minutes} min reached after epoch {epoch + 1}; "
                      f"resume with --resume to continue")
                break
        if not self.has_val:
            for s in range(len(self.models)):  # without validation the final weights are the deliverable
                self._save("best.pt" if s == 0 else f"best_student{s}.pt", epoch + 1, {}, s)
        summary = {"best": best, "epochs_done": epoch + 1, "log": rows}
        atomic_write_json({"best": best, "epochs_done": epoch + 1}, self.out / "summary.json")
        return summary


def train_embedding(cfg: TrainConfig, out_dir: str | Path, data_root: str | Path | None = None,
                    resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    return EmbeddingTrainer(cfg, out_dir, data_root, show_progress).fit(resume=resume)

