"""The one training loop: fit / resume / checkpoints / JSONL log / time budget / console, for any task.

A task (training/tasks/) says what to optimise and how to judge it; this loop does the rest, the same way for
every model (the meta-architecture / engine split of fast-reid and torchreid):

    for each epoch (seeded from (seed, epoch), so `resume` continues to exactly an uninterrupted run):
        task.train_epoch(epoch, optimise)     optimise(loss, step, n): backward (+ AMP scaling, accumulation),
                                              then at accumulation boundaries clip, step, zero, schedule
                                              (+ the weight average, ema_decay: training/ema.py)
        task.validate() when due              -> one console line; best.pt when task.selection improves
                                              (both on the weight average when there is one)
        last.pt (atomic), log.jsonl line, training curves
        stop early when another epoch would end past `max_minutes` (the run stays resumable)
    task.finish(...)                          final report and pictures; summary.json

Distributed (torchrun / `reidkit train --nproc N`, training/distributed.py): every rank runs this loop on its share
of each global batch, with the models wrapped in DDP while an epoch trains; rank 0 alone validates and writes
(checkpoints hold the unwrapped models, so a run resumes on any number of processes); the time-budget decision is
rank 0's, broadcast so all ranks stop together.

Checkpoints (reidkit.checkpoint) hold member 0's model, optimiser, scheduler and scaler; the members' stateful
extras (loss parameters such as CenterLoss centres, training-only heads) go in `extra` under their names, other
members (mutual learning) in `extra["other_students"]`, the weight averages of last.pt in `extra["ema"]`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from ..config import to_dict
from ..errors import ConfigError, ReIDError
from ..utils import atomic_write_json, seed_everything
from .config import check_config
from .distributed import (
    DistContext,
    broadcast_object,
    collective_failure,
    convert_sync_batchnorm,
    current,
    fault_point,
    init_from_env,
    local_device,
    shutdown,
    wrap_models,
    wrapped,
)
from .ema import WeightEMA, averaged_weights
from .runlog import append_log, start_run
from .tasks.base import Member, Task

EpochCallback = Callable[["Trainer", dict[str, Any]], None]


class Trainer:
    """Runs `task` into `out_dir`. Task attributes read through the trainer (`trainer.model`, ...).

    `callbacks` are called as `callback(trainer, row)` after each epoch's row is logged (progress reporting,
    external stopping by raising, ...)."""

    def __init__(self, task: Task, out_dir: str | Path, callbacks: Sequence[EpochCallback] = ()):
        check_config(task.cfg)  # the CLI checks before loading data; this covers the Python API
        self.task, self.out = task, Path(out_dir)
        self.callbacks = list(callbacks)
        self.out.mkdir(parents=True, exist_ok=True)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[Any] = []
        self.wrappers: list[nn.Module] = []  # the task's models in DDP (distributed runs)
        self.emas: list[WeightEMA] = []  # weight averages of the members (ema_decay > 0)
        self._epoch = 0

    def __getattr__(self, name: str) -> Any:
        if name == "task":  # not set yet: avoid recursion while unpickling or during __init__
            raise AttributeError(name)
        return getattr(self.task, name)

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        task = self.task
        seed_everything(task.cfg.seed)
        task.setup()
        if current().active:
            for member in task.members:
                convert_sync_batchnorm(member.model, getattr(task.cfg, "sync_bn", "neck"), task.device)
            self.wrappers = wrap_models(task.models, task.device)
        self.optimizers = [task.optimizer(m) for m in task.members]
        self.schedulers = [task.scheduler(o) for o in self.optimizers]
        decay = getattr(task.cfg, "ema_decay", 0.0)
        self.emas = [WeightEMA(m.model, decay) for m in task.members] if decay > 0 else []
        # One scaler for all members: they share one loss and one backward(), so one scale applies to every
        # gradient; each optimiser is stepped through it and the scale is updated once per step.
        self.scaler = torch.amp.GradScaler("cuda", enabled=task.amp)

    # ------------------------------------------------------------ optimising
    def optimise(self, loss: torch.Tensor, step: int, num_steps: int) -> None:
        """Backward of `loss` (step `step` of `num_steps` this epoch); the optimisers step every `accum_steps`
        steps and at the end of the epoch."""
        accum = self.task.accum_steps
        fault_point(self._epoch + 1, step + 1)
        self.scaler.scale(loss / accum).backward()
        if (step + 1) % accum == 0 or step + 1 == num_steps:
            self._optimizer_step()

    def _optimizer_step(self) -> None:
        clip = self.task.grad_clip
        for member, opt, sched in zip(self.task.members, self.optimizers, self.schedulers):
            if clip > 0:
                self.scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(member.model.parameters(), clip)
            self.scaler.step(opt)
            opt.zero_grad(set_to_none=True)
            sched.step()
        self.scaler.update()
        for ema, member in zip(self.emas, self.task.members):
            ema.update(member.model)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        row = self.task.train_epoch(epoch, self.optimise)
        return {**row, "lr": self.optimizers[0].param_groups[0]["lr"]}

    # ---------------------------------------------------------- checkpointing
    def save(self, name: str, epoch: int, metrics: dict, member: int = 0) -> None:
        task, members = self.task, self.task.members
        extra = {**task.checkpoint_extra(member), **_extras_state(members[member])}
        if self.emas and name == "last.pt":  # best.pt is saved with the averages applied: its model IS the average
            extra["ema"] = [ema.state_dict() for ema in self.emas]
        if member == 0 and len(members) > 1:
            extra["other_students"] = [
                {"model": m.model.state_dict(), "optimizer": o.state_dict(), "scheduler": s.state_dict(),
                 **_extras_state(m)}
                for m, o, s in zip(members[1:], self.optimizers[1:], self.schedulers[1:])]
        save_checkpoint(self.out / name, model=members[member].model, model_name=task.model_name,
                        model_cfg=task.model_cfg, epoch=epoch, optimizer=self.optimizers[member],
                        scheduler=self.schedulers[member], scaler=self.scaler, config=to_dict(task.cfg),
                        metrics=metrics, extra=extra)

    def resume(self) -> tuple[int, dict]:
        path, ctx = self.out / "last.pt", current()
        if ctx.active:  # rank 0 reads it (other nodes need not see OUT) and hands it to the others
            payload = broadcast_object(load_checkpoint(path, map_location="cpu") if ctx.is_main else None)
        else:
            payload = load_checkpoint(path, map_location=self.task.device)
        self.task.check_resume(payload, path)
        members = self.task.members
        states = [{**payload["extra"], **payload}] + list(payload["extra"].get("other_students", []))
        for member, opt, sched, state in zip(members, self.optimizers, self.schedulers, states):
            member.model.load_state_dict(state["model"])
            self._restore_extras(member, state, path)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        if self.emas:
            if "ema" not in payload["extra"]:
                raise ConfigError(f"resume: {path} was trained without ema_decay; resume it with the same setting "
                                  "or start a new run")
            for ema, state in zip(self.emas, payload["extra"]["ema"]):
                ema.load_state_dict(state)
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        return payload["epoch"], payload["metrics"].get("best", {})

    def _restore_extras(self, member: Member, state: dict, path: Path) -> None:
        for name, module in member.stateful_extras().items():
            if name not in state:
                option = self.task.extra_options.get(name, name)
                raise ConfigError(f"resume: {path} was trained without {option}; resume it with the same loss "
                                  "settings or start a new run")
            module.load_state_dict(state[name])

    # -------------------------------------------------------------------- fit
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train (from OUT/last.pt with `resume`); an earlier run in OUT is replaced only with `overwrite`.

        Under torchrun the process group is joined here (when the caller has not) and left at the end."""
        task, cfg = self.task, self.task.cfg
        owns_group = not torch.distributed.is_available() or not torch.distributed.is_initialized()
        ctx = init_from_env(task.device, getattr(cfg, "dist_timeout_minutes", 30.0))
        try:
            if ctx.active and not task.supports_distributed:
                raise ConfigError(f"the {task.name} task trains in one process: run it without torchrun / --nproc")
            task.device = local_device(task.device)
            if ctx.is_main:
                check_run_folder(self.out, resume, overwrite)
            return self._fit(ctx, resume)
        except ReIDError:
            raise
        except RuntimeError as exc:
            if ctx.active:  # a collective failed: another rank died or hung
                raise collective_failure(exc, f"epoch {self._epoch + 1}") from exc
            raise
        finally:
            if owns_group and ctx.active:
                shutdown()

    def _fit(self, ctx: DistContext, resume: bool) -> dict[str, Any]:
        task, cfg = self.task, self.task.cfg
        self.setup()
        start_epoch, best = 0, {}
        if resume:
            start_epoch, best = self.resume()
        rows: list[dict] = []
        deadline = math.inf
        if ctx.is_main:
            rows, deadline = start_run(self.out, to_dict(cfg), start_epoch, cfg.max_minutes)
        epochs_done, last_duration = start_epoch, 0.0
        for epoch in range(start_epoch, task.epochs):
            self._epoch = epoch
            epoch_start = time.monotonic()
            # dropout masks: same per epoch with or without resume (one stream per rank)
            seed_everything(cfg.seed * 1_000 + epoch + 7_919 * ctx.rank)
            with wrapped(task, self.wrappers):
                row = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            # Stop when the next epoch (assumed as long as the longer of this and the last one) would end past
            # the budget; the last epoch of a run is always validated. Rank 0 decides for all.
            now = time.monotonic()
            out_of_time = now + max(now - epoch_start, last_duration) > deadline and epoch + 1 < task.epochs
            out_of_time = broadcast_object(out_of_time)
            if ctx.is_main:
                best = self._end_epoch(row, rows, best, epoch, out_of_time)
            epochs_done, last_duration = epoch + 1, time.monotonic() - epoch_start
            if out_of_time:
                if ctx.is_main:
                    print(f"time budget of {cfg.max_minutes} min: stopping after epoch {epochs_done} (another "
                          "epoch would not fit); resume with --resume to continue")
                break
        if not ctx.is_main:
            return {"model": task.model_name, "task": task.name, "epochs_done": epochs_done, "best": {},
                    "rank": ctx.rank, "log": []}
        return self._finish(epochs_done, best, rows)

    def _end_epoch(self, row: dict, rows: list[dict], best: dict, epoch: int, out_of_time: bool) -> dict:
        """Rank 0 after an epoch: validation when due, last.pt, the log line, curves, callbacks."""
        task = self.task
        if task.validate_now(epoch, epoch + 1 == task.epochs or out_of_time):
            with self._averaged():  # validated and saved as best: the weight average, when there is one
                row.update(task.validate())
                best = self._update_best(row, best, epoch + 1)
            print(task.console_line(row, best), flush=True)
        self.save("last.pt", epoch + 1, {"best": best, "last": row.get("val", {})})
        rows.append(row)
        append_log(self.out / "log.jsonl", row)
        task.plot_curves(rows, self.out)
        for callback in self.callbacks:
            callback(self, row)
        return best

    def _averaged(self) -> AbstractContextManager[None]:
        return averaged_weights(self.emas, [m.model for m in self.task.members])

    def _update_best(self, row: dict, best: dict, epoch: int) -> dict:
        selected = self.task.selection(row)
        key = self.task.best_key
        if best and selected[key] <= best[key]:
            return best
        best = {**selected, "epoch": epoch}
        for s in range(len(self.task.members)):
            self.save("best.pt" if s == 0 else f"best_student{s}.pt", epoch, {"best": best}, s)
        return best

    def _finish(self, epochs_done: int, best: dict, rows: list[dict]) -> dict[str, Any]:
        task = self.task
        if not task.has_val:  # without validation the final weights (or their average) are the deliverable
            with self._averaged():
                for s in range(len(task.members)):
                    self.save("best.pt" if s == 0 else f"best_student{s}.pt", epochs_done, {}, s)
        summary: dict[str, Any] = {"model": task.model_name, "task": task.name, "epochs_done": epochs_done,
                                   "best": best}
        if task.has_val and best:
            summary.update(task.finish(self, best))
        atomic_write_json(summary, self.out / "summary.json")
        return {**summary, "log": rows}


RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "summary.json")  # what a run writes that a new run would replace


def check_run_folder(out: Path, resume: bool, overwrite: bool = False) -> None:
    """Refuse to replace an earlier run's results without `resume` or `overwrite` (which deletes them first, so
    no stale best.pt survives), and to resume a run that has no last.pt."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    if resume and not (out / "last.pt").is_file():
        raise ConfigError(f"--resume: {out / 'last.pt'} not found; nothing to resume (drop --resume to start a "
                          "new run)")
    if not resume:
        found = [name for name in RUN_FILES if (out / name).exists()]
        if found and overwrite:
            for path in [out / name for name in found] + sorted(out.glob("best_student*.pt")):
                path.unlink()
        elif found:
            raise ConfigError(f"{out}: holds an earlier run ({', '.join(found)}); use --resume to continue it, "
                              "--overwrite to replace it, or choose a new --out")


def _extras_state(member: Member) -> dict[str, Any]:
    return {name: module.state_dict() for name, module in member.stateful_extras().items()}


def train(task: Task, out_dir: str | Path, resume: bool = False,
          callbacks: Sequence[EpochCallback] = (), overwrite: bool = False) -> dict[str, Any]:
    """Run `task` into `out_dir`; returns the summary (also in out_dir/summary.json) plus the log rows."""
    return Trainer(task, out_dir, callbacks).fit(resume=resume, overwrite=overwrite)

