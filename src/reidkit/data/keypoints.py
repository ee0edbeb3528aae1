"""Pose keypoints of person crops and the part boxes of the pose-guided models (GLAD, SpindleNet).

The estimator is MediaPipe BlazePose's landmark network `pose_landmark_full.tflite` (Apache-2.0), which ships
inside the mediapipe 0.10.14 wheel, run with LiteRT (`ai_edge_litert`, the `pose` extra). Only the model FILE is
taken from mediapipe: its Python API is never imported (it does not work with our protobuf). A ReID crop already
holds one person, so BlazePose's detector stage is skipped: the crop is padded to a centred square (black) and
resized to the network's 256 x 256 input.

Network outputs (measured): `Identity` (1, 195) = 39 landmarks x (x, y, z, visibility, presence) in input pixels,
the first 33 being BlazePose's body landmarks (visibility / presence are logits: a sigmoid is applied here),
`Identity_1` (1, 1) the pose-presence probability. A crop whose presence is below `threshold` counts as "no
pose": its keypoints are the canonical upright skeleton `CANONICAL_KEYPOINTS` (so it gets fixed-proportion
fallback boxes), and it is counted and reported, never dropped.

Keypoints are computed once per image file and cached by the file's CONTENT (SHA-1), in chunk files written
atomically (`keypoint_cache_dir()`), so an interrupted run resumes where it stopped and a renamed or copied
dataset reuses them. The cache folder is keyed by the model file's digest and the preprocessing version.

The 14 derived keypoints (the layout of the DeeperCut / CPM skeletons GLAD and SpindleNet were built on), in
crop-normalised coordinates (x / width, y / height):
    0 upper head, 1 neck, 2-4 right shoulder / elbow / wrist, 5-7 left shoulder / elbow / wrist,
    8-10 right hip / knee / ankle, 11-13 left hip / knee / ankle.
neck = midpoint of the shoulders; upper head (top of the head, which BlazePose does not output) =
neck + UPPER_HEAD_FACTOR * (face centre - neck), face centre = mean of the eyes and ears (landmarks 1-8): the eyes
sit at about half the head height and the shoulder line about as far below the eyes as the head is tall, so the
crown is ~1.6 times the neck-to-eyes distance above the neck.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, ModelError
from ..utils import atomic_path, cache_root, progress
from .images import read_image

POSE_INSTALL = "pip install 'reidkit[pose]' && pip install --no-deps mediapipe==0.10.14"
MODEL_RELPATH = ("modules", "pose_landmark", "pose_landmark_full.tflite")
INPUT_SIZE = 256
PREP_VERSION = 1  # bump when the crop -> network input preparation changes: the cache folder changes with it
DEFAULT_THRESHOLD = 0.5
CHUNK = 256  # images per cache file: a crash loses at most this many keypoint computations

KEYPOINT_NAMES = ("upper_head", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
                  "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
                  "left_ankle")
# BlazePose landmark index of each derived keypoint 2..13 (0 and 1 are computed).
_BLAZE_LIMBS = (12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27)
_BLAZE_FACE = tuple(range(1, 9))  # eyes (1-6) and ears (7-8)
UPPER_HEAD_FACTOR = 1.6
# An upright pedestrian filling a crop (x, y as fractions of width / height): the keypoints of "no pose found".
CANONICAL_KEYPOINTS = np.array([
    [0.50, 0.03], [0.50, 0.18], [0.34, 0.20], [0.30, 0.34], [0.30, 0.47], [0.66, 0.20], [0.70, 0.34],
    [0.70, 0.47], [0.40, 0.50], [0.40, 0.72], [0.40, 0.93], [0.60, 0.50], [0.60, 0.72], [0.60, 0.93],
], dtype=np.float32)

GLAD_PARTS = ("head", "upper_body", "lower_body")
SPINDLE_REGIONS = ("head_shoulder", "upper_body", "lower_body", "right_arm", "left_arm", "right_leg", "left_leg")
SPINDLE_GROUPS = ((0, 1, 2, 5), (1, 2, 5, 8, 11), (8, 9, 10, 11, 12, 13), (2, 3, 4), (5, 6, 7), (8, 9, 10),
                  (11, 12, 13))
MIN_BOX = 0.05  # boxes are at least this fraction of the crop's width / height (never empty)


# ------------------------------------------------------------------------------------------ the estimator

def pose_model_path() -> Path:
    """The BlazePose landmark file inside the installed mediapipe wheel; ModelError with the fix otherwise."""
    spec = importlib.util.find_spec("mediapipe")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in locations:
        path = Path(root).joinpath(*MODEL_RELPATH)
        if path.is_file():
            return path
    where = f"not found under {locations[0]}" if locations else "the mediapipe package is not installed"
    raise ModelError(f"pose model {'/'.join(('mediapipe', *MODEL_RELPATH))}: {where}; install it with "
                     f"`{POSE_INSTALL}` (mediapipe only for its model file, without its dependencies)")


def _interpreter_class() -> type:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ModelError(f"pose keypoints need the package ai-edge-litert (LiteRT), which is not importable "
                         f"({exc}); install it with `{POSE_INSTALL}`") from None
    return Interpreter


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def pose_input(image: torch.Tensor) -> tuple[np.ndarray, tuple[float, float, float]]:
    """uint8 (3, H, W) crop -> (network input float32 (1, 256, 256, 3) RGB in [0, 1], (side, left, top)):
    the crop padded with black to a centred square of `side` pixels (offsets left / top) and resized."""
    _, h, w = image.shape
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    x = F.pad(image.float().unsqueeze(0) / 255.0, (left, side - w - left, top, side - h - top))
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                      antialias=side > INPUT_SIZE)
    return x.permute(0, 2, 3, 1).contiguous().numpy(), (float(side), float(left), float(top))


class PoseEstimator:
    """BlazePose landmarks of single-person crops, one LiteRT invoke per crop (batching was not faster: 35 vs
    48 ms per crop at batch 1 vs 8 on the shared 2-core machine).

    >>> est = PoseEstimator()
    >>> landmarks, presence = est(uint8_images)   # (N, 33, 4): x, y (crop fractions), visibility, presence
    """

    def __init__(self, model_path: str | Path | None = None, num_threads: int = 1):
        self.model_path = Path(model_path) if model_path is not None else pose_model_path()
        if not self.model_path.is_file():
            raise ModelError(f"pose model {self.model_path}: file not found; install it with `{POSE_INSTALL}`")
        interpreter = _interpreter_class()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.interpreter = interpreter(model_path=str(self.model_path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        try:
            self._landmarks, self._presence = outputs["Identity"], outputs["Identity_1"]
        except KeyError:
            raise ModelError(f"pose model {self.model_path}: outputs {sorted(outputs)} are not BlazePose's "
                             "landmark outputs (Identity, Identity_1)") from None

    @property
    def tag(self) -> str:
        """Identifies the model file and the input preparation (the cache folder name)."""
        digest = hashlib.sha256(self.model_path.read_bytes()).hexdigest()[:12]
        return f"blazepose-full-{digest}-v{PREP_VERSION}"

    def one(self, image: torch.Tensor) -> tuple[np.ndarray, float]:
        """uint8 (3, H, W) -> ((33, 4) landmarks: x / W, y / H, visibility, presence probabilities; presence)."""
        x, (side, left, top) = pose_input(image)
        self.interpreter.set_tensor(self._input, x)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._landmarks).reshape(39, 5)[:33]
        presence = float(self.interpreter.get_tensor(self._presence).reshape(-1)[0])
        scale = side / INPUT_SIZE
        h, w = image.shape[1:]
        out = np.empty((33, 4), dtype=np.float32)
        out[:, 0] = (raw[:, 0] * scale - left) / w
        out[:, 1] = (raw[:, 1] * scale - top) / h
        out[:, 2:] = _sigmoid(raw[:, 3:5])
        return out, presence

    def __call__(self, images: torch.Tensor | Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 3, H, W) (or a list of (3, H, W) of any sizes) -> ((N, 33, 4) landmarks, (N,) presence)."""
        results = [self.one(image) for image in images]
        if not results:
            return np.zeros((0, 33, 4), np.float32), np.zeros(0, np.float32)
        return np.stack([r[0] for r in results]), np.asarray([r[1] for r in results], dtype=np.float32)


