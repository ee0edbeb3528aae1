"""Data-parallel training on torch.distributed: one process per rank, started by `torchrun` or `reidkit train
--nproc N` (torch.distributed.run's elastic launcher on a loopback rendezvous).

What a rank does differently from a single process (docs/scale.md, "Distributed training"):
  * the P x K sampler gives each rank `optim.p / world_size` of the global batch's identities (no overlap), so
    the global batch and the number of steps per epoch do not depend on the number of processes;
  * models are wrapped in DistributedDataParallel while an epoch trains (gradients averaged over ranks); the
    checkpoints hold the unwrapped models, so a run resumes on any number of processes;
  * the outputs the losses see are all-gathered WITH gradients (`gather_with_grad`): every rank computes the
    losses of the whole global batch, as one process would (batch-hard mining over all ranks' images);
  * BatchNorm layers can be synchronised (`sync_bn`: neck = the BNNeck only, all, none): torch's SyncBatchNorm on
    CUDA, `CpuSyncBatchNorm` (differentiable all-reduce of the moments) on CPU, where torch's refuses to run;
  * rank 0 alone validates, prints and writes (checkpoints, log, curves); the other ranks wait in the next
    collective. A rank that dies makes the others fail at their next collective (gloo notices the closed
    socket; `timeout_minutes` bounds a hang), the launcher stops the run and `--resume` continues from last.pt.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ConfigError, TrainingError

SYNC_BN_MODES = ("neck", "all", "none")
FAULT_ENV = "REIDKIT_FAULT_EXIT"  # "rank:epoch:step" (1-based epoch and step): that rank calls os._exit (tests)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, backend; world_size 1 = an ordinary single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    gather_group: Any = None  # a process group of its own for gathers / BN moments (kept apart from DDP's)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT = DistContext()


def current() -> DistContext:
    """The context set by `init_from_env` (a single process when it was not called)."""
    return _CONTEXT


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device: torch.device, timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT): gloo on
    CPU, NCCL on CUDA. Without those variables (or with WORLD_SIZE=1) nothing is initialised."""
    global _CONTEXT
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        _CONTEXT = DistContext()
        return _CONTEXT
    if dist.is_initialized():
        return _CONTEXT
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available() or (backend == "gloo" and not dist.is_gloo_available()) or \
            (backend == "nccl" and not dist.is_nccl_available()):
        raise ConfigError(f"distributed training on {device.type} needs torch.distributed with the {backend} "
                          "backend, which this torch build lacks; train in one process (drop --nproc / torchrun)")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    timeout = timedelta(minutes=timeout_minutes)
    try:
        dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise TrainingError(f"cannot join the process group (rank {os.environ['RANK']} of "
                            f"{os.environ['WORLD_SIZE']}, {os.environ.get('MASTER_ADDR')}:"
                            f"{os.environ.get('MASTER_PORT')}): {exc}") from exc
    group = dist.new_group(backend=backend, timeout=timeout)
    _CONTEXT = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend, group)
    return _CONTEXT


def shutdown() -> None:
    """Leave the process group (after a last barrier when the run ended well)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = DistContext()


def local_device(device: torch.device) -> torch.device:
    """The rank's CUDA device (cuda:LOCAL_RANK) under torchrun; `device` otherwise."""
    ctx = current()
    if ctx.active and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


# -------------------------------------------------------------------------------------------- collectives

