"""Distillation targets: a frozen teacher's embeddings of the training images, computed once and cached, or of
every augmented batch (`distill.online`).

The teacher is any model `reidkit extract` runs (a reidkit checkpoint, ONNX, an OpenVINO IR such as Intel's
OSNet-AIN), on its own input size and normalisation. Its flip-averaged, L2-normalised embeddings of the
un-augmented training images are cached under `utils.cache_root()/teacher/`, keyed by the teacher's file bytes,
the backend and the images (paths, sizes, modification times), so a resumed or repeated run does not pay again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..inference.backends import build_extractor, file_digest, l2_normalize, model_files
from ..losses import build_loss
from ..utils import atomic_save_npy, cache_root
from .config import DistillConfig

CACHE_VERSION = 1


def distillation_losses(cfg: DistillConfig) -> dict[str, tuple[float, torch.nn.Module]]:
    """{name: (weight, loss)} of the active distillation terms (checked before any image is loaded)."""
    if cfg.darkrank_weight == 0 and cfg.similarity_weight == 0 and cfg.feature_weight == 0:
        raise ConfigError(f"distill.teacher={cfg.teacher!r} with distill.darkrank_weight, "
                          "distill.similarity_weight and distill.feature_weight all 0: nothing would be distilled")
    losses: dict[str, tuple[float, torch.nn.Module]] = {}
    if cfg.darkrank_weight > 0:
        losses["darkrank"] = (cfg.darkrank_weight, build_loss("darkrank", alpha=cfg.darkrank_alpha,
                                                              beta=cfg.darkrank_beta,
                                                              list_size=cfg.darkrank_list_size))
    if cfg.similarity_weight > 0:
        losses["similarity"] = (cfg.similarity_weight, build_loss("similarity_distillation"))
    if cfg.feature_weight > 0:
        losses["feature"] = (cfg.feature_weight, build_loss("feature_distillation"))
    return losses


def check_teacher(cfg: DistillConfig) -> Path:
    path = Path(cfg.teacher)
    if not path.is_file():
        raise ConfigError(f"distill.teacher={cfg.teacher!r}: file not found")
    return path


def _cache_key(teacher: Path, backend: str, paths: Sequence[str]) -> str:
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "backend": backend,
                                   "teacher": file_digest(model_files(teacher))}).encode())
    for p in paths:
        stat = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def teacher_embeddings(cfg: DistillConfig, paths: Sequence[str], device: str = "auto",
                       show_progress: bool = True) -> torch.Tensor:
    """(N, D) float32 unit rows: the teacher's flip-averaged embeddings of `paths`, from the cache when present."""
    teacher = check_teacher(cfg)
    target = cache_root() / "teacher" / f"{_cache_key(teacher, cfg.backend, paths)}.npy"
    if target.is_file():
        cached = np.load(target)
        if cached.shape[0] == len(paths):
            return torch.from_numpy(cached)
    extractor = build_extractor(teacher, backend=cfg.backend, device=device, flip=True)
    print(f"distillation: embedding {len(paths)} training images with the teacher {teacher} "
          f"({extractor.backend}) once; cached in {target.parent}", flush=True)
    features = l2_normalize(np.asarray(extractor.embed(list(paths), show_progress=show_progress), np.float32))
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(features, target)
    return torch.from_numpy(features)


class OnlineTeacher:
    """The teacher's embeddings of the student's augmented batch: the student's normalised input is turned back
    into uint8 RGB pixels (random-erasing noise clipped to 0..255), resized to the teacher's input when the sizes
    differ, and embedded without flip (the target is this view, not the image)."""

    def __init__(self, cfg: DistillConfig, device: str = "auto"):
        # the training's thread budget (num_threads), so runs side by side do not oversubscribe the cores
        self.extractor = build_extractor(check_teacher(cfg), backend=cfg.backend, device=device, flip=False,
                                         batch_size=256, threads=torch.get_num_threads())
        print(f"distillation: the teacher {cfg.teacher} ({self.extractor.backend}) embeds every augmented batch",
              flush=True)

    def __call__(self, x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        with torch.no_grad():
            m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            pixels = (x.float() * s + m).mul_(255.0)
            size = tuple(self.extractor.input_size)
            if tuple(pixels.shape[2:]) != size:
                pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
            pixels = pixels.round_().clamp_(0, 255).to(torch.uint8).cpu().contiguous()
        return torch.from_numpy(self.extractor.embed_uint8(pixels)).to(x.device)
