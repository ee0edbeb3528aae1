"""Procedural pedestrian-like images: a synthetic re-identification dataset in Market-1501 layout.

Every identity is a *combination* of attributes drawn from small shared palettes (clothing colours and
patterns, hair, skin, shoes, bag, body proportions), so many identities share any single colour and colour
histograms alone cannot tell them apart. Every camera has its own illumination, dominant viewpoint (front /
back / side: a logo is only visible from the front, a backpack mostly from the back, a handbag on one side),
scale, background, blur, noise and JPEG quality; images also get pose jitter and random occlusions.

Rendering is vectorised numpy: each body part is a soft mask computed from coordinate grids (ellipses,
rectangles, trapezoids, tapered capsules) and alpha-composited; no Python loop touches pixels.

Randomness is keyed, not sequential: identity `pid`'s look depends only on (seed, pid), camera `c`'s on
(seed, c) and an image's on (seed, pid, c, k). The output is therefore independent of generation order, and
the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from ..errors import ConfigError, DataError
from ..utils import atomic_write_json, atomic_write_text, progress

# Bump whenever rendering changes: a cached dataset with another version is regenerated.
GENERATOR_VERSION = 2
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
META_FILE = "synth.json"
ATTRIBUTE_MANIFEST = "attributes.csv"  # written on request beside the Market folders (write_attribute_manifest)
SAVE_JPEG_QUALITY = 95
OCCLUSION_PROBABILITY = 0.3
PERSON_HALF_WIDTH = 0.32  # of the stature: how far any body part or bag reaches from the centre line
SCENE_SCALE = (3, 4)  # a camera's scene is 1.5 x 2 crops (in halves), each image crops part of it
VIEWS = ("front", "back", "left", "right")

# Deliberately small palettes: identities must share colours (see module docstring).
PALETTE = np.array([
    (28, 28, 32), (232, 232, 226), (128, 128, 132), (34, 44, 92), (52, 98, 186), (186, 36, 40),
    (44, 116, 62), (196, 176, 136), (108, 70, 42), (222, 190, 48), (222, 136, 164), (104, 52, 134),
], dtype=np.float32) / 255.0
# Dark and neutral colours are worn far more often than bright ones, as in real crowds.
SHIRT_WEIGHTS = np.array([5, 4, 3, 3, 2, 2, 1.5, 1.5, 1, 1, 1, 1], dtype=np.float64)
LOWER_WEIGHTS = np.array([6, 1, 3, 4, 4, 0.5, 0.5, 2.5, 1.5, 0.2, 0.2, 0.2], dtype=np.float64)
SHOE_COLOURS = (0, 1, 2, 8)
SKIN_TONES = np.array([(238, 204, 178), (214, 168, 132), (180, 130, 96), (130, 88, 60), (92, 62, 44)],
                      dtype=np.float32) / 255.0
PALETTE_NAMES = ("black", "white", "grey", "navy", "blue", "red", "green", "beige", "brown", "yellow", "pink",
                 "purple")
HAIR_COLOURS = np.array([(20, 16, 14), (58, 38, 26), (104, 72, 44), (196, 162, 100), (150, 150, 150)],
                        dtype=np.float32) / 255.0
HAIR_WEIGHTS = np.array([5, 3, 2, 1, 0.7])
# Attribute values with their relative frequencies.
SHIRT_PATTERNS = ("solid", "hstripes", "vstripes", "checker", "two_tone", "logo")
SHIRT_PATTERN_WEIGHTS = np.array([4.0, 1.5, 1.0, 1.0, 1.5, 2.0])
LOWER_PATTERNS = ("solid", "side_stripe", "faded")
LOWER_PATTERN_WEIGHTS = np.array([5.0, 1.5, 1.5])
LOWER_KINDS = ("trousers", "shorts", "skirt")
LOWER_KIND_WEIGHTS = np.array([6.0, 2.0, 1.5])
BAGS = ("none", "backpack", "handbag")
BAG_WEIGHTS = np.array([2.0, 1.0, 1.0])
BACKGROUNDS = ("wall_floor", "bricks", "foliage", "columns")
BG_COLOURS = np.array([
    (150, 150, 146), (120, 112, 100), (176, 168, 150), (96, 104, 96), (140, 120, 104), (80, 86, 94),
    (170, 160, 160), (104, 120, 84), (186, 182, 176), (66, 70, 66),
], dtype=np.float32) / 255.0

# Stream tags keep the keyed random streams of identities, cameras and images independent.
_TAG_IDENTITY, _TAG_CAMERA, _TAG_IMAGE, _TAG_DISTRACTOR = 1, 2, 3, 4


@dataclass
class SynthConfig:
    num_train_ids: int = 100
    num_test_ids: int = 50
    num_cameras: int = 2
    images_per_camera: int = 4
    height: int = 128
    width: int = 64
    seed: int = 0
    distractor_fraction: float = 0.1  # pid-0 gallery images, as a fraction of the identity gallery size

    def validate(self) -> None:
        """Raise ConfigError naming the field and the reason."""
        for name in ("num_train_ids", "num_test_ids", "images_per_camera", "height", "width"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"SynthConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 2 <= self.num_cameras <= 9:
            raise ConfigError(f"SynthConfig.num_cameras must be in 2..9 (re-id needs two views and Market names "
                              f"hold one camera digit), got {self.num_cameras!r}")
        if not 2 <= self.images_per_camera <= 99:
            raise ConfigError(f"SynthConfig.images_per_camera must be in 2..99 (one query plus at least one "
                              f"gallery image per camera), got {self.images_per_camera!r}")
        if self.height < 32 or self.width < 16:
            raise ConfigError(f"SynthConfig.height/width must be at least 32x16 pixels to draw a person, "
                              f"got {self.height}x{self.width}")
        if self.num_train_ids + self.num_test_ids > 9999:
            raise ConfigError("SynthConfig.num_train_ids + num_test_ids must be <= 9999 (4-digit Market pids), "
                              f"got {self.num_train_ids + self.num_test_ids}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"SynthConfig.seed must be a non-negative integer, got {self.seed!r}")
        if not 0.0 <= self.distractor_fraction <= 1.0:
            raise ConfigError(f"SynthConfig.distractor_fraction must be in [0, 1], got {self.distractor_fraction!r}")

    @property
    def train_pids(self) -> list[int]:
        return list(range(1, self.num_train_ids + 1))

    @property
    def test_pids(self) -> list[int]:
        return list(range(self.num_train_ids + 1, self.num_train_ids + self.num_test_ids + 1))

    @property
    def num_distractors(self) -> int:
        gallery = self.num_test_ids * self.num_cameras * (self.images_per_camera - 1)
        return int(round(self.distractor_fraction * gallery))


@dataclass(frozen=True)
class Identity:
    """What a person looks like, independent of camera. Colours are RGB floats in [0, 1]."""

    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    shirt: np.ndarray  # (2, 3): main colour, second colour for patterns
    shirt_pattern: str
    stripes: int
    long_sleeves: bool
    logo_box: tuple[float, float, float, float]  # (u0, u1, v0, v1) in torso coordinates
    lower_kind: str
    lower: np.ndarray  # (2, 3)
    lower_pattern: str
    shoes: np.ndarray
    bag: str
    bag_colour: np.ndarray
    bag_side: int  # -1 / +1: the person's right / left
    height: float  # relative stature
    build: float  # relative width
    leg: float  # leg length as a fraction of stature
    head: float  # head radius as a fraction of stature


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so its scene can be cached
class Camera:
    gain: float
    white_balance: np.ndarray  # per-channel multipliers (colour cast)
    gamma: float
    view_probs: np.ndarray  # over VIEWS
    scale: float  # mean person height as a fraction of the image height
    background: str
    bg_colours: np.ndarray  # (3, 3)
    horizon: float
    blur: float
    noise: float
    jpeg_quality: int
    light: float  # horizontal illumination gradient
    scene_seed: int


@dataclass
class SynthBatch:
    """In-memory images: (N, H, W, 3) uint8 RGB, person ids (0 = distractor) and 0-based camera ids."""

    images: np.ndarray
    pids: np.ndarray
    camids: np.ndarray


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _pick(rng: np.random.Generator, n: int, weights: np.ndarray | None = None) -> int:
    """Index in 0..n-1 drawn with the given relative weights (uniform if None); cheaper than rng.choice."""
    if weights is None:
        return int(rng.integers(n))
    cumulative = np.cumsum(weights)
    return min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), n - 1)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one person's attributes; every attribute is shared with many other identities."""
    shirt_a = _pick(rng, len(PALETTE), SHIRT_WEIGHTS)
    shirt_b = (shirt_a + 1 + _pick(rng, len(PALETTE) - 1)) % len(PALETTE)
    lower_a = _pick(rng, len(PALETTE), LOWER_WEIGHTS)
    lower_b = (lower_a + 1 + _pick(rng, len(PALETTE) - 1)) % len(PALETTE)
    lower_kind = LOWER_KINDS[_pick(rng, len(LOWER_KINDS), LOWER_KIND_WEIGHTS)]
    u_half, v0 = rng.uniform(0.25, 0.45), rng.uniform(0.12, 0.3)
    return Identity(
        skin=SKIN_TONES[_pick(rng, len(SKIN_TONES))],
        hair=HAIR_COLOURS[_pick(rng, len(HAIR_COLOURS), HAIR_WEIGHTS)],
        long_hair=bool(rng.random() < 0.3),
        shirt=PALETTE[[shirt_a, shirt_b]],
        shirt_pattern=SHIRT_PATTERNS[_pick(rng, len(SHIRT_PATTERNS), SHIRT_PATTERN_WEIGHTS)],
        stripes=int(rng.integers(3, 7)),
        long_sleeves=bool(rng.random() < 0.5),
        logo_box=(-u_half, u_half, v0, v0 + rng.uniform(0.18, 0.35)),
        lower_kind=lower_kind,
        lower=PALETTE[[lower_a, lower_b]],
        lower_pattern=LOWER_PATTERNS[_pick(rng, len(LOWER_PATTERNS), LOWER_PATTERN_WEIGHTS)],
        shoes=PALETTE[SHOE_COLOURS[_pick(rng, len(SHOE_COLOURS))]],
        bag=BAGS[_pick(rng, len(BAGS), BAG_WEIGHTS)],
        bag_colour=PALETTE[_pick(rng, len(PALETTE), SHIRT_WEIGHTS)],
        bag_side=int(rng.choice((-1, 1))),
        height=float(rng.uniform(0.88, 1.0)),
        build=float(rng.uniform(0.82, 1.2)),
        leg=float(rng.uniform(0.44, 0.52)),
        head=float(rng.uniform(0.058, 0.072)),
    )


