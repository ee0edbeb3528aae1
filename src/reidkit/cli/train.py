"""What `reidkit train` and `reidkit extract` do, as plain functions."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from ..config import load_config
from ..data import load_dataset
from ..data.images import load_image_tensor
from ..data.records import split_arrays
from ..errors import ConfigError, ReIDError
from ..inference.extractor import Extractor
from ..training.config import TrainConfig
from ..utils import atomic_path
from .options import add_batch_size, add_data, add_device, add_flip, add_minutes, add_model, add_quiet


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
              no_val: bool = False, show_progress: bool = True, overwrite: bool = False) -> dict:
    """Train the model of `config` with the task its registration names (embedding, pair, ...).

    The config, the device and the run folder are checked before any data is loaded."""
    from ..training.config import check_config
    from ..training.loop import check_run_folder, train
    from ..training.tasks import task_for_model
    from ..utils import resolve_device

    overrides = list(overrides) + (["data.validation=none"] if no_val else [])
    task_cls = task_for_model(_model_name(config, overrides))
    cfg = load_config(task_cls.config_class, config, overrides)
    check_config(cfg)
    resolve_device(cfg.device)
    if resume or not overwrite:  # --overwrite deletes the old run only once the new one starts
        check_run_folder(Path(out), resume, overwrite)
    task = task_cls(cfg, data, show_progress)
    summary = train(task, out, resume=resume, overwrite=overwrite)
    task.report(summary)
    print(f"checkpoints and logs in {out}")
    return summary


def run_extract(checkpoint: Path, data: Path, out: Path, device: str = "auto", flip: bool = False,
                show_progress: bool = True, batch_size: int = 128, splits: Sequence[str] | None = None) -> None:
    """Embed the `splits` of a dataset (None: every split it has); the .npz also works as `reidkit evaluate
    --features` input (which needs query and gallery).

    A model with the AlignedReID local branch also writes `{split}_local` (N, stripes, local_dim) arrays, which
    `reidkit evaluate --features X --local-weight W` uses.
    """
    dataset = load_dataset(data)
    ext = Extractor(checkpoint, device=device, flip=flip, batch_size=batch_size)
    arrays: dict[str, np.ndarray] = {}
    all_splits = [("query", "q", dataset.query), ("gallery", "g", dataset.gallery), ("train", "t", dataset.train)]
    for split, key, records in (s for s in all_splits if splits is None or s[0] in splits):
        if not records:
            continue
        paths, pids, camids = split_arrays(records)
        images = load_image_tensor(paths, ext.input_size, ext.resize, show_progress, desc=f"loading {split}")
        if ext.has_local:
            arrays[f"{split}_features"], arrays[f"{split}_local"] = ext.embed_uint8(images, show_progress, local=True)
        else:
            arrays[f"{split}_features"] = ext.embed_uint8(images, show_progress)
        arrays[f"{key}_pids"], arrays[f"{key}_camids"], arrays[f"{key}_paths"] = pids, camids, np.asarray(paths)
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    counts = ", ".join(f"{k.split('_')[0]} {len(v)}" for k, v in arrays.items() if k.endswith("_features"))
    local = f" + local features ({ext.model.local_dim} per stripe)" if ext.has_local else ""
    print(f"wrote {out}: {counts} embeddings of dim {ext.dim}{local}")


# ------------------------------------------------------------------------------------------------- parsers

def _train_command(args: argparse.Namespace) -> None:
    overrides = list(args.overrides)
    overrides += [f"max_minutes={args.minutes}"] if args.minutes is not None else []
    overrides += [f"device={args.device}"] if args.device is not None else []
    _require_pretrained_weights(args.config, overrides)
    run_train(args.config, overrides, data=args.data, out=args.out, resume=args.resume, no_val=args.no_val,
              show_progress=not args.quiet, overwrite=args.overwrite)


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


def _extract_command(args: argparse.Namespace) -> None:
    run_extract(args.model, args.data, args.out, device=args.device, flip=args.flip, batch_size=args.batch_size,
                show_progress=not args.quiet, splits=args.splits)


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
    add_quiet(p)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.epochs=10 model.pooling=max")
    p.set_defaults(func=_train_command)


def add_extract_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_data(p)
    p.add_argument("--out", type=Path, required=True, help="output .npz (features + ids + paths)")
    p.add_argument("--splits", nargs="+", choices=("query", "gallery", "train"), metavar="SPLIT",
                   help="splits to embed: query, gallery, train (default: every split the dataset has; "
                        "`evaluate --features` needs query and gallery)")
    add_device(p)
    add_batch_size(p, default=128)
    add_flip(p)
    add_quiet(p)
    p.set_defaults(func=_extract_command)
