"""MLS: the multi-level similarity network of Guo & Cheung, "Efficient and Deep Person Re-Identification using
Multi-Level Similarity" (CVPR 2018), built from the paper's description (our layer sizes; see docs/pair_networks.md).

A small fully-convolutional Siamese trunk (conv-BN-ReLU, shared by both views) with three stages; after any of
them a Convolution Similarity Network (CSN) compares the two views:

  trunk (160x64 input):  stem 3x3/2 (32) -> max-pool 2 -> 2 x 3x3 (32)   "low"   32 x 40 x 16
                         3x3/2 (64) -> 3x3 (64)                          "mid"   64 x 20 x  8
                         3x3/2 (128) -> 3x3 (128)                        "high" 128 x 10 x  4
  CSN at a level:   an STN (localisation net -> affine theta -> affine_grid + grid_sample) cuts a small kh x kw
                    patch (per channel) out of view A's map; the patch is a DEPTH-WISE convolution kernel slid over
                    view B's map -> C similarity maps (channel c of A's patch against channel c of B); and the same
                    with A and B swapped. The maps go through 1x1 conv -> 3x3 conv (BN, ReLU) -> avg + max pooling
                    = one vector per direction; the two directions (same weights) are combined by sum and max.
  fusion:           the level vectors concatenated -> FC 128 -> ReLU -> dropout -> FC 2 (index 1 = same person)

Because the directions share weights and are combined symmetrically, logits(x1, x2) == logits(x2, x1).

Batching: the per-pair depth-wise correlation is ONE grouped `F.conv2d` over all pairs and both directions: the
pair batch is folded into the channel axis (input (1, N*C, H, W), kernels (N*C*P, 1, kh, kw), groups=N*C), so no
Python loop runs over pairs. The patches depend on one image only, so `embed` computes them with the trunk maps:
`score()` runs the trunk, localisation and sampling once per image and only correlation + summary per pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import ModelError
from ..registry import register_model
from .base import PairNetwork, pair_head

LEVELS = ("low", "mid", "high")
DEFAULT_INPUT_SIZE = (160, 64)
DEFAULT_WIDTHS = (32, 64, 128)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _half(side: int) -> int:
    """Output side of a 3x3 stride-2 convolution with padding 1."""
    return (side + 1) // 2


def level_map_sizes(input_size: Sequence[int]) -> dict[str, tuple[int, int]]:
    """(H, W) of each stage's output: low = input / 4 (stride-2 stem + max-pool), then / 2 per stage."""
    h, w = (_half(s) // 2 for s in input_size)
    sizes = {"low": (h, w)}
    for name in LEVELS[1:]:
        h, w = _half(h), _half(w)
        sizes[name] = (h, w)
    return sizes


def as_levels(levels: Sequence[str | int] | str) -> tuple[str, ...]:
    """Level names or stage indices (0 = low) -> names in trunk order, or a ModelError naming `levels`."""
    if isinstance(levels, str):
        levels = [levels]
    names = []
    for item in levels:
        key = str(item).strip()
        name = LEVELS[int(key)] if key.isdigit() and int(key) < len(LEVELS) else key
        if name not in LEVELS:
            raise ModelError(f"levels={list(levels)!r}: unknown level {item!r}; use {', '.join(LEVELS)} or 0-2")
        names.append(name)
    if not names or len(set(names)) != len(names):
        raise ModelError(f"levels={list(levels)!r}: expected one or more distinct levels of {', '.join(LEVELS)}")
    return tuple(n for n in LEVELS if n in names)


def depthwise_correlation(maps: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Per pair and channel, slide the pair's own kernels over its map ('same' size output, zero padding).

    maps (N, C, H, W), kernels (N, C, P, kh, kw) with odd kh, kw -> (N, C*P, H, W) where
    out[n, c*P + p, y, x] = sum_ij maps[n, c, y + i - kh//2, x + j - kw//2] * kernels[n, c, p, i, j].
    One grouped convolution: the batch is folded into the channels (groups = N*C), so each pair's maps meet
    only that pair's kernels, and all pairs run in one call.
    """
    if maps.dim() != 4 or kernels.dim() != 5 or kernels.shape[:2] != maps.shape[:2]:
        raise ModelError(f"depthwise_correlation: expected maps (N, C, H, W) and kernels (N, C, P, kh, kw), got "
                         f"{tuple(maps.shape)} and {tuple(kernels.shape)}")
    n, c, h, w = maps.shape
    p, kh, kw = kernels.shape[2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ModelError(f"depthwise_correlation: kernel size {kh}x{kw} must be odd (centred 'same' output)")
    out = F.conv2d(maps.reshape(1, n * c, h, w), kernels.reshape(n * c * p, 1, kh, kw), padding=(kh // 2, kw // 2),
                   groups=n * c)
    return out.view(n, c * p, h, w)


def initial_thetas(num_patches: int, patch_size: tuple[int, int], map_size: tuple[int, int]) -> torch.Tensor:
    """(P, 2, 3) affine transforms that cut kh x kw patches out of an H x W map without scaling the features.

    With align_corners=False, theta = [[kw/W, 0, 0], [0, kh/H, ty]] samples output pixel (i, j) at map pixel
    (i + (H - kh)/2 + ty*H/2, j + (W - kw)/2): one patch (ty = 0) is the centre crop; P patches are spread
    evenly down the body (centres at heights (p + 1/2) / P of the map).
    """
    (kh, kw), (h, w) = patch_size, map_size
    theta = torch.zeros(num_patches, 2, 3)
    theta[:, 0, 0] = kw / w
    theta[:, 1, 1] = kh / h
    theta[:, 1, 2] = (2 * torch.arange(num_patches, dtype=torch.float32) + 1) / num_patches - 1
    return theta


class PatchSampler(nn.Module):
    """STN: a localisation net predicts P affine transforms per image, which cut P kh x kw patches out of it.

    `use_stn=False` keeps the initial transforms (fixed patches). The last localisation layer starts at zero
    weights with the initial transforms as bias, so training starts from the fixed patches.
    """

    def __init__(self, channels: int, map_size: tuple[int, int], patch_size: tuple[int, int], num_patches: int,
                 use_stn: bool, hidden: int = 32, pooled: tuple[int, int] = (4, 2)):
        super().__init__()
        self.patch_size, self.num_patches = patch_size, num_patches
        self.register_buffer("theta0", initial_thetas(num_patches, patch_size, map_size))
        self.localisation = nn.Sequential(
            nn.AdaptiveAvgPool2d(pooled), nn.Flatten(), nn.Linear(channels * pooled[0] * pooled[1], hidden),
            nn.ReLU(inplace=True), nn.Linear(hidden, num_patches * 6)) if use_stn else None

    def reset_localisation(self) -> None:
        if self.localisation is not None:
            last = self.localisation[-1]
            nn.init.zeros_(last.weight)
            with torch.no_grad():
                last.bias.copy_(self.theta0.flatten())

    def thetas(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, P, 2, 3) transforms of each image."""
        if self.localisation is None:
            return self.theta0.to(maps.dtype).expand(len(maps), -1, -1, -1)
        return self.localisation(maps).view(len(maps), self.num_patches, 2, 3)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, P, kh, kw) patches, all images and patches in one grid_sample call."""
        n, c = maps.shape[:2]
        (kh, kw), p = self.patch_size, self.num_patches
        theta = self.thetas(maps).reshape(n * p, 2, 3)
        grid = F.affine_grid(theta, [n * p, c, kh, kw], align_corners=False)  # (N*P, kh, kw, 2)
        # The P patch grids stacked along the height: one sampling call returns every patch of an image.
        patches = F.grid_sample(maps, grid.reshape(n, p * kh, kw, 2), mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        return patches.view(n, c, p, kh, kw)


class ConvolutionSimilarity(nn.Module):
    """CSN at one level: STN patches of each view correlated depth-wise with the other view, summarised."""

    def __init__(self, channels: int, map_size: tuple[int, int], patch_size: tuple[int, int] = (3, 3),
                 num_patches: int = 1, use_stn: bool = True, width: int = 32):
        super().__init__()
        self.channels, self.map_size = channels, map_size
        self.sampler = PatchSampler(channels, map_size, patch_size, num_patches, use_stn)
        stride = 2 if min(map_size) >= 8 else 1  # the large low-level maps: a quarter of the summary cost
        self.summary = nn.Sequential(
            nn.BatchNorm2d(channels * num_patches),  # raw correlations scale with feature energy: centre them
            conv_bn_relu(channels * num_patches, width, kernel=1),
            conv_bn_relu(width, width, kernel=3, stride=stride))
        self.num_features = 4 * width  # (avg, max) pooling x (sum, max) over the two directions

    def patch_shape(self) -> tuple[int, int, int, int]:
        return (self.channels, self.sampler.num_patches, *self.sampler.patch_size)

    def directions(self, map_a: torch.Tensor, map_b: torch.Tensor, patch_a: torch.Tensor,
                   patch_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarity vectors A->B (A's patches over B) and B->A, each (N, 2*width)."""
        n = len(map_a)
        # Both directions in one correlation and one summary pass: a batch of 2N "pairs".
        maps = depthwise_correlation(torch.cat([map_b, map_a]), torch.cat([patch_a, patch_b]))
        s = self.summary(maps)
        v = torch.cat([F.adaptive_avg_pool2d(s, 1), F.adaptive_max_pool2d(s, 1)], 1).flatten(1)
        return v[:n], v[n:]

    def forward(self, map_a: torch.Tensor, map_b: torch.Tensor, patch_a: torch.Tensor,
                patch_b: torch.Tensor) -> torch.Tensor:
        ab, ba = self.directions(map_a, map_b, patch_a, patch_b)
        return torch.cat([ab + ba, torch.maximum(ab, ba)], 1)  # symmetric in the two views


class MLSTrunk(nn.Module):
    """The shared fully-convolutional feature extractor; returns the maps of the requested stages."""

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, channels_last: bool = True):
        super().__init__()
        w0, w1, w2 = widths
        self.stages = nn.ModuleDict({
            "low": nn.Sequential(conv_bn_relu(3, w0, stride=2), nn.MaxPool2d(2), conv_bn_relu(w0, w0),
                                 conv_bn_relu(w0, w0)),
            "mid": nn.Sequential(conv_bn_relu(w0, w1, stride=2), conv_bn_relu(w1, w1)),
            "high": nn.Sequential(conv_bn_relu(w1, w2, stride=2), conv_bn_relu(w2, w2)),
        })
        self.widths = dict(zip(LEVELS, widths))
        self.channels_last = channels_last  # oneDNN convolutions run ~2x faster in NHWC on CPU

    def forward(self, x: torch.Tensor, levels: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = {}
        for name in LEVELS[:max(LEVELS.index(level) for level in levels) + 1]:  # no stage past the deepest used
            x = self.stages[name](x)
            if name in levels:
                out[name] = x.contiguous()
        return out


class MultiLevelSimilarity(PairNetwork):
    """The MLS pair network; see the module docstring. `forward(x1, x2)` -> (N, 2) logits."""

    pair_chunk = 64  # the pair layers are light (a few MFLOP per pair); BN sees 2 x 64 maps per chunk

    def __init__(self, input_size: Sequence[int] = DEFAULT_INPUT_SIZE, levels: Sequence[str | int] = LEVELS,
                 use_stn: bool = True, patch_size: Sequence[int] = (3, 3), num_patches: int = 1,
                 widths: Sequence[int] = DEFAULT_WIDTHS, summary_width: int = 32, hidden: int = 128,
                 dropout: float = 0.3, channels_last: bool = True):
        super().__init__()
        self.input_size = _check_sizes(input_size, "input_size", minimum=16)
        self.levels = as_levels(levels)
        patch = _check_sizes(patch_size, "patch_size", minimum=1)
        if patch[0] % 2 == 0 or patch[1] % 2 == 0:
            raise ModelError(f"patch_size={list(patch_size)!r}: both sides must be odd (a centred kernel)")
        if len(widths) != 3 or min(widths) < 1:
            raise ModelError(f"widths={list(widths)!r}: expected 3 positive channel counts (low, mid, high)")
        if num_patches < 1:
            raise ModelError(f"num_patches={num_patches}: must be at least 1")
        self.trunk = MLSTrunk(widths, channels_last)
        sizes = level_map_sizes(self.input_size)
        for name in self.levels:
            if sizes[name][0] < patch[0] or sizes[name][1] < patch[1]:
                raise ModelError(f"input_size={self.input_size}: the {name!r} map is only {sizes[name]}, smaller "
                                 f"than patch_size={patch}; use larger images or a smaller patch")
        self.csn = nn.ModuleDict({name: ConvolutionSimilarity(self.trunk.widths[name], sizes[name], patch,
                                                              num_patches, use_stn, summary_width)
                                  for name in self.levels})
        self.head = pair_head(sum(c.num_features for c in self.csn.values()), hidden, dropout)
        self._layout = self._feature_layout(sizes)
        self.reset_parameters()

    def _feature_layout(self, sizes: dict[str, tuple[int, int]]) -> list[tuple[str, tuple, tuple]]:
        """Per level (name, map shape, patch shape): the order of the packed per-image feature vector."""
        return [(name, (self.trunk.widths[name], *sizes[name]), self.csn[name].patch_shape()) for name in self.levels]

    def reset_parameters(self) -> None:
        """He initialisation (fan-out for convolutions followed by BN), unit BN, identity-start STNs."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.head[-1].weight, std=0.01)  # logits start near 50/50
        for csn in self.csn.values():
            csn.sampler.reset_localisation()

    @property
    def feature_dim(self) -> int:
        return sum(_numel(m) + _numel(p) for _, m, p in self._layout)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image work packed into one (N, D) tensor: each level's map and its STN patches, flattened.

        One flat tensor keeps the PairNetwork machinery (indexing by pair, chunking, caching in `score`) as is.
        """
        maps = self.trunk(images, self.levels)
        parts = []
        for name in self.levels:
            parts += [maps[name].flatten(1), self.csn[name].sampler(maps[name]).flatten(1)]
        return torch.cat(parts, 1)

    def unpack(self, feats: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(N, D) packed features -> {level: (map (N, C, H, W), patches (N, C, P, kh, kw))} (views)."""
        if feats.dim() != 2 or feats.shape[1] != self.feature_dim:
            raise ModelError(f"features: expected (N, {self.feature_dim}) from embed(), got {tuple(feats.shape)}")
        out, offset = {}, 0
        for name, map_shape, patch_shape in self._layout:
            m, p = _numel(map_shape), _numel(patch_shape)
            out[name] = (feats[:, offset:offset + m].view(-1, *map_shape),
                         feats[:, offset + m:offset + m + p].view(-1, *patch_shape))
            offset += m + p
        return out

    def level_vectors(self, feats1: torch.Tensor, feats2: torch.Tensor) -> dict[str, torch.Tensor]:
        """{level: (N, 4*width) symmetric similarity vector} of the pairs (feats1[i], feats2[i])."""
        a, b = self.unpack(feats1), self.unpack(feats2)
        return {name: self.csn[name](a[name][0], b[name][0], a[name][1], b[name][1]) for name in self.levels}

    def pair_layers(self, feats1: torch.Tensor, feats2: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat(list(self.level_vectors(feats1, feats2).values()), 1))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _check_sizes(value: Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    try:
        size = tuple(int(s) for s in value)
    except (TypeError, ValueError):
        raise ModelError(f"{name}={value!r}: expected (height, width) integers") from None
    if len(size) != 2 or min(size) < minimum:
        raise ModelError(f"{name}={value!r}: expected (height, width) of at least {minimum} x {minimum}")
    return size  # type: ignore[return-value]


@register_model("mls", task="pair", options=("levels", "use_stn", "patch_size", "num_patches"))
def build_mls(input_size: Sequence[int] = DEFAULT_INPUT_SIZE, levels: Sequence[str | int] = LEVELS,
              use_stn: bool = True, patch_size: Sequence[int] = (3, 3), num_patches: int = 1,
              widths: Sequence[int] = DEFAULT_WIDTHS, summary_width: int = 32, hidden: int = 128,
              dropout: float = 0.3, channels_last: bool = True, **unused: object) -> MultiLevelSimilarity:
    """MLS (Guo & Cheung 2018). Unknown keyword arguments are rejected with a ModelError."""
    if unused:
        raise ModelError(f"model 'mls': unknown option(s) {sorted(unused)}; valid: input_size, levels, use_stn, "
                         "patch_size, num_patches, widths, summary_width, hidden, dropout, channels_last")
    return MultiLevelSimilarity(input_size=input_size, levels=levels, use_stn=use_stn, patch_size=patch_size,
                                num_patches=num_patches, widths=widths, summary_width=summary_width, hidden=hidden,
                                dropout=dropout, channels_last=channels_last)