def sample_camera(rng: np.random.Generator, index: int) -> Camera:
    """Camera `index` mostly sees one view (front, back, side in turn) so views differ across cameras."""
    dominant = (0, 1, 2)[index % 3]
    probs = np.full(3, 0.2)
    probs[dominant] = 0.6
    view_probs = np.array([probs[0], probs[1], probs[2] / 2, probs[2] / 2])
    cast = rng.uniform(0.82, 1.18, size=3)
    return Camera(
        gain=float(rng.uniform(0.75, 1.25)),
        white_balance=(cast / cast.mean()).astype(np.float32),
        gamma=float(rng.uniform(0.8, 1.25)),
        view_probs=view_probs / view_probs.sum(),
        scale=float(rng.uniform(0.76, 0.89)),
        background=BACKGROUNDS[(index + int(rng.integers(len(BACKGROUNDS)))) % len(BACKGROUNDS)],
        bg_colours=BG_COLOURS[rng.choice(len(BG_COLOURS), size=3, replace=False)],
        horizon=float(rng.uniform(0.45, 0.75)),
        blur=float(rng.uniform(0.3, 1.1)),
        noise=float(rng.uniform(0.01, 0.035)),
        jpeg_quality=int(rng.integers(45, 90)),
        light=float(rng.uniform(-0.25, 0.25)),
        scene_seed=int(rng.integers(2**31)),
    )


def _palette_name(colour: np.ndarray) -> str:
    """The PALETTE name of a colour drawn from PALETTE (exact row match: identities copy its rows)."""
    return PALETTE_NAMES[int(np.flatnonzero((colour == PALETTE).all(axis=1))[0])]


def attribute_names() -> tuple[str, ...]:
    """The binary attributes of `identity_attributes`, in PETA's one-hot style (upperBodyBlack, ...)."""
    return tuple([f"upper_{c}" for c in PALETTE_NAMES] + [f"lower_{c}" for c in PALETTE_NAMES]
                 + [f"upper_{p}" for p in SHIRT_PATTERNS] + [f"lower_{k}" for k in LOWER_KINDS]
                 + ["bag_backpack", "bag_handbag", "long_hair", "long_sleeves"])


