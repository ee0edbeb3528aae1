"""The parts task: pose-guided part models (GLAD, SpindleNet) trained like embedding models, plus part boxes.

Set-up computes (or loads from the content-keyed cache) the pose keypoints of every training and validation
image (`reidkit.data.keypoints`), counts and reports the crops without a pose (fixed-proportion fallback boxes),
and turns them into the model's part boxes (its `box_layout` / `box_params`). Per batch the boxes of the sampled
images reach the model through `_forward` (the embedding task's hook, reading `self.batch_items`).

Augmentation: the embedding task's BatchAugment flips and translates (pad + random crop) inside one call and does
not say which images it flipped or by how much it moved them, so `PartsAugment` does those two geometric steps
itself, as one affine resampling per image, and moves the boxes with the pixels (mirrored when flipped, shifted
by the translation); colour jitter and random erasing stay BatchAugment's (with flip and pad switched off there).

Losses: the embedding task's (identity loss on the whole-image logits, metric loss on the concatenated features
after the pre-training epochs, extras) plus the same identity loss on each part stream (`part_logits`), logged as
`id_<stream>`. Validation embeds with the precomputed boxes (flip TTA mirrors them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ...data.keypoints import mirror_boxes, part_boxes, pose_for_files, report_fallbacks, resized_keypoints
from ...data.records import relabel
from ...data.transforms import AugmentConfig, BatchAugment, normalize
from ...errors import ConfigError, DataError
from ...metrics import compute_distance_matrix
from ...utils import progress
from ..distributed import current
from .base import register_task
from .embedding import EmbeddingTask

PART_STREAMS = {"glad": ("head", "upper_body", "lower_body"), "spindle": ("regions",)}


class PartsAugment:
    """BatchAugment whose flip and translation move the part boxes too (see the module docstring)."""

    def __init__(self, cfg: AugmentConfig, boxes_of_batch: Callable[[], torch.Tensor]):
        self.flip, self.pad = cfg.flip, cfg.pad
        self.photometric = BatchAugment(dataclasses.replace(cfg, flip=False, pad=0))
        self.boxes_of_batch = boxes_of_batch
        self.boxes: torch.Tensor | None = None  # the boxes of the last augmented batch

    def max_erasing_area(self, progress_fraction: float) -> float:
        return self.photometric.max_erasing_area(progress_fraction)

    def __call__(self, x: torch.Tensor, progress_fraction: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        x, self.boxes = flip_translate(x, self.boxes_of_batch().to(x.device), self.flip, self.pad, generator)
        return self.photometric(x, progress_fraction, generator=generator)


def flip_translate(x: torch.Tensor, boxes: torch.Tensor, flip: bool, pad: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip (p = 0.5) then a random shift of up to `pad` pixels per axis with zero fill (what
    BatchAugment's pad + random crop does), as one nearest-neighbour affine resampling; boxes (N, P, 4) in
    fractions follow: mirrored when flipped, then shifted."""
    n, _, h, w = x.shape
    sign = torch.ones(n)
    dx, dy = torch.zeros(n), torch.zeros(n)
    if flip:
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    if pad > 0:
        dx = torch.randint(-pad, pad + 1, (n,), generator=generator).float()
        dy = torch.randint(-pad, pad + 1, (n,), generator=generator).float()
    if not flip and pad <= 0:
        return x, boxes
    # output(u) = input(sign * (u - t)) in [-1, 1] coordinates; t = 2 * shift / size moves the content by `shift`
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sign, -sign * 2 * dx / w
    theta[:, 1, 1], theta[:, 1, 2] = 1.0, -2 * dy / h
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    flipped = (sign < 0).to(boxes.device).view(n, 1, 1)
    moved = torch.where(flipped, mirror_boxes(boxes), boxes)
    shift = torch.stack([dx / w, dy / h, dx / w, dy / h], dim=1).to(boxes.device, boxes.dtype).view(n, 1, 4)
    return out, (moved + shift).clamp(0.0, 1.0)