# ------------------------------------------------------------------------------------------ derived points

def derive_keypoints(landmarks: np.ndarray) -> np.ndarray:
    """BlazePose landmarks (N, 33, >=2) -> the 14 keypoints (N, 14, 2) of KEYPOINT_NAMES (crop fractions)."""
    xy = np.asarray(landmarks, dtype=np.float32)[..., :2]
    neck = (xy[:, 11] + xy[:, 12]) / 2
    face = xy[:, list(_BLAZE_FACE)].mean(axis=1)
    upper_head = neck + UPPER_HEAD_FACTOR * (face - neck)
    return np.concatenate([upper_head[:, None], neck[:, None], xy[:, list(_BLAZE_LIMBS)]], axis=1)


def keypoints_or_fallback(landmarks: np.ndarray, presence: np.ndarray,
                          threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(14 keypoints per crop (N, 14, 2), found (N,) bool): crops with presence < threshold get the canonical
    skeleton (fixed-proportion boxes)."""
    found = np.asarray(presence) >= threshold
    keypoints = derive_keypoints(landmarks) if len(found) else np.zeros((0, 14, 2), np.float32)
    keypoints[~found] = CANONICAL_KEYPOINTS
    return keypoints, found


# ------------------------------------------------------------------------------------------ part boxes

def _finish_boxes(boxes: np.ndarray) -> np.ndarray:
    """Clip [x1, y1, x2, y2] to the crop and grow boxes thinner than MIN_BOX around their centre."""
    boxes = np.clip(boxes, 0.0, 1.0)
    for lo, hi in ((0, 2), (1, 3)):
        centre = np.clip((boxes[..., lo] + boxes[..., hi]) / 2, MIN_BOX / 2, 1 - MIN_BOX / 2)
        thin = boxes[..., hi] - boxes[..., lo] < MIN_BOX
        boxes[..., lo] = np.where(thin, centre - MIN_BOX / 2, boxes[..., lo])
        boxes[..., hi] = np.where(thin, centre + MIN_BOX / 2, boxes[..., hi])
    return boxes.astype(np.float32)


def glad_boxes(keypoints: np.ndarray, alpha: float = 0.04) -> np.ndarray:
    """GLAD's three parts (Wei et al. 2017) from upper head (uh), neck (n) and the hips (rh, lh): (N, 3, 4)
    boxes [x1, y1, x2, y2] in crop fractions, in the order head, upper body, lower body:

        B^h  = [0, y_uh - alpha,             1, y_n + alpha]
        B^ub = [0, y_n - alpha,              1, max(y_rh, y_lh) + alpha]
        B^lb = [0, min(y_rh, y_lh) - alpha,  1, 1]

    Widths are the crop's width (a ReID crop is about one person wide); alpha (a fraction of the crop height)
    extends each part vertically so neighbouring parts overlap and small keypoint errors do not cut a part.
    Boxes are clipped to the crop; a box thinner than MIN_BOX is grown around its centre.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    y_uh, y_n, y_rh, y_lh = kp[:, 0, 1], kp[:, 1, 1], kp[:, 8, 1], kp[:, 11, 1]
    zero, one = np.zeros_like(y_n), np.ones_like(y_n)
    head = np.stack([zero, y_uh - alpha, one, y_n + alpha], axis=1)
    upper = np.stack([zero, y_n - alpha, one, np.maximum(y_rh, y_lh) + alpha], axis=1)
    lower = np.stack([zero, np.minimum(y_rh, y_lh) - alpha, one, one], axis=1)
    return _finish_boxes(np.stack([head, upper, lower], axis=1))


def spindle_boxes(keypoints: np.ndarray, margin: float = 0.08, aspect: float = 0.5) -> np.ndarray:
    """SpindleNet's seven body regions (Zhao et al. 2017) in SPINDLE_REGIONS order: (N, 7, 4) boxes [x1, y1, x2,
    y2] in crop fractions. Region r is the bounding box of its keypoint group SPINDLE_GROUPS[r]
    (head-shoulder: upper head, neck, shoulders; upper body: neck, shoulders, hips; lower body: hips, knees,
    ankles; each arm: shoulder, elbow, wrist; each leg: hip, knee, ankle), widened by `margin` (a fraction of the
    crop width) on the left and right and by margin * aspect (the same number of pixels; aspect = width / height)
    at the top and bottom, then clipped to the crop (boxes thinner than MIN_BOX grown around their centre).
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    boxes = []
    for group in SPINDLE_GROUPS:
        pts = kp[:, list(group)]
        lo, hi = pts.min(axis=1), pts.max(axis=1)
        boxes.append(np.stack([lo[:, 0] - margin, lo[:, 1] - margin * aspect, hi[:, 0] + margin,
                               hi[:, 1] + margin * aspect], axis=1))
    return _finish_boxes(np.stack(boxes, axis=1))


BOX_LAYOUTS: dict[str, Callable[..., np.ndarray]] = {"glad": glad_boxes, "spindle": spindle_boxes}


def part_boxes(keypoints: np.ndarray, layout: str, **params) -> np.ndarray:
    """Boxes of a registered layout ("glad" / "spindle") with its parameters."""
    if layout not in BOX_LAYOUTS:
        raise ModelError(f"part box layout {layout!r}: expected one of {sorted(BOX_LAYOUTS)}")
    return BOX_LAYOUTS[layout](keypoints, **params)


def mirror_boxes(boxes: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Boxes of the horizontally mirrored crop: x -> 1 - x (x1 and x2 swap)."""
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else boxes.copy()
    out[..., 0], out[..., 2] = 1 - boxes[..., 2], 1 - boxes[..., 0]
    return out


# ------------------------------------------------------------------------------------------ file cache

def keypoint_cache_dir() -> Path:
    """$REIDKIT_CACHE/reidkit/keypoints (else $XDG_CACHE_HOME, else ~/.cache): the per-user cache root the native
    kernels also use (the dataset folders may be read-only)."""
    return cache_root() / "keypoints"


@dataclass
class PoseResult:
    """Keypoints of a list of crops, in input order."""

    landmarks: np.ndarray  # (N, 33, 4): x, y (crop fractions), visibility, presence
    presence: np.ndarray  # (N,) pose-presence probability
    computed: int  # how many were computed now (the rest came from the cache)
    seconds: float  # time spent computing them

    def keypoints(self, threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
        return keypoints_or_fallback(self.landmarks, self.presence, threshold)


def file_key(path: str | os.PathLike) -> str:
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"cannot read image {os.fspath(path)}: {exc.strerror or exc}") from None


class KeypointCache:
    """Content-keyed landmark store: chunk files `chunk-<time>-<pid>.npz` (keys, landmarks, presence), each written
    atomically, so concurrent or interrupted runs only ever add complete chunks."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.entries: dict[str, tuple[np.ndarray, float]] = {}
        for chunk in sorted(self.folder.glob("chunk-*.npz")):
            try:
                with np.load(chunk) as data:
                    for key, lm, pr in zip(data["keys"].tolist(), data["landmarks"], data["presence"]):
                        self.entries[key] = (lm, float(pr))
            except (OSError, ValueError, KeyError) as exc:  # a foreign or damaged file: recompute its entries
                warnings.warn(f"keypoint cache {chunk}: unreadable ({exc}); its keypoints are recomputed",
                              stacklevel=2)

    def add(self, keys: list[str], landmarks: np.ndarray, presence: np.ndarray) -> None:
        name = f"chunk-{time.time_ns()}-{os.getpid()}.npz"
        with atomic_path(self.folder / name) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=np.asarray(keys), landmarks=landmarks, presence=presence)
        for key, lm, pr in zip(keys, landmarks, presence):
            self.entries[key] = (lm, float(pr))


def pose_for_files(paths: Sequence[str | os.PathLike], estimator: PoseEstimator | None = None,
                   cache_dir: str | Path | None = None, show_progress: bool = True,
                   desc: str = "pose keypoints") -> PoseResult:
    """BlazePose landmarks of image files, each computed once and cached by file content (resumable: chunks of
    CHUNK crops are saved as they finish)."""
    keys = [file_key(p) for p in paths]
    estimator = estimator or PoseEstimator()
    cache = KeypointCache(Path(cache_dir or keypoint_cache_dir()) / estimator.tag)
    missing = sorted({k: i for i, k in enumerate(keys) if k not in cache.entries}.values())
    start = time.perf_counter()
    bar = progress(total=len(missing), desc=desc, enabled=show_progress and bool(missing))
    for begin in range(0, len(missing), CHUNK):
        rows = missing[begin:begin + CHUNK]
        results = []
        for i in rows:
            image = torch.from_numpy(np.array(read_image(paths[i]), dtype=np.uint8)).permute(2, 0, 1)
            results.append(estimator.one(image))
            bar.update(1)
        cache.add([keys[i] for i in rows], np.stack([r[0] for r in results]),
                  np.asarray([r[1] for r in results], dtype=np.float32))
    bar.close()
    seconds = time.perf_counter() - start
    landmarks = np.stack([cache.entries[k][0] for k in keys]) if keys else np.zeros((0, 33, 4), np.float32)
    presence = np.asarray([cache.entries[k][1] for k in keys], dtype=np.float32)
    return PoseResult(landmarks.astype(np.float32), presence, len(missing), seconds)


def resized_keypoints(keypoints: np.ndarray, image_sizes: np.ndarray, size: tuple[int, int],
                      mode: str = "stretch") -> np.ndarray:
    """Crop-fraction keypoints -> fractions of the image as resized by data.transforms.resize_image(size, mode):
    unchanged for "stretch"; for "pad" the crop sits scaled and centred in a grey canvas."""
    if mode == "stretch":
        return keypoints
    height, width = size
    h, w = image_sizes[:, 0].astype(np.float64), image_sizes[:, 1].astype(np.float64)
    scale = np.minimum(height / h, width / w)
    new_w, new_h = np.maximum(1, np.round(w * scale)), np.maximum(1, np.round(h * scale))
    left, top = (width - new_w) // 2, (height - new_h) // 2
    out = keypoints.astype(np.float64).copy()
    out[..., 0] = (left[:, None] + out[..., 0] * new_w[:, None]) / width
    out[..., 1] = (top[:, None] + out[..., 1] * new_h[:, None]) / height
    return out.astype(np.float32)


def report_fallbacks(found: np.ndarray, where: str) -> str:
    """One line counting the crops without a pose (they get the fixed-proportion fallback boxes)."""
    missing = int((~np.asarray(found)).sum())
    return (f"{where}: pose found in {len(found) - missing} of {len(found)} crops; {missing} without a pose "
            f"({100.0 * missing / max(1, len(found)):.1f}%) use the fixed-proportion fallback boxes")


# ------------------------------------------------------------------------------------------ inference

class PoseBoxes:
    """Part boxes for a batch of NORMALISED model inputs, computed from pose keypoints: what a pose-guided part
    model (GLAD, SpindleNet) calls at inference when it is given no boxes (`attach_pose_boxes`)."""

    def __init__(self, layout: str, params: dict, threshold: float, mean: Sequence[float], std: Sequence[float],
                 estimator: PoseEstimator | None = None):
        self.layout, self.params, self.threshold = layout, dict(params), threshold
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.estimator = estimator or PoseEstimator()
        self.found = 0  # running counts, for reports
        self.seen = 0
        self.warned = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x.detach().float().cpu() * self.std + self.mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
        landmarks, presence = self.estimator(pixels)
        keypoints, found = keypoints_or_fallback(landmarks, presence, self.threshold)
        self.seen += len(found)
        self.found += int(found.sum())
        if not found.all() and not self.warned:  # once per extractor: the running counts stay on this object
            self.warned = True
            warnings.warn(f"pose not found in {int((~found).sum())} of {len(found)} crops of this batch: they use "
                          "the fixed-proportion fallback boxes (running counts: model.box_fn.found / .seen)",
                          stacklevel=2)
        boxes = part_boxes(keypoints, self.layout, **self.params)
        return torch.from_numpy(boxes).to(x.device)


def attach_pose_boxes(model: torch.nn.Module, estimator: PoseEstimator | None = None) -> torch.nn.Module:
    """Give a pose-guided part model (one with a `box_layout`) a `box_fn` that computes its part boxes from the
    pose of each input; any other model is returned unchanged. Used by the Extractor."""
    layout = getattr(model, "box_layout", None)
    if layout is None:
        return model
    model.box_fn = PoseBoxes(layout, model.box_params, model.pose_threshold, model.input_mean, model.input_std,
                             estimator)
    return model