def identity_attributes(ident: Identity) -> dict[str, int]:
    """True 0/1 labels of what the renderer draws for `ident` (main shirt and lower colour, shirt pattern, lower
    garment, bag, hair, sleeves), read from the same random draws that shape the person. They are identity
    labels, like PETA's: a logo or a backpack may be out of view in a given image."""
    on = {f"upper_{_palette_name(ident.shirt[0])}", f"lower_{_palette_name(ident.lower[0])}",
          f"upper_{ident.shirt_pattern}", f"lower_{ident.lower_kind}"}
    on |= {f"bag_{ident.bag}"} if ident.bag != "none" else set()
    on |= {name for name, flag in (("long_hair", ident.long_hair), ("long_sleeves", ident.long_sleeves)) if flag}
    return {name: int(name in on) for name in attribute_names()}


def identity_for(cfg: SynthConfig, pid: int) -> Identity:
    return sample_identity(_rng(cfg.seed, _TAG_IDENTITY, pid))


def camera_for(cfg: SynthConfig, camid: int) -> Camera:
    """`camid` is 0-based."""
    return sample_camera(_rng(cfg.seed, _TAG_CAMERA, camid), camid)


# ----------------------------------------------------------------------------------------------------------
# Soft shape masks. Each returns alpha in [0, 1] with a one-pixel antialiased edge from a signed distance.
# ----------------------------------------------------------------------------------------------------------

class _Grid:
    """Pixel-centre coordinates of an image, and crops of them around a shape's bounding box."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.y, self.x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        self.y.flags.writeable = self.x.flags.writeable = False  # shared by every image of this size

    def window(self, y0: float, y1: float, x0: float, x1: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Region covering [y0, y1] x [x0, x1] plus the antialiasing margin, clipped to the image."""
        rows = slice(min(max(math.floor(y0) - 1, 0), self.height), min(max(math.ceil(y1) + 2, 0), self.height))
        cols = slice(min(max(math.floor(x0) - 1, 0), self.width), min(max(math.ceil(x1) + 2, 0), self.width))
        region = (rows, cols)
        return region, self.y[region], self.x[region]


@lru_cache(maxsize=8)
def _grid(height: int, width: int) -> _Grid:
    return _Grid(height, width)


@dataclass
class _Mask:
    """Soft coverage `alpha` of a shape, stored only over its bounding `region` (shapes are small)."""

    alpha: np.ndarray
    region: tuple[slice, slice]

    def where(self, keep: np.ndarray) -> _Mask:
        """The part of this mask where the full-image boolean `keep` holds."""
        return _Mask(self.alpha * keep[self.region], self.region)


def _alpha(signed_distance: np.ndarray) -> np.ndarray:
    """One-pixel antialiased edge from a signed distance in pixels (negative inside)."""
    alpha = 0.5 - signed_distance
    np.maximum(alpha, 0.0, out=alpha)  # two ufuncs: np.clip's wrapper costs more than the work on small masks
    return np.minimum(alpha, 1.0, out=alpha)


def _ellipse(g: _Grid, cy: float, cx: float, ry: float, rx: float) -> _Mask:
    region, y, x = g.window(cy - ry, cy + ry, cx - rx, cx + rx)
    d = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    return _Mask(_alpha((d - 1.0) * min(ry, rx)), region)


def _rect(g: _Grid, y0: float, y1: float, x0: float, x1: float) -> _Mask:
    region, y, x = g.window(y0, y1, x0, x1)
    return _Mask(_alpha(np.maximum(np.maximum(y0 - y, y - y1), np.maximum(x0 - x, x - x1))), region)


def _trapezoid(g: _Grid, y0: float, y1: float, cx: float, half_top: float, half_bottom: float) -> _Mask:
    half_max = max(half_top, half_bottom)
    region, y, x = g.window(y0, y1, cx - half_max, cx + half_max)
    t = np.clip((y - y0) / max(y1 - y0, 1e-3), 0.0, 1.0)
    half = half_top + (half_bottom - half_top) * t
    return _Mask(_alpha(np.maximum(np.abs(x - cx) - half, np.maximum(y0 - y, y - y1))), region)


def _capsule(g: _Grid, p0: tuple[float, float], p1: tuple[float, float], r0: float, r1: float) -> _Mask:
    """Tapered limb from p0=(y, x) with radius r0 to p1 with radius r1."""
    r = max(r0, r1)
    region, y, x = g.window(min(p0[0], p1[0]) - r, max(p0[0], p1[0]) + r, min(p0[1], p1[1]) - r,
                            max(p0[1], p1[1]) + r)
    dy, dx = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((y - p0[0]) * dy + (x - p0[1]) * dx) / max(dy * dy + dx * dx, 1e-6), 0.0, 1.0)
    dist = np.sqrt((y - p0[0] - t * dy) ** 2 + (x - p0[1] - t * dx) ** 2)
    return _Mask(_alpha(dist - (r0 + (r1 - r0) * t)), region)


