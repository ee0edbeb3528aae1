"""Checkpoints shared by every trainer: one atomic file per save, enough state to resume bit-for-bit.

A checkpoint is a dict:
  model_name, model_cfg   -> `build_model(model_name, **model_cfg)` rebuilds the architecture
  model                   -> state dict
  optimizer, scheduler, scaler (optional) -> state dicts for resuming
  epoch                   -> number of finished epochs
  config                  -> the full training config as a dict (for the record)
  metrics                 -> last/best validation metrics
  rng                     -> python / numpy / torch RNG states, so a resumed run continues identically
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .errors import ModelError
from .utils import atomic_torch_save


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # corrupt/truncated files raise many different exception types
        raise ModelError(f"checkpoint {path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != "reidkit-checkpoint-1":
        raise ModelError(f"checkpoint {path}: not a reidkit checkpoint (missing 'format' marker)")
    return payload


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model recorded in a checkpoint and load its weights (strict)."""
    from .models import build_model

    payload = load_checkpoint(path, map_location)
    cfg = dict(payload["model_cfg"])
    cfg.pop("pretrained", None)  # weights come from the checkpoint, not from ImageNet files
    model = build_model(payload["model_name"], **cfg)
    model.load_state_dict(payload["model"])
    return model, payload
