"""LOMO: Local Maximal Occurrence features (Liao, Hu, Zhu, Li, "Person Re-identification by Local Maximal
Occurrence Representation and Metric Learning", CVPR 2015), as the authors' MATLAB code (LOMO.m, SILTP.m) computes
them:

- colour: multiscale Retinex of the image, HSV quantised to 8x8x8 bins, one joint code per pixel;
- texture: SILTP (scale-invariant local ternary pattern, 4 neighbours, tau 0.3) of the grey image (not the Retinex
  output: LOMO.m converts the original image), at radii 3 and 5, 3^4 = 81 codes;
- a 10x10 window slides with stride 5; each window gets a histogram of its codes; the maximum of each bin over the
  windows of one horizontal strip (same top row) is kept ("maximal occurrence");
- two more scales by 2x2 average pooling (HSV bin indices pooled and floored, as ColorPooling does; the grey image
  pooled and SILTP recomputed), three scales in all;
- per descriptor group (HSV, SILTP R=3, SILTP R=5): log(1 + x), then L2 normalisation.
At 128x48: (512 + 2 x 81) bins x (24 + 11 + 5) strips = 26,960 dimensions.

The authors ship their Retinex only as a compiled binary, so `retinex` is the published MSRCR (Jobson, Rahman,
Woodell 1997) with the paper's two Gaussian scales (sigma 5 and 20) and the usual 1% / 99% per-channel stretch.
Everything is vectorised over a batch of images (no loops over pixels or windows); scikit-image has no LOMO or
SILTP, hence our own code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from ..data.images import ImageLike, load_image_tensor
from ..errors import ReIDError
from ..utils import progress

# MATLAB rgb2gray weights (the reference converts with rgb2gray, then divides by 255).
GRAY_WEIGHTS = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
LOMO_DIM_128x48 = 26_960


def retinex(images: np.ndarray, sigmas: Sequence[float] = (5.0, 20.0), alpha: float = 125.0, beta: float = 46.0,
            clip: float = 0.01) -> np.ndarray:
    """Multiscale Retinex with colour restoration of uint8 (N, H, W, 3) RGB -> float (N, H, W, 3) in [0, 1].

    MSR = mean over sigmas of log(I) - log(G_sigma * I); CRF = beta (log(alpha I_c) - log(sum_c I_c)); the
    product is stretched per image and channel between its `clip` and 1 - `clip` quantiles. A flat channel (no
    contrast to restore) keeps its input value.
    """
    pixels = images.astype(np.float64) + 1.0
    log_pixels = np.log(pixels)
    msr = np.zeros_like(pixels)
    for sigma in sigmas:  # a few scales; each blur is batched over images and channels
        msr += log_pixels - np.log(gaussian_filter(pixels, sigma=(0, sigma, sigma, 0), mode="reflect"))
    msr /= len(sigmas)
    crf = beta * (np.log(alpha * pixels) - np.log(pixels.sum(axis=3, keepdims=True)))
    restored = msr * crf
    low, high = np.quantile(restored, [clip, 1.0 - clip], axis=(1, 2), keepdims=True)
    span = high - low
    flat = span < 1e-6
    stretched = (np.clip(restored, low, high) - low) / np.where(flat, 1.0, span)
    return np.where(flat, images / 255.0, stretched)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] (..., 3) -> HSV in [0, 1] (..., 3), as MATLAB's rgb2hsv (hue 0 for grey pixels)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.select([b == value, g == value], [4.0 + (r - g) / safe, 2.0 + (b - r) / safe], (g - b) / safe) / 6.0
    hue = np.where(delta > 0, np.mod(hue, 1.0), 0.0)
    saturation = np.where(value > 0, delta / np.where(value > 0, value, 1.0), 0.0)
    return np.stack([hue, saturation, value], axis=-1)


def quantise_hsv(hsv: np.ndarray, bins: Sequence[int] = (8, 8, 8)) -> np.ndarray:
    """HSV in [0, 1] -> integer bin index per channel, min(floor(x * bins), bins - 1)."""
    counts = np.asarray(bins)
    return np.minimum(np.floor(hsv * counts), counts - 1).astype(np.int64)


def joint_hsv_codes(binned: np.ndarray, bins: Sequence[int] = (8, 8, 8)) -> np.ndarray:
    """Per-pixel joint code V * (bins_H bins_S) + S * bins_H + H (LOMO.m's ordering) of (..., 3) bin indices."""
    return binned[..., 2] * bins[1] * bins[0] + binned[..., 1] * bins[0] + binned[..., 0]


def gray(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> grey in [0, 1], rounded to uint8 first as MATLAB's rgb2gray does."""
    return np.rint(images.astype(np.float64) @ GRAY_WEIGHTS) / 255.0


def siltp(image: np.ndarray, tau: float = 0.3, radius: int = 3) -> np.ndarray:
    """SILTP codes with 4 neighbours at `radius` of grey images (N, H, W) -> int (N, H, W) in [0, 81).

    Neighbour k (right, up, left, down: weights 1, 3, 9, 27) adds 1 x weight if it is below (1 - tau) x centre
    and 2 x weight if above (1 + tau) x centre; borders are replicated (SILTP.m, encoder 0).
    """
    _, height, width = image.shape
    if height < 2 * radius + 1 or width < 2 * radius + 1:
        raise ReIDError(f"SILTP radius {radius}: image {height}x{width} is smaller than (2R+1)x(2R+1)")
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    r = radius
    neighbours = (padded[:, r:r + height, 2 * r:],  # right
                  padded[:, :height, r:r + width],  # up
                  padded[:, r:r + height, :width],  # left
                  padded[:, 2 * r:, r:r + width])  # down
    low, high = (1.0 - tau) * image, (1.0 + tau) * image
    codes = np.zeros(image.shape, dtype=np.int64)
    for weight, neighbour in zip((1, 3, 9, 27), neighbours, strict=True):
        codes += weight * ((neighbour < low) + 2 * (neighbour > high))
    return codes


def window_positions(size: int, block: int, step: int) -> np.ndarray:
    """Top (or left) coordinates of the sliding windows along one axis."""
    return np.arange(0, size - block + 1, step)


def strip_max_histograms(codes: np.ndarray, num_bins: int, block: int = 10, step: int = 5) -> np.ndarray:
    """Maximal occurrence: (N, H, W) integer codes -> (N, strips, num_bins).

    Histogram of every block x block window (stride `step`), then the maximum of each bin over the windows that
    share a top row (one horizontal strip). One bincount over all windows of all images: no loops.
    """
    num, height, width = codes.shape
    rows, cols = window_positions(height, block, step), window_positions(width, block, step)
    offsets = np.arange(block)
    row_index = (rows[:, None, None, None] + offsets[None, None, :, None])  # (R, 1, b, 1)
    col_index = (cols[None, :, None, None] + offsets[None, None, None, :])  # (1, C, 1, b)
    windows = codes[:, row_index, col_index]  # (N, R, C, b, b)
    window_id = np.arange(num * len(rows) * len(cols)).reshape(num, len(rows), len(cols), 1, 1)
    counts = np.bincount((window_id * num_bins + windows).ravel(), minlength=window_id.size * num_bins)
    return counts.reshape(num, len(rows), len(cols), num_bins).max(axis=2)


def pool2x2(image: np.ndarray, floor: bool = False) -> np.ndarray:
    """2x2 average pooling of (N, H, W[, C]); an odd last row / column is dropped (ColorPooling / Pooling)."""
    height, width = image.shape[1] // 2 * 2, image.shape[2] // 2 * 2
    cropped = image[:, :height, :width]
    pooled = (cropped[:, 0::2, 0::2] + cropped[:, 1::2, 0::2] + cropped[:, 0::2, 1::2] + cropped[:, 1::2, 1::2]) / 4
    return np.floor(pooled).astype(image.dtype) if floor else pooled


def _log_l2(histograms: list[np.ndarray]) -> np.ndarray:
    """Concatenate (N, strips, bins) blocks (bins fastest, as LOMO.m), log(1 + x), L2-normalise each row."""
    flat = np.log1p(np.concatenate([h.reshape(len(h), -1) for h in histograms], axis=1).astype(np.float64))
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class LOMO:
    """LOMO extractor: `LOMO()(images)` -> float32 (N, 26960) for paths, PIL images or uint8 arrays.

    Images are resized to `size` (H, W) by reidkit's decoder; the defaults are the paper's.
    """

    size: tuple[int, int] = (128, 48)
    num_scales: int = 3
    block_size: int = 10
    block_step: int = 5
    hsv_bins: tuple[int, int, int] = (8, 8, 8)
    tau: float = 0.3
    radii: tuple[int, ...] = (3, 5)
    retinex_sigmas: tuple[float, ...] = (5.0, 20.0)
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.num_scales < 1 or self.block_size < 1 or self.block_step < 1 or self.batch_size < 1:
            raise ReIDError(f"LOMO: num_scales, block_size, block_step and batch_size must be >= 1 ({self})")
        if min(self.size) < self.block_size:
            raise ReIDError(f"LOMO: size {self.size} is smaller than one {self.block_size}x{self.block_size} window")

    @property
    def dim(self) -> int:
        """Feature length: (prod(hsv_bins) + len(radii) x 81) x strips summed over scales (SILTP scales too narrow
        for a radius are skipped, as LOMO.m does)."""
        height, width = self.size
        colour = texture = 0
        for _ in range(self.num_scales):
            if height < self.block_size or width < self.block_size:
                break
            strips = len(window_positions(height, self.block_size, self.block_step))
            colour += int(np.prod(self.hsv_bins)) * strips
            texture += sum(81 * strips for r in self.radii if width >= 2 * r + 1 and height >= 2 * r + 1)
            height, width = height // 2, width // 2
        return colour + texture

    def __call__(self, images: Sequence[ImageLike] | np.ndarray, show_progress: bool = False,
                 desc: str = "LOMO") -> np.ndarray:
        """Features of `images` (paths, PIL images, HxWx3 arrays, or one uint8 (N, H, W, 3) array at `size`)."""
        num = len(images)
        if num == 0:
            raise ReIDError("LOMO: images is empty")
        out = np.empty((num, self.dim), dtype=np.float32)
        bar = progress(total=num, desc=desc, enabled=show_progress, unit="img")
        for start in range(0, num, self.batch_size):
            batch = images[start:start + self.batch_size]
            out[start:start + len(batch)] = self.features_of_pixels(self._pixels(batch, start))
            bar.update(len(batch))
        bar.close()
        return out

    def _pixels(self, batch: Sequence[ImageLike] | np.ndarray, start: int) -> np.ndarray:
        if isinstance(batch, np.ndarray) and batch.ndim == 4:
            if batch.dtype != np.uint8 or batch.shape[1:] != (*self.size, 3):
                raise ReIDError(f"LOMO: an image array must be uint8 (N, {self.size[0]}, {self.size[1]}, 3), got "
                                f"{batch.dtype} {batch.shape}")
            return batch
        items = [os.fspath(item) if isinstance(item, os.PathLike) else item for item in batch]
        return load_image_tensor(items, self.size, workers=2).permute(0, 2, 3, 1).numpy()

    def features_of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) at `size` -> float (N, dim) LOMO descriptors."""
        colour = quantise_hsv(rgb_to_hsv(retinex(pixels, self.retinex_sigmas)), self.hsv_bins)
        luminance = gray(pixels)
        hsv_parts: list[np.ndarray] = []
        siltp_parts: dict[int, list[np.ndarray]] = {r: [] for r in self.radii}
        for scale in range(self.num_scales):
            height, width = colour.shape[1:3]
            if height < self.block_size or width < self.block_size:
                break
            codes = joint_hsv_codes(colour, self.hsv_bins)
            hsv_parts.append(strip_max_histograms(codes, int(np.prod(self.hsv_bins)), self.block_size,
                                                  self.block_step))
            for radius in self.radii:
                if width >= 2 * radius + 1 and height >= 2 * radius + 1:
                    siltp_parts[radius].append(strip_max_histograms(siltp(luminance, self.tau, radius), 81,
                                                                    self.block_size, self.block_step))
            if scale < self.num_scales - 1:
                colour, luminance = pool2x2(colour, floor=True), pool2x2(luminance)
        features = np.concatenate([_log_l2(hsv_parts), *(_log_l2(siltp_parts[r]) for r in self.radii)], axis=1)
        if self.size == (128, 48) and self._is_paper_setting():
            assert features.shape[1] == LOMO_DIM_128x48, features.shape
        return features

    def _is_paper_setting(self) -> bool:
        return (self.num_scales, self.block_size, self.block_step, self.hsv_bins, self.radii) == (3, 10, 5, (8, 8, 8),
                                                                                                (3, 5))