class _Pattern:
    """A colour that varies over the image, evaluated only inside the region of the shape being painted."""

    def __init__(self, grid: _Grid, colours: np.ndarray,
                 second: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.grid, self.colours, self.second = grid, colours, second

    def at(self, region: tuple[slice, slice]) -> np.ndarray:
        """(h, w, 3) colours: colours[0] blended towards colours[1] by second(y, x) in [0, 1]."""
        weight = self.second(self.grid.y[region], self.grid.x[region]).astype(np.float32)[..., None]
        return self.colours[0] + weight * (self.colours[1] - self.colours[0])


Paint = np.ndarray | _Pattern  # an RGB colour or a pattern


def _blend(canvas: np.ndarray, mask: _Mask, colour: Paint) -> None:
    """In place: `colour` over `canvas` with coverage `mask`."""
    target = canvas[mask.region]
    target += mask.alpha[..., None] * ((colour.at(mask.region) if isinstance(colour, _Pattern) else colour) - target)


@lru_cache(maxsize=32)
def _interpolation_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells + 1) weights that linearly interpolate cells + 1 knots onto `size` pixels."""
    pos = np.linspace(0, cells, size, endpoint=False)
    knots = np.arange(cells + 1)
    return np.maximum(0.0, 1.0 - np.abs(pos[:, None] - knots[None, :])).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int]) -> np.ndarray:
    """Bilinearly upsampled random (cells) grid in [0, 1]: cheap low-frequency texture."""
    knots = rng.random((cells[0] + 1, cells[1] + 1), dtype=np.float32)
    return _interpolation_matrix(height, cells[0]) @ knots @ _interpolation_matrix(width, cells[1]).T


# ----------------------------------------------------------------------------------------------------------
# Person layer: premultiplied colour + alpha, composited back to front.
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Pose:
    """Per-image placement and pose, in pixels."""

    view: str
    cx: float
    top: float
    stature: float
    stride: float  # how far apart the feet are
    arm_swing: float


class _Layer:
    """Premultiplied colour and coverage of the figures drawn so far."""

    def __init__(self, height: int, width: int) -> None:
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.alpha = np.zeros((height, width), np.float32)

    def paint(self, mask: _Mask, colour: Paint) -> None:
        _blend(self.rgb, mask, colour)
        target = self.alpha[mask.region]
        target += mask.alpha * (1.0 - target)


def _shirt_paint(ident: Identity, view: str, g: _Grid, cx: float, shoulder_y: float, hip_y: float,
                 shoulder_half: float) -> Paint:
    """Shirt colour as a function of torso coordinates u (-1..1 across) and v (0..1 shoulder to hip)."""
    pattern, n = ident.shirt_pattern, ident.stripes
    if pattern == "solid" or (pattern == "logo" and view != "front"):  # a logo is printed on the front only
        return ident.shirt[0]
    inv_w, inv_h = 1.0 / max(shoulder_half, 1.0), 1.0 / max(hip_y - shoulder_y, 1.0)
    u0, u1, v0, v1 = ident.logo_box
    side_squash = 0.5 if view in ("left", "right") else 1.0

    def second(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        u, v = (x - cx) * inv_w, (y - shoulder_y) * inv_h
        if pattern == "hstripes":
            return np.floor(v * n * 2) % 2
        if pattern == "vstripes":
            return np.floor((u + 1) * n * side_squash) % 2
        if pattern == "checker":
            return (np.floor(v * n * 1.5) + np.floor((u + 1) * n * 0.75)) % 2
        if pattern == "two_tone":
            return v > 0.5
        return (u > u0) & (u < u1) & (v > v0) & (v < v1)  # logo

    return _Pattern(g, ident.shirt, second)


def _lower_paint(ident: Identity, view: str, g: _Grid, cx: float, hip_y: float, leg_len: float,
                 hip_half: float) -> Paint:
    if ident.lower_pattern == "side_stripe" and view in ("front", "back"):
        half_width = max(hip_half * 0.12, 0.6)
        return _Pattern(g, ident.lower, lambda y, x: np.abs(np.abs(x - cx) - hip_half * 0.95) < half_width)
    if ident.lower_pattern == "faded":
        return _Pattern(g, ident.lower, lambda y, x: np.clip((y - hip_y) / max(leg_len, 1.0), 0.0, 1.0) * 0.45)
    return ident.lower[0]


def _render_person(ident: Identity, pose: _Pose, g: _Grid) -> _Layer:
    layer = _Layer(g.height, g.width)
    view, cx, s = pose.view, pose.cx, pose.stature
    side = view in ("left", "right")
    facing = 1.0 if view == "right" else -1.0  # image direction the person faces in side views
    head_r = ident.head * s
    head_cy = pose.top + head_r
    shoulder_y = pose.top + 2 * head_r + 0.03 * s
    foot_y = pose.top + s
    hip_y = foot_y - ident.leg * s
    shoulder_half = 0.12 * s * ident.build * (0.62 if side else 1.0)
    hip_half = shoulder_half * 0.86
    arm_r = 0.03 * s * ident.build
    # The person's right hangs on the image left when seen from the front, on the image right from the back.
    bag_x_side = ident.bag_side * (1 if view == "front" else -1)
    bag_near_side = (not side) or ident.bag_side == facing

    if ident.long_hair and view == "front":
        layer.paint(_rect(g, head_cy, shoulder_y + 0.06 * s, cx - head_r * 1.05, cx + head_r * 1.05), ident.hair)
    if side and ident.bag == "backpack":  # sticks out behind the back
        near, far = cx - facing * shoulder_half * 0.5, cx - facing * (shoulder_half + 0.09 * s)
        layer.paint(_rect(g, shoulder_y + 0.02 * s, hip_y - 0.04 * s, min(near, far), max(near, far)),
                    ident.bag_colour)
    if side and ident.bag == "handbag" and not bag_near_side:  # mostly hidden behind the body
        _paint_handbag(layer, g, ident, cx - facing * 0.03 * s, hip_y, s)

    _paint_legs(layer, g, ident, pose, hip_y, hip_half)
    shirt = _shirt_paint(ident, view, g, cx, shoulder_y, hip_y, shoulder_half)
    layer.paint(_trapezoid(g, shoulder_y, hip_y + 0.02 * s, cx, shoulder_half, hip_half), shirt)
    layer.paint(_ellipse(g, shoulder_y + 0.01 * s, cx, 0.035 * s, shoulder_half * 0.98), shirt)
    _paint_arms(layer, g, ident, pose, shoulder_y, hip_y, shoulder_half, arm_r, shirt)
    _paint_bag_over_body(layer, g, ident, pose, shoulder_y, hip_y, shoulder_half)
    if ident.bag == "handbag" and bag_near_side:
        _paint_handbag(layer, g, ident, cx + (0.0 if side else bag_x_side * (shoulder_half + arm_r)), hip_y, s)

    layer.paint(_rect(g, head_cy, shoulder_y + 0.01 * s, cx - head_r * 0.4, cx + head_r * 0.4), ident.skin)
    _paint_head(layer, g, ident, view, cx, head_cy, head_r, shoulder_y, s)
    return layer


def _paint_legs(layer: _Layer, g: _Grid, ident: Identity, pose: _Pose, hip_y: float, hip_half: float) -> None:
    s, cx = pose.stature, pose.cx
    side = pose.view in ("left", "right")
    foot_y = pose.top + s
    knee_y = hip_y + 0.5 * (foot_y - hip_y)
    ankle_y = foot_y - 0.045 * s  # the rounded leg end stays inside the shoe
    leg_r = hip_half * (0.62 if side else 0.46)
    lower = _lower_paint(ident, pose.view, g, cx, hip_y, foot_y - hip_y, hip_half)
    hip_offsets = (0.0, 0.0) if side else (-hip_half * 0.5, hip_half * 0.5)
    for k, (hip_dx, sign) in enumerate(zip(hip_offsets, (-1, 1))):
        hip = (hip_y, cx + hip_dx)
        ankle = (ankle_y, cx + hip_dx + sign * pose.stride / 2)
        knee = (knee_y, (hip[1] + ankle[1]) / 2)
        if ident.lower_kind == "trousers":
            layer.paint(_capsule(g, hip, ankle, leg_r, leg_r * 0.7), lower)
        else:
            layer.paint(_capsule(g, hip, ankle, leg_r * 0.8, leg_r * 0.55), ident.skin)
            if ident.lower_kind == "shorts":
                layer.paint(_capsule(g, hip, knee, leg_r * 1.05, leg_r * 0.95), lower)
        shade = 0.8 if side and k == 0 else 1.0  # the far leg of a side view is in shadow
        toe_dx = (1.0 if pose.view == "right" else -1.0) * leg_r * 0.5 if side else 0.0
        layer.paint(_ellipse(g, foot_y - 0.02 * s, ankle[1] + toe_dx, 0.022 * s, leg_r * 1.2), ident.shoes * shade)
    if ident.lower_kind == "skirt":
        layer.paint(_trapezoid(g, hip_y - 0.01 * s, knee_y, cx, hip_half * 1.02, hip_half * 1.45), lower)


def _paint_arms(layer: _Layer, g: _Grid, ident: Identity, pose: _Pose, shoulder_y: float, hip_y: float,
                shoulder_half: float, arm_r: float, shirt: Paint) -> None:
    s, cx = pose.stature, pose.cx
    side = pose.view in ("left", "right")
    arm_len = (hip_y - shoulder_y) * 1.15
    for sx in (0.0,) if side else (-1.0, 1.0):
        shoulder = (shoulder_y + arm_r, cx + sx * (shoulder_half - arm_r * 0.6))
        swing = pose.arm_swing * (1.0 if side else 0.35 * sx)
        hand = (shoulder[0] + arm_len * np.cos(swing), shoulder[1] + sx * 0.02 * s + arm_len * np.sin(swing))
        elbow = ((shoulder[0] + hand[0]) / 2, (shoulder[1] + hand[1]) / 2)
        layer.paint(_capsule(g, shoulder, elbow, arm_r * 1.1, arm_r), shirt)
        layer.paint(_capsule(g, elbow, hand, arm_r, arm_r * 0.8), shirt if ident.long_sleeves else ident.skin)
        layer.paint(_ellipse(g, hand[0] + arm_r * 0.6, hand[1], arm_r, arm_r * 0.8), ident.skin)


def _paint_bag_over_body(layer: _Layer, g: _Grid, ident: Identity, pose: _Pose, shoulder_y: float, hip_y: float,
                         shoulder_half: float) -> None:
    """A backpack covers the back; from the front only its straps show."""
    s, cx = pose.stature, pose.cx
    if ident.bag == "backpack" and pose.view == "back":
        layer.paint(_rect(g, shoulder_y + 0.03 * s, hip_y - 0.03 * s, cx - shoulder_half * 0.75,
                          cx + shoulder_half * 0.75), ident.bag_colour)
    if ident.bag == "backpack" and pose.view == "front":
        for sx in (-1, 1):
            strap_x = cx + sx * shoulder_half * 0.55
            layer.paint(_rect(g, shoulder_y - 0.01 * s, shoulder_y + 0.22 * s, strap_x - 0.012 * s,
                              strap_x + 0.012 * s), ident.bag_colour)


def _paint_handbag(layer: _Layer, g: _Grid, ident: Identity, bx: float, hip_y: float, s: float) -> None:
    layer.paint(_rect(g, hip_y - 0.03 * s, hip_y + 0.08 * s, bx - 0.045 * s, bx + 0.045 * s), ident.bag_colour)


def _paint_head(layer: _Layer, g: _Grid, ident: Identity, view: str, cx: float, head_cy: float, head_r: float,
                shoulder_y: float, s: float) -> None:
    head = _ellipse(g, head_cy, cx, head_r, head_r * 0.82)
    if view == "back":
        layer.paint(head, ident.hair)
        if ident.long_hair:
            layer.paint(_rect(g, head_cy, shoulder_y + 0.1 * s, cx - head_r * 0.9, cx + head_r * 0.9), ident.hair)
        return
    layer.paint(head, ident.skin)
    if view == "front":
        layer.paint(head.where(g.y < head_cy - head_r * 0.25), ident.hair)
        return
    facing = 1.0 if view == "right" else -1.0
    if ident.long_hair:
        back_x = cx - facing * head_r * 0.6
        layer.paint(_rect(g, head_cy, shoulder_y + 0.05 * s, back_x - head_r * 0.4, back_x + head_r * 0.4),
                    ident.hair)
    # Side view: hair covers the top and the back half of the head.
    layer.paint(head.where((g.y < head_cy - head_r * 0.3) | ((g.x - cx) * facing < -head_r * 0.1)), ident.hair)


# ----------------------------------------------------------------------------------------------------------
# Scene: background, placement, occlusion, camera response.
# ----------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=16)
def _scene(cam: Camera, height: int, width: int) -> np.ndarray:
    """The camera's static view (wall texture above a tiled floor), larger than one crop.

    Each image crops it where its pedestrian stands, so a camera's images share a scene yet differ.
    """
    rng = np.random.default_rng(cam.scene_seed)
    g = _grid(height * SCENE_SCALE[0] // 2, width * SCENE_SCALE[1] // 2)
    y, x = g.y, g.x
    c0, c1, c2 = cam.bg_colours
    horizon = cam.horizon * g.height
    if cam.background == "bricks":
        row = np.floor(y / 6.0)
        mortar = (y % 6.0 < 1.0) | ((x + 6.0 * (row % 2)) % 12.0 < 1.0)
        wall = np.where(mortar[..., None], c1, c0)
    elif cam.background == "foliage":
        fine = _smooth_noise(rng, g.height, g.width, (g.height // 5, g.width // 5))[..., None]
        wall = c0 * (1 - fine) + c2 * fine
    elif cam.background == "columns":
        wall = np.where((x % 22.0 < 7.0)[..., None], c1, c0)
    else:
        wall = np.broadcast_to(c0, (g.height, g.width, 3))
    depth = np.clip((y - horizon) / max(g.height - horizon, 1.0), 0.0, 1.0)
    tiles = ((x - g.width / 2) / (0.3 + depth)) % 16.0 < 1.2
    floor = np.where(tiles[..., None], c2 * 0.8, c2)
    scene = np.where((y < horizon)[..., None], wall, floor)
    scene *= (0.85 + 0.3 * _smooth_noise(rng, g.height, g.width, (6, 6)))[..., None]
    for _ in range(int(rng.integers(2, 6))):  # fixed furniture: signs, doors, bins
        h, w = rng.uniform(0.05, 0.25) * g.height, rng.uniform(0.05, 0.25) * g.width
        y0, x0 = rng.uniform(0, horizon), rng.uniform(0, g.width)
        _blend(scene, _rect(g, y0, y0 + h, x0, x0 + w), PALETTE[rng.integers(len(PALETTE))] * 0.85)
    return scene.astype(np.float32)


def _background(cam: Camera, rng: np.random.Generator, g: _Grid) -> np.ndarray:
    """A random crop of the camera's scene with per-image lighting and a few transient objects."""
    scene = _scene(cam, g.height, g.width)
    oy = int(rng.integers(scene.shape[0] - g.height + 1))
    ox = int(rng.integers(scene.shape[1] - g.width + 1))
    light = (0.85 + 0.3 * _smooth_noise(rng, g.height, g.width, (4, 2))) * rng.uniform(0.9, 1.1)
    bg = scene[oy:oy + g.height, ox:ox + g.width] * light[..., None]
    for _ in range(int(rng.integers(0, 3))):  # passing things: carts, cars, other people's bags
        h, w = rng.uniform(0.08, 0.3) * g.height, rng.uniform(0.1, 0.4) * g.width
        y0, x0 = rng.uniform(0, 0.7) * g.height, rng.uniform(-0.2, 1.0) * g.width
        _blend(bg, _rect(g, y0, y0 + h, x0, x0 + w), PALETTE[rng.integers(len(PALETTE))] * 0.85)
    return bg


