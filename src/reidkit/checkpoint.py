"""Checkpoints shared by every trainer: one atomic file per save, enough state to resume bit-for-bit.

A checkpoint is a dict:
  model_name, model_cfg   -> `build_model(model_name, **model_cfg)` rebuilds the architecture
  model                   -> state dict
  optimizer, scheduler, scaler (optional) -> state dicts for resuming
  epoch                   -> number of finished epochs
  config                  -> the full training config as a dict (for the record)
  metrics                 -> last/best validation metrics
  rng                     -> python / numpy / torch RNG states, so a resumed run continues identically

Checkpoints are plain data and are read with `torch.load(weights_only=True)`: unpickling an arbitrary file can run
code, so anything beyond tensors, containers and scalars is refused. Checkpoints written before that stored the
numpy RNG state as an ndarray; exactly the numpy globals needed to rebuild that array are allowed.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .errors import ConfigError, ModelError
from .utils import atomic_torch_save

# What unpickling an older checkpoint's numpy RNG state (an ndarray of uint32) needs, and nothing more; numpy 1.x
# wrote the reconstructor under numpy.core, numpy 2 under numpy._core.
_OLD_NUMPY_GLOBALS: list[Any] = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np._core.multiarray._reconstruct,
                                 (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, keys.tolist(), pos, has_gauss, cached)  # a list, not an ndarray: plain data only
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]  # keys: a list (new checkpoints) or an ndarray (older ones)
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, model: nn.Module, model_name: str, model_cfg: dict,
                    epoch: int, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    scaler: Any = None, config: dict | None = None, metrics: dict | None = None,
                    extra: dict | None = None) -> None:
    payload = {
        "format": "reidkit-checkpoint-1",
        "model_name": model_name,
        "model_cfg": model_cfg,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "config": config or {},
        "metrics": metrics or {},
        "rng": rng_state(),
        "extra": extra or {},
    }
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path}: file not found")
    try:
        with torch.serialization.safe_globals(_OLD_NUMPY_GLOBALS):
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # what torch raises when the file needs a global outside the allow-list
        raise ModelError(f"checkpoint {path}: not a plain reidkit checkpoint; refused because loading it would "
                         f"run code ({_offending_global(exc)}). Only load files you trust.") from None
    except Exception as exc:  # corrupt/truncated files raise many different exception types
        raise ModelError(f"checkpoint {path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != "reidkit-checkpoint-1":
        raise ModelError(f"checkpoint {path}: not a reidkit checkpoint (missing 'format' marker)")
    return payload


def _offending_global(exc: BaseException) -> str:
    """torch's weights_only message is long; keep the name of the global it refused, if it gives one."""
    found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL|but got <class) '?([\w.]+)", str(exc))
    return f"it references {found.group(1)}" if found else exc.__class__.__name__


def first_nonfinite(state: dict[str, Any]) -> str | None:
    """Name of the first floating-point tensor holding NaN or inf, in state-dict order; None if all are finite."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def require_finite_weights(payload: dict[str, Any], path: str | Path) -> None:
    """ModelError naming the file and the first NaN/inf tensor: such a model would only emit NaN features."""
    bad = first_nonfinite(payload["model"])
    if bad is not None:
        raise ModelError(f"checkpoint {path}: weights are not finite (tensor {bad!r} holds NaN or inf); "
                         "the model cannot be used (training diverged?)")


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                          task: str | tuple[str, ...] | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model recorded in a checkpoint and load its weights (strict); refuses NaN/inf weights.

    `task` ("embedding" / "pair" / "tracklet", or a tuple of accepted tasks), if given, must include the task of the
    recorded model; weights that do not fit the recorded config (missing, unexpected or differently shaped tensors)
    raise ModelError naming the file.
    """
    from .models import build_model
    from .models.registry import model_spec

    payload = load_checkpoint(path, map_location)
    name = payload["model_name"]
    accepted = (task,) if isinstance(task, str) else task
    recorded = model_spec(name).task
    if accepted is not None and recorded not in accepted:
        reason = " (a pair network compares two images and gives no embedding)" if recorded == "pair" else ""
        raise ModelError(f"checkpoint {path}: model {name!r} is a {recorded}-task model; this needs "
                         f"a model of the {' or '.join(accepted)} task{reason}")
    require_finite_weights(payload, path)
    cfg = dict(payload["model_cfg"])
    cfg.pop("pretrained", None)  # weights come from the checkpoint, not from ImageNet files
    model = build_model(name, **cfg)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:  # torch lists every mismatch; the first few say enough
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        more = f"; ... and {len(lines) - 3} more" if len(lines) > 3 else ""
        raise ModelError(f"checkpoint {path}: its weights do not match its recorded model config ({name!r}, "
                         f"{cfg}): {'; '.join(lines[:3])}{more}") from None
    return model, payload


def init_weights_from(model: nn.Module, model_name: str, checkpoint: str | Path, label_map: dict[int, int]) -> str:
    """Start `model` (registered as `model_name`) from the weights of a checkpoint, the `init_from` option.

    Every tensor but the classifier must fit; the classifier is taken only when the checkpoint was trained on the
    same identities (its label map). A temporal checkpoint gives an embedding model its frame encoder. Returns a
    line for the log."""
    payload = load_checkpoint(checkpoint)
    require_finite_weights(payload, checkpoint)
    state, recorded = payload["model"], payload["model_name"]
    if recorded == "temporal" and model_name == "embedding":
        state = {k.removeprefix("frame_model."): v for k, v in state.items() if k.startswith("frame_model.")}
    elif recorded != model_name:
        raise ConfigError(f"init_from {checkpoint}: a {recorded!r} model; this run trains {model_name!r} models")
    own = model.state_dict()
    same_ids = payload.get("extra", {}).get("label_map") == label_map
    skipped = [k for k in state if k.startswith("classifier.") and not same_ids]
    state = {k: v for k, v in state.items() if k not in skipped}
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith("classifier.")]
    if bad or missing:
        raise ConfigError(f"init_from {checkpoint}: its weights do not fit model {model.__class__.__name__} with "
                          f"these options (mismatched: {(bad + missing)[:4]}); use the same backbone options")
    model.load_state_dict(state, strict=False)
    has_classifier = any(k.startswith("classifier.") for k in payload["model"])
    classifier = ("kept" if has_classifier and not skipped else "re-initialised: other identities" if skipped
                  else "new: the checkpoint has none")
    return f"weights initialised from {checkpoint} ({len(state)} tensors, classifier {classifier})"


def update_checkpoint_extra(path: str | Path, key: str, value: Any) -> None:
    """Set `extra[key]` of an existing checkpoint (plain data only) and rewrite the file atomically: readers see
    the old file or the new one, never a truncated one. Used to store a model's verification calibration."""
    payload = load_checkpoint(path)
    payload["extra"] = {**(payload.get("extra") or {}), key: value}
    atomic_torch_save(payload, path)