@torch.no_grad()
def embed_with_boxes(model: nn.Module, images: torch.Tensor, boxes: torch.Tensor, *, mean: Sequence[float],
                     std: Sequence[float], device: torch.device, batch_size: int = 128, flip: bool = False,
                     show_progress: bool = False, desc: str = "embedding") -> torch.Tensor:
    """uint8 (N, 3, H, W) + part boxes (N, P, 4) -> L2-normalised (N, D) on the CPU; flip=True adds the mirror
    image's embedding computed with the mirrored boxes."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in progress(range(0, len(images), batch_size), desc=desc, enabled=show_progress, leave=False):
        x = normalize(images[start:start + batch_size].to(device), mean, std)
        b = boxes[start:start + batch_size].to(device)
        emb = model(x, b)
        if flip:
            emb = emb + model(x.flip(-1), mirror_boxes(b))
        chunks.append(emb.float().cpu())
    model.train(was_training)
    return F.normalize(torch.cat(chunks), dim=1) if chunks else torch.empty(0, 0)


@register_task("parts")
class PartsTask(EmbeddingTask):
    def setup(self) -> None:
        super().setup()
        model = self.models[0]
        if getattr(model, "box_layout", None) is None:
            raise ConfigError(f"model.name={self.cfg.model.name!r} is not a pose-guided part model (glad, spindle)")
        self.box_layout = model.box_layout
        self.part_names = PART_STREAMS.get(self.box_layout, ())
        self.pose_stats: dict[str, dict[str, float]] = {}
        train, _ = relabel(self.splits.train)
        self.train_boxes = self._boxes([r.path for r in train], "train")
        if self.has_val and current().is_main:  # only rank 0 validates
            self.query_boxes = self._boxes([r.path for r in self.splits.query], "validation query")
            self.gallery_boxes = self._boxes([r.path for r in self.splits.gallery], "validation gallery")
        self.augment = PartsAugment(self.cfg.augment, lambda: self.train_boxes[self.batch_items])

    def _boxes(self, paths: list[str], where: str) -> torch.Tensor:
        model, data = self.models[0], self.cfg.data
        pose = pose_for_files(paths, show_progress=self.show_progress, desc=f"pose keypoints ({where})")
        keypoints, found = pose.keypoints(model.pose_threshold)
        if data.resize != "stretch":
            keypoints = resized_keypoints(keypoints, _image_sizes(paths), (data.height, data.width), data.resize)
        print(report_fallbacks(found, where), flush=True)
        self.pose_stats[where] = {"crops": len(found), "pose_found": int(found.sum()), "computed": pose.computed,
                                  "seconds": round(pose.seconds, 1)}
        return torch.from_numpy(part_boxes(keypoints, model.box_layout, **model.box_params))

    def _forward(self, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
        return model(x, self.augment.boxes)

    def _student_loss(self, out: dict[str, Any], labels: torch.Tensor, ranking: bool,
                      student: int = 0) -> dict[str, torch.Tensor]:
        parts = super()._student_loss(out, labels, ranking, student)
        id_loss = self.student_losses[student]["id"]
        if id_loss is not None and getattr(id_loss, "inputs", "embeddings") == "logits":
            for name, logits in zip(self.part_names, out["part_logits"].unbind(1), strict=True):
                parts[f"id_{name}"] = self.cfg.loss.id_weight * id_loss(logits, labels)
        return parts

    def _validate_student(self, model: nn.Module, with_local: bool) -> dict[str, dict[str, float]]:
        kw = dict(mean=self.mean, std=self.std, device=self.device, flip=self.cfg.flip_tta,
                  show_progress=self.show_progress)
        query = embed_with_boxes(model, self.query_images, self.query_boxes, desc="validation: embedding query", **kw)
        gallery = embed_with_boxes(model, self.gallery_images, self.gallery_boxes,
                                   desc="validation: embedding gallery", **kw)
        return {"val": self._rank_summary(compute_distance_matrix(query.numpy(), gallery.numpy(), metric="cosine"))}

    def checkpoint_extra(self, member: int) -> dict[str, Any]:
        return {**super().checkpoint_extra(member), "pose": self.pose_stats}

    def finish(self, trainer, best: dict[str, Any]) -> dict[str, Any]:
        return {"pose": self.pose_stats}


def _image_sizes(paths: list[str]) -> np.ndarray:
    """(N, 2) height, width of image files (headers only)."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.append((img.height, img.width))
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
    return np.asarray(sizes, dtype=np.float64)