def _sample_pose(cam: Camera, ident: Identity, rng: np.random.Generator, g: _Grid) -> _Pose:
    view = VIEWS[_pick(rng, 4, cam.view_probs)]
    # Taller people fill more of the crop, within the 70-95 % of the height a detector box gives.
    frac = np.clip((cam.scale + rng.uniform(-0.06, 0.06)) * (0.94 + (ident.height - 0.88)), 0.70, 0.95)
    stature = float(frac * g.height)
    top = float(np.clip((g.height - stature) / 2 + rng.uniform(-0.04, 0.04) * g.height, 0.0, g.height - stature))
    stride = rng.uniform(0.0, 0.14) * stature * (1.4 if view in ("left", "right") else 0.6)
    return _Pose(view=view, cx=float(g.width / 2 + rng.uniform(-0.08, 0.08) * g.width), top=top,
                 stature=stature, stride=float(stride), arm_swing=float(rng.uniform(-0.35, 0.35)))


def _person_window(pose: _Pose, g: _Grid) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Region that contains every part of the figure: limbs, bags and hair stay within PERSON_HALF_WIDTH
    statures of the centre line, and rounded ankles reach a little below the soles."""
    half = PERSON_HALF_WIDTH * pose.stature
    return g.window(pose.top, pose.top + 1.05 * pose.stature, pose.cx - half, pose.cx + half)


def _composite_person(canvas: np.ndarray, layer: _Layer, pose: _Pose, g: _Grid, light: float,
                      texture: np.ndarray | None = None) -> None:
    """In place: the person over the canvas, with cylinder-like shading, light from above and from one side,
    and an optional (H, W) multiplicative `texture` (fabric folds, uneven light)."""
    region, y, x = _person_window(pose, g)
    across = (x - pose.cx) / (0.16 * pose.stature)
    shade = 1.08 - 0.3 * np.minimum(across**2, 1.0) - 0.15 * (y - pose.top) / pose.stature + light * 0.5 * across
    if texture is not None:
        shade *= texture[region]
    target = canvas[region]
    target *= 1.0 - layer.alpha[region][..., None]
    target += layer.rgb[region] * shade[..., None]


def _occlude(canvas: np.ndarray, rng: np.random.Generator, cam: Camera, g: _Grid) -> None:
    """In place: cover part of the person: a box (bin, car, sign), a pole, or a fragment of another pedestrian."""
    kind = rng.integers(3)
    if kind == 0:
        top, x0 = rng.uniform(0.55, 0.8) * g.height, rng.uniform(-0.3, 0.5) * g.width
        box = _rect(g, top, g.height + 1.0, x0, x0 + rng.uniform(0.5, 1.0) * g.width)
        _blend(canvas, box, BG_COLOURS[rng.integers(len(BG_COLOURS))] * rng.uniform(0.6, 1.1))
    elif kind == 1:
        x0 = rng.uniform(0.1, 0.8) * g.width
        _blend(canvas, _rect(g, -1.0, g.height + 1.0, x0, x0 + rng.uniform(0.06, 0.14) * g.width),
               cam.bg_colours[1] * 0.7)
    else:
        passer = sample_identity(rng)
        pose = _sample_pose(cam, passer, rng, g)
        cx = g.width / 2 + rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 0.75) * g.width
        pose = _Pose(pose.view, cx, pose.top, pose.stature, pose.stride, pose.arm_swing)
        _composite_person(canvas, _render_person(passer, pose, g), pose, g, cam.light)


def _camera_response(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Illumination (gain, colour cast, gamma), optics blur, sensor noise, then the camera's JPEG encoder."""
    gain = cam.gain * rng.uniform(0.9, 1.1)
    exposed = np.clip(img * (gain * cam.white_balance), 0.0, 1.0) ** cam.gamma
    sigma = cam.blur * rng.uniform(0.7, 1.3)
    blurred = gaussian_filter(exposed, sigma=(sigma, sigma, 0), mode="nearest", truncate=2.5)
    # Uniform noise with the camera's standard deviation: after JPEG it looks like Gaussian sensor noise and
    # costs a quarter of rng.standard_normal.
    blurred += (rng.random(blurred.shape, dtype=np.float32) - 0.5) * (cam.noise * math.sqrt(12.0))
    pixels = (np.clip(blurred, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=cam.jpeg_quality)
    return np.asarray(Image.open(buffer, formats=["JPEG"]).convert("RGB"))


def render_image(ident: Identity, cam: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One (H, W, 3) uint8 crop of `ident` seen by `cam`; `rng` supplies the per-image variation."""
    g = _grid(height, width)
    canvas = _background(cam, rng, g)
    pose = _sample_pose(cam, ident, rng, g)
    shadow = _ellipse(g, pose.top + pose.stature, pose.cx, 0.03 * pose.stature, 0.2 * pose.stature)
    _blend(canvas, _Mask(shadow.alpha * 0.35, shadow.region), np.zeros(3, np.float32))
    texture = 0.94 + 0.12 * _smooth_noise(rng, height, width, (8, 4))
    _composite_person(canvas, _render_person(ident, pose, g), pose, g, cam.light, texture)
    if rng.random() < OCCLUSION_PROBABILITY:
        _occlude(canvas, rng, cam, g)
    return _camera_response(canvas, cam, rng)


def camera_colour(img: np.ndarray, cam: Camera) -> np.ndarray:
    """A float RGB image in [0, 1] as `cam` renders colour: gain, white balance (colour cast) and gamma."""
    return np.clip(img * (cam.gain * cam.white_balance), 0.0, 1.0) ** cam.gamma


def render_person_sprite(ident: Identity, cam: Camera, rng: np.random.Generator, height: int,
                         width: int) -> tuple[np.ndarray, np.ndarray]:
    """`ident` alone, as `cam` sees it (view, pose, shading, colour cast), without background or occluders:
    float32 RGB (H, W, 3) in [0, 1] and its coverage alpha (H, W) in [0, 1] (for compositing into video)."""
    g = _grid(height, width)
    pose = _sample_pose(cam, ident, rng, g)
    texture = 0.94 + 0.12 * _smooth_noise(rng, height, width, (8, 4))
    layer = _render_person(ident, pose, g)
    premultiplied = np.zeros((height, width, 3), np.float32)
    _composite_person(premultiplied, layer, pose, g, cam.light, texture)
    alpha = layer.alpha
    rgb = premultiplied / np.maximum(alpha, 1e-6)[..., None]
    return camera_colour(rgb, cam).astype(np.float32), alpha.astype(np.float32)


def scene_image(cam: Camera, height: int, width: int) -> np.ndarray:
    """The camera's static scene (wall, floor, furniture) as a float32 (height, width, 3) RGB image in [0, 1],
    before the camera's colour response."""
    scene = _scene(cam, -(-height * 2 // SCENE_SCALE[0]), -(-width * 2 // SCENE_SCALE[1]))
    return np.ascontiguousarray(scene[:height, :width])


# ----------------------------------------------------------------------------------------------------------
# Dataset assembly.
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ImageSpec:
    split: str  # "train", "query" or "gallery"
    pid: int  # 0 for distractors
    camid: int  # 0-based
    index: int  # k-th image of (pid, camid), or the distractor number

    @property
    def filename(self) -> str:
        frame = self.pid * 100 + self.index + 1
        return f"{self.pid:04d}_c{self.camid + 1}s1_{frame:06d}_01.jpg"


def _image_specs(cfg: SynthConfig) -> list[_ImageSpec]:
    """Every image of the dataset. Image 0 of each (test id, camera) is that camera's query."""
    specs = [_ImageSpec("train", pid, c, k) for pid in cfg.train_pids for c in range(cfg.num_cameras)
             for k in range(cfg.images_per_camera)]
    for pid in cfg.test_pids:
        for c in range(cfg.num_cameras):
            specs += [_ImageSpec("query" if k == 0 else "gallery", pid, c, k) for k in range(cfg.images_per_camera)]
    specs += [_ImageSpec("gallery", 0, j % cfg.num_cameras, j) for j in range(cfg.num_distractors)]
    return specs


def _render_spec(cfg: SynthConfig, spec: _ImageSpec, cameras: list[Camera],
                 identities: dict[int, Identity]) -> np.ndarray:
    """Render one image; `identities` caches identity attributes across a person's images."""
    if spec.pid == 0:  # a distractor: a person of an identity that appears nowhere else
        ident = sample_identity(_rng(cfg.seed, _TAG_DISTRACTOR, spec.index))
        rng = _rng(cfg.seed, _TAG_DISTRACTOR, spec.index, 1)
    else:
        if spec.pid not in identities:
            identities[spec.pid] = identity_for(cfg, spec.pid)
        ident = identities[spec.pid]
        rng = _rng(cfg.seed, _TAG_IMAGE, spec.pid, spec.camid, spec.index)
    return render_image(ident, cameras[spec.camid], rng, cfg.height, cfg.width)


def render_identity_images(pids: list[int], cfg: SynthConfig, images_per_camera: int | None = None,
                           cameras: list[int] | None = None) -> SynthBatch:
    """Render identities in memory, exactly as they would be written to disk (before the final JPEG save).

    `cameras` are 0-based camera indices (default: all of `cfg.num_cameras`); image k of (pid, camera)
    is the same image as `PPPP_c{camera+1}s1_...` on disk.
    """
    cfg.validate()
    cams = list(range(cfg.num_cameras)) if cameras is None else list(cameras)
    ipc = cfg.images_per_camera if images_per_camera is None else images_per_camera
    if any(not 0 <= c < 9 for c in cams) or ipc <= 0:
        raise ConfigError(f"render_identity_images: cameras must be in 0..8 and images_per_camera > 0, "
                          f"got cameras={cams}, images_per_camera={ipc}")
    camera_models = [camera_for(cfg, c) for c in range(max(cams) + 1)]
    specs = [_ImageSpec("memory", pid, c, k) for pid in pids for c in cams for k in range(ipc)]
    return _batch(cfg, specs, camera_models)


def _batch(cfg: SynthConfig, specs: list[_ImageSpec], cameras: list[Camera]) -> SynthBatch:
    images = np.empty((len(specs), cfg.height, cfg.width, 3), np.uint8)
    identities: dict[int, Identity] = {}
    for i, spec in enumerate(specs):
        images[i] = _render_spec(cfg, spec, cameras, identities)
    return SynthBatch(images, np.array([s.pid for s in specs], np.int64), np.array([s.camid for s in specs], np.int64))


def generate_arrays(cfg: SynthConfig) -> dict[str, SynthBatch]:
    """The whole dataset in memory: {"train", "query", "gallery"} batches, same content as the files."""
    cfg.validate()
    cameras = [camera_for(cfg, c) for c in range(cfg.num_cameras)]
    specs = _image_specs(cfg)
    return {split: _batch(cfg, [s for s in specs if s.split == split], cameras)
            for split in ("train", "query", "gallery")}


def _metadata(cfg: SynthConfig) -> dict:
    return {"generator": "reidkit.data.synth", "version": GENERATOR_VERSION, "config": asdict(cfg)}


def _is_complete(root: Path, cfg: SynthConfig) -> bool:
    meta = root / META_FILE
    if not meta.is_file():
        return False
    try:
        stored = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if stored.get("version") != GENERATOR_VERSION or stored.get("config") != asdict(cfg):
        return False
    # Images deleted by hand since: regenerate rather than hand out a short dataset.
    return all(_count_images(root / folder) == stored.get("counts", {}).get(split)
               for split, folder in SPLIT_FOLDERS.items())


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return -1
    with os.scandir(folder) as entries:
        return sum(entry.name.endswith(".jpg") for entry in entries)


def generate_market_dataset(out: str | Path, cfg: SynthConfig, show_progress: bool = True,
                            attributes: bool = False) -> Path:
    """Write the dataset to `out` in Market-1501 layout and return `out`.

    Images are rendered into a temporary sibling folder that is renamed onto `out` at the end, so an
    interrupted run never looks complete. If `out` already holds a complete dataset with the same config and
    generator version, nothing is done. A previous synthetic dataset with another config is replaced; any
    other non-empty folder is refused rather than deleted. `attributes=True` also writes `attributes.csv`, a
    manifest of every image with its attr_<name> labels (`write_attribute_manifest`); the images are the same.
    """
    cfg.validate()
    root = _generate_images(Path(out), cfg, show_progress)
    if attributes:
        write_attribute_manifest(root, cfg)
    return root


def write_attribute_manifest(root: str | Path, cfg: SynthConfig) -> Path:
    """`root/attributes.csv`: path (relative), pid, camid, split and the 0/1 attr_<name> columns of
    `identity_attributes` for every image of the dataset `cfg` makes (distractors included: their own person).
    Train on it with `--data root/attributes.csv`. Needs no rendering."""
    cfg.validate()
    root = Path(root)
    names = attribute_names()
    lines = [",".join(["path", "pid", "camid", "split"] + [f"attr_{n}" for n in names])]
    identities: dict[int, dict[str, int]] = {}
    for spec in _image_specs(cfg):
        if spec.pid == 0:
            labels = identity_attributes(sample_identity(_rng(cfg.seed, _TAG_DISTRACTOR, spec.index)))
        else:
            if spec.pid not in identities:
                identities[spec.pid] = identity_attributes(identity_for(cfg, spec.pid))
            labels = identities[spec.pid]
        path = f"{SPLIT_FOLDERS[spec.split]}/{spec.filename}"
        lines.append(",".join([path, str(spec.pid), str(spec.camid), spec.split] + [str(labels[n]) for n in names]))
    path = root / ATTRIBUTE_MANIFEST
    atomic_write_text("\n".join(lines) + "\n", path)
    return path


def _generate_images(root: Path, cfg: SynthConfig, show_progress: bool) -> Path:
    if _is_complete(root, cfg):
        return root
    if root.exists() and not (root / META_FILE).is_file() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root}: exists and is not a reidkit synthetic dataset; refusing to overwrite it "
                        f"(choose another --out or remove it)")
    foreign = _foreign_files(root)
    if foreign:
        shown = ", ".join(str(p) for p in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise DataError(f"{root}: holds files the generator did not write ({shown}); refusing to replace the "
                        "dataset and lose them (move them out, or choose another --out)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_images(tmp, cfg, show_progress)
        atomic_write_json(_metadata(cfg) | {"counts": _counts(cfg)}, tmp / META_FILE)
        _swap_in(tmp, root)
    except OSError as exc:  # disk full, ...: name the dataset being written, not its hidden temporary folder
        if exc.filename is not None and not str(exc.filename).startswith(str(tmp)):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(root)) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _foreign_files(root: Path) -> list[Path]:
    """Files under an earlier synthetic dataset `root` that its recorded config would not have written (files a
    user added): regenerating replaces the whole folder, so they must not be there."""
    if not (root / META_FILE).is_file():
        return []
    try:
        stored = json.loads((root / META_FILE).read_text())
        own = {Path(SPLIT_FOLDERS[s.split]) / s.filename for s in _image_specs(SynthConfig(**stored["config"]))}
    except (OSError, ValueError, TypeError, KeyError):  # another generator version: only its image names are known
        own = None
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if (path.is_dir() and str(relative) in SPLIT_FOLDERS.values()
                or relative in (Path(META_FILE), Path(ATTRIBUTE_MANIFEST))):
            continue
        in_split = len(relative.parts) == 2 and relative.parts[0] in SPLIT_FOLDERS.values()
        if own is not None and relative not in own or own is None and not (in_split and path.suffix == ".jpg"):
            found.append(relative)
    return found


def _write_images(tmp: Path, cfg: SynthConfig, show_progress: bool) -> None:
    for folder in SPLIT_FOLDERS.values():
        (tmp / folder).mkdir()
    cameras = [camera_for(cfg, c) for c in range(cfg.num_cameras)]
    specs = _image_specs(cfg)
    identities: dict[int, Identity] = {}
    for spec in progress(specs, desc="synth", enabled=show_progress, unit="img"):
        buffer = io.BytesIO()  # PIL's encoder truncates a file silently when the disk is full; Python's write raises
        Image.fromarray(_render_spec(cfg, spec, cameras, identities)).save(buffer, format="JPEG",
                                                                         quality=SAVE_JPEG_QUALITY)
        (tmp / SPLIT_FOLDERS[spec.split] / spec.filename).write_bytes(buffer.getbuffer())


def _counts(cfg: SynthConfig) -> dict[str, int]:
    specs = _image_specs(cfg)
    return {split: sum(s.split == split for s in specs) for split in ("train", "query", "gallery")}


def _swap_in(tmp: Path, root: Path) -> None:
    """Rename `tmp` onto `root`; an old dataset is moved aside first and deleted after the swap."""
    if root.is_dir() and any(root.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / "data")
        os.replace(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if root.is_dir():
            root.rmdir()
        os.replace(tmp, root)