class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces the gradient of the gathered tensor and keeps this rank's slice.
    (torch.distributed.nn.functional.all_gather does the same but is deprecated in torch 2.13, and its
    replacement is a private module.)"""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        ctx.group, ctx.rows = group, (rank * x.shape[0], (rank + 1) * x.shape[0])
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rows[0]:ctx.rows[1]], None


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks; the backward sums the gradients over ranks too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` (equal shapes) in rank order, differentiably: the gradient reaching each
    rank's slice is summed over the ranks' losses. With DDP's averaging, the update equals one process's on the
    global batch (every rank computes the global batch's loss)."""
    ctx = current()
    if not ctx.active:
        return x
    return _GatherWithGrad.apply(x.contiguous(), ctx.gather_group)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    ctx = current()
    return _AllReduceWithGrad.apply(x, ctx.gather_group) if ctx.active else x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (pickled; for small decisions and the resume payload)."""
    if not current().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if current().active:
        dist.barrier()


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch moments span all ranks, for CPU (torch's SyncBatchNorm only runs on GPUs).

    Two differentiable all-reduces (the backward all-reduces the gradients): the global mean, then the global sum
    of squared deviations (two passes: as accurate as one process's batch_norm). Running statistics follow
    BatchNorm (unbiased variance, momentum)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = current()
        if not (self.training and ctx.active):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * ctx.world_size
        mean = all_reduce_with_grad(x.sum(dims)) / count
        var = all_reduce_with_grad(((x - mean.view(shape)) ** 2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1), alpha=m)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(model: nn.Module, mode: str, device: torch.device) -> int:
    """Swap the model's BatchNorm layers for synchronised ones in place (`mode`: neck = the BNNeck `bottleneck`,
    all = every BatchNorm, none); returns how many were swapped. Parameters and buffers are kept (same tensors),
    so optimisers and checkpoints are unaffected."""
    if mode not in SYNC_BN_MODES:
        raise ConfigError(f"sync_bn={mode!r}: expected one of {', '.join(SYNC_BN_MODES)}")
    if mode == "none" or not current().active:
        return 0
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) not in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
                continue
            if mode == "neck" and not full.endswith("bottleneck"):
                continue
            setattr(parent, name, _synced(child, device))
            swapped += 1
    return swapped


def _synced(bn: nn.modules.batchnorm._BatchNorm, device: torch.device) -> nn.Module:
    cls = nn.SyncBatchNorm if device.type == "cuda" else CpuSyncBatchNorm
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


# --------------------------------------------------------------------------------------------- DDP wrapper

class _DDP(nn.parallel.DistributedDataParallel):
    """DDP that still answers the wrapped model's attributes (input_mean, embedding_dim, ...), so task code
    written for a plain model keeps working while it trains wrapped."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_models(models: list[nn.Module], device: torch.device) -> list[nn.Module]:
    """DDP wrappers of `models` (the same objects when not distributed). find_unused_parameters: a classifier
    without an identity loss, or a head only some epochs use, gets no gradient."""
    if not current().active:
        return list(models)
    ids = [device.index] if device.type == "cuda" else None
    return [_DDP(m, device_ids=ids, find_unused_parameters=True) for m in models]


@contextmanager
def wrapped(task: Any, wrappers: list[nn.Module]) -> Iterator[None]:
    """`task.models` are the DDP wrappers inside the block (training) and the plain models outside (validation,
    checkpoints)."""
    if not current().active:
        yield
        return
    plain, task.models = task.models, wrappers
    try:
        yield
    finally:
        task.models = plain


# ------------------------------------------------------------------------------------------------ failures

def fault_point(epoch: int, step: int) -> None:
    """Test hook: exit this rank abruptly at (epoch, step) (1-based) when REIDKIT_FAULT_EXIT=rank:epoch:step."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, at_epoch, at_step = (int(v) for v in spec.split(":"))
    if rank == current().rank and (epoch, step) == (at_epoch, at_step):
        print(f"rank {rank}: exiting at epoch {epoch}, step {step} ({FAULT_ENV})", file=sys.stderr, flush=True)
        os._exit(17)


def collective_failure(exc: BaseException, where: str) -> TrainingError:
    """The message of a rank whose collective failed because another rank died or hung."""
    ctx = current()
    return TrainingError(f"rank {ctx.rank} of {ctx.world_size}: a collective failed during {where} ({exc}); "
                         "another rank probably died (see its message above) or timed out. The run stops; its "
                         "last complete epoch is in last.pt: continue it with --resume (on any number of "
                         "processes)")


# ------------------------------------------------------------------------------------------------ launcher

def launch(argv: list[str], nproc: int, monitor_interval: float = 0.2) -> None:
    """Run `python -m reidkit.cli <argv>` in `nproc` processes on this machine, as `torchrun --standalone
    --nproc_per_node nproc` would (torch.distributed.run's elastic agent, c10d rendezvous on a free loopback
    port, no restarts). A failed rank stops the others; TrainingError names the ranks and exit codes."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: must be >= 1")
    if launched_by_torchrun():
        raise ConfigError("--nproc: this process already runs under torchrun (RANK/WORLD_SIZE are set); use "
                          "either torchrun or --nproc, not both")
    # As torchrun does: one OpenMP thread pool per process sized to share the cores, unless the user chose.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"reidkit-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                          monitor_interval=monitor_interval)
    try:
        elastic_launch(config, sys.executable)("-m", "reidkit.cli", *argv)
    except ChildFailedError as exc:
        first_rank, first = min(exc.failures.items(), key=lambda item: item[1].timestamp)
        others = [f"rank {r}: {_exit(f)}" for r, f in sorted(exc.failures.items()) if r != first_rank]
        raise TrainingError(f"distributed training failed: rank {first_rank} failed first ({_exit(first)}; its "
                            "own message is above)" + (f", then {', '.join(others)}" if others else "")) from None


def _exit(failure: Any) -> str:
    code = failure.exitcode
    return f"stopped by signal {failure.signal_name()}" if code < 0 else f"exit code {code}"
