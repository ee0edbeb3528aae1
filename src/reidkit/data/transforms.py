"""Image preparation and batched augmentation.

Images are decoded and resized once into a uint8 tensor store; augmentation then runs on whole batches of
tensors (flip, pad + random crop, colour jitter, random erasing). On a 2-core CPU this is several times faster
than per-image PIL pipelines, and it runs unchanged on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError

RESIZE_MODES = ("stretch", "pad")


def resize_image(img: Image.Image, size: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """Resize a PIL RGB image to size=(H, W) -> uint8 array (H, W, 3).

    stretch: plain resize (the usual ReID choice: crops are already roughly 2:1).
    pad: keep the aspect ratio and pad the short side with the mean grey (no body distortion).
    """
    height, width = size
    if mode == "stretch":
        return np.array(img.resize((width, height), Image.BILINEAR), dtype=np.uint8)  # writable: torch.from_numpy
    if mode != "pad":
        raise ConfigError(f"resize mode {mode!r}: expected one of {RESIZE_MODES}")
    scale = min(height / img.height, width / img.width)
    new_w, new_h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = np.full((height, width, 3), 124, dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = np.asarray(img.resize((new_w, new_h), Image.BILINEAR))
    return canvas


def normalize(batch_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float, scaled to 0..1 then standardised with per-channel mean/std."""
    x = batch_uint8.float().div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


@dataclass
class AugmentConfig:
    flip: bool = True
    pad: int = 10  # pad + random crop back to size (random translation of up to `pad` pixels)
    color_jitter: float = 0.2  # max relative change of brightness / contrast / saturation
    erasing_prob: float = 0.5
    # Cut-out curriculum ("Re-ID done right"): the maximum erased area grows linearly from start to end.
    erasing_area_start: float = 0.02
    erasing_area_end: float = 0.4
    erasing_min_area: float = 0.02


class BatchAugment:
    """Vectorised training augmentation on float batches (N,3,H,W) already normalised.

    `progress` in [0, 1] (fraction of training done) drives the cut-out curriculum.
    """

    def __init__(self, cfg: AugmentConfig):
        if not 0 <= cfg.erasing_prob <= 1:
            raise ConfigError(f"augment.erasing_prob={cfg.erasing_prob}: must be within [0, 1]")
        if not 0 < cfg.erasing_min_area <= max(cfg.erasing_area_start, cfg.erasing_area_end) <= 1:
            raise ConfigError("augment: need 0 < erasing_min_area <= erasing area bounds <= 1")
        self.cfg = cfg

    def max_erasing_area(self, progress: float) -> float:
        c = self.cfg
        return c.erasing_area_start + (c.erasing_area_end - c.erasing_area_start) * min(max(progress, 0.0), 1.0)

    def __call__(self, x: torch.Tensor, progress: float, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.cfg
        if c.flip:
            x = _random_flip(x, generator)
        if c.pad > 0:
            x = _random_translate(x, c.pad, generator)
        if c.color_jitter > 0:
            x = _color_jitter(x, c.color_jitter, generator)
        if c.erasing_prob > 0:
            x = _random_erase(x, c.erasing_prob, c.erasing_min_area, self.max_erasing_area(progress), generator)
        return x


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device)


def _random_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    flip = _rand(x.shape[0], generator, x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _random_translate(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero-pad by `pad` and crop a random window back to the original size (per-sample offsets)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = (torch.randint(0, 2 * pad + 1, (n,), generator=generator)).to(x.device)
    dx = (torch.randint(0, 2 * pad + 1, (n,), generator=generator)).to(x.device)
    rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1))  # (n, h)
    cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1))  # (n, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indexing gathers each sample's own window: result (n, h, w, C) -> (n, C, h, w).
    return padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)


def _color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1-s, 1+s], per sample (in normalised space)."""
    n = x.shape[0]

    def factors() -> torch.Tensor:
        return (1 + strength * (2 * _rand(n, generator, x.device) - 1)).view(n, 1, 1, 1)

    x = x * factors()  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factors() + mean  # contrast
    grey = x.mean(dim=1, keepdim=True)
    return (x - grey) * factors() + grey  # saturation


def _random_erase(x: torch.Tensor, prob: float, min_area: float, max_area: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Random erasing (Zhong et al.): one rectangle per selected image, filled with noise, vectorised."""
    n, _, h, w = x.shape
    dev = x.device
    area = (min_area + (max(max_area, min_area) - min_area) * _rand(n, generator, dev)) * h * w
    log_ratio = math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * _rand(n, generator, dev)
    aspect = torch.exp(log_ratio)
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (_rand(n, generator, dev) * (h - eh + 1)).floor()
    left = (_rand(n, generator, dev) * (w - ew + 1)).floor()
    apply = (_rand(n, generator, dev) < prob).view(n, 1, 1)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = ((ys >= top.view(n, 1, 1)) & (ys < (top + eh).view(n, 1, 1))
              & (xs >= left.view(n, 1, 1)) & (xs < (left + ew).view(n, 1, 1)) & apply)
    noise = torch.randn(x.shape, generator=generator).to(dev)
    return torch.where(inside.unsqueeze(1), noise, x)
