"""What `reidkit train` does, as plain functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from ..config import load_config
from ..errors import ConfigError, ReIDError
from ..training.config import TrainConfig
from .options import add_data, add_minutes, add_quiet, positive_int


def _model_name(config: Path | None, overrides: list[str] = ()) -> str:
    """model.name of a config file (the override `model.name=...` wins); "embedding" when neither sets it."""
    for item in reversed(list(overrides)):
        if item.startswith("model.name="):
            return item.split("=", 1)[1]
    if config is None:
        return "embedding"
    try:
        data = yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {config}: cannot be read ({exc})") from None
    model = data.get("model") if isinstance(data, dict) else None  # load_config names a non-mapping file
    return str(model.get("name", "embedding")) if isinstance(model, dict) else "embedding"


def run_train(config: Path | None, overrides: list[str], data: Path | None, out: Path, resume: bool = False,
              no_val: bool = False, show_progress: bool = True, overwrite: bool = False, nproc: int = 1) -> dict:
    """Train the model of `config` with the task its registration names (embedding, pair, ...).

    `nproc` > 1 starts that many processes (torch.distributed.run on loopback) running this same command; under
    torchrun (RANK / WORLD_SIZE set) this process is one rank. The config, the device and the run folder are
    checked before any data is loaded or any process started."""
    from ..training.config import check_config
    from ..training.distributed import init_from_env, launched_by_torchrun, shutdown
    from ..training.loop import check_run_folder, train
    from ..training.tasks import task_for_model
    from ..utils import resolve_device

    overrides = list(overrides) + (["data.validation=none"] if no_val else [])
    task_cls = task_for_model(_model_name(config, overrides))
    cfg = load_config(task_cls.config_class, config, overrides)
    check_config(cfg)
    device = resolve_device(cfg.device)
    if (nproc > 1 or launched_by_torchrun()) and not task_cls.supports_distributed:
        raise ConfigError(f"the {task_cls.name} task trains in one process: drop --nproc / torchrun")
    if nproc > 1 and device.type == "cuda":
        import torch

        if nproc > torch.cuda.device_count():
            raise ConfigError(f"--nproc {nproc}: one process per GPU, and this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    if nproc > 1:
        return _launch(config, overrides, data, out, resume, show_progress, overwrite, nproc)
    ctx = init_from_env(device, getattr(cfg, "dist_timeout_minutes", 30.0))
    try:
        if not ctx.is_main:  # one voice: rank 0 prints; the others' errors still reach stderr
            show_progress = False
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process
        if ctx.is_main and (resume or not overwrite):  # --overwrite deletes the old run only once the new one starts
            check_run_folder(Path(out), resume, overwrite)
        task = task_cls(cfg, data, show_progress)
        summary = train(task, out, resume=resume, overwrite=overwrite)
    finally:
        shutdown()
    if ctx.is_main:
        task.report(summary)
        print(f"checkpoints and logs in {out}")
    return summary


def _launch(config: Path | None, overrides: list[str], data: Path | None, out: Path, resume: bool,
            show_progress: bool, overwrite: bool, nproc: int) -> dict:
    """`reidkit train` in `nproc` processes; the summary rank 0 wrote. A failure names the ranks and how to resume."""
    from ..errors import TrainingError
    from ..training.distributed import launch
    from ..training.loop import check_run_folder
    from ..training.runlog import read_log

    if resume or not overwrite:
        check_run_folder(Path(out), resume, overwrite)
    argv = ["train", "--out", str(out)] + (["--config", str(config)] if config else []) \
        + (["--data", str(data)] if data else []) + (["--resume"] if resume else []) \
        + (["--overwrite"] if overwrite else []) + ([] if show_progress else ["--quiet"]) + list(overrides)
    try:
        launch(argv, nproc)
    except TrainingError as exc:
        log = Path(out) / "log.jsonl"
        done = read_log(log)[-1]["epoch"] if log.is_file() and log.stat().st_size else 0
        hint = (f"{Path(out) / 'last.pt'} holds epoch {done}: continue with the same command and --resume (any "
                "--nproc)") if done else "no epoch finished: nothing to resume"
        raise TrainingError(f"{exc}; {hint}") from None
    summary_file = Path(out) / "summary.json"
    return json.loads(summary_file.read_text()) if summary_file.is_file() else {}


# ------------------------------------------------------------------------------------------------- parsers

def _train_command(args: argparse.Namespace) -> None:
    overrides = list(args.overrides)
    overrides += [f"max_minutes={args.minutes}"] if args.minutes is not None else []
    overrides += [f"device={args.device}"] if args.device is not None else []
    _require_pretrained_weights(args.config, overrides)
    run_train(args.config, overrides, data=args.data, out=args.out, resume=args.resume, no_val=args.no_val,
              show_progress=not args.quiet, overwrite=args.overwrite, nproc=args.nproc)


def _require_pretrained_weights(config: Path | None, overrides: list[str]) -> None:
    """A missing ImageNet weight package fails here, before the run folder or any data loading."""
    from ..models.backbones.pretrained import require_imagenet_weights
    from ..training.tasks import task_for_model

    try:  # the config class of the model's task (embedding, tracklet, ...)
        cls = task_for_model(_model_name(config, overrides)).config_class
        cfg = load_config(cls if issubclass(cls, TrainConfig) else TrainConfig, config, overrides)
    except ReIDError:  # a pair network's config (or a typo, which run_train reports in full)
        return
    if cfg.model.pretrained:
        require_imagenet_weights(cfg.model.backbone)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (e.g. configs/cuhk03np_cpu.yaml); none: the defaults")
    add_data(p, required=False, help="dataset root, image folder or manifest (overrides data.root); a root with "
                                     "query/ and bounding_box_test/ (e.g. from `reidkit split`) validates on them")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, log, curves")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in OUT (its checkpoints and log); without it such a run is refused")
    p.add_argument("--no-val", action="store_true", help="train on all identities (no validation)")
    add_minutes(p, help="wall-time cap in minutes, validation included (overrides max_minutes; 0 = none)")
    p.add_argument("--device", default=None,
                   help="torch device: auto, cpu, cuda, cuda:N (overrides the config's device, default auto)")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="training processes on this machine (DDP: gloo on CPU, NCCL on CUDA; optim.p is the global "
                        "batch's identities, split over them); several machines: torchrun, see docs/scale.md")
    add_quiet(p)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.epochs=10 model.pooling=max")
    p.set_defaults(func=_train_command)
