"""Person detectors.

Interface (stable; the pipeline is written against it): a detector has `detect(images: list[np.ndarray]) ->
list[np.ndarray]`, one float32 array (N, 5) per RGB uint8 image: x1, y1, x2, y2 in pixels, then the score in [0, 1].
`build_detector(name_or_path, ...)` returns one.

Extensions: `detect(images, frame_indices=None)`: public detections (`MotDetections`) are looked up by the 0-based
frame index (`Frame.index`) and need it; `detect_frames(frames)` passes `Frame`s directly. Every detector applies
the same post-processing (`postprocess`): score threshold, non-maximum suppression, minimum box height, clipping
to the image.

Detectors (`build_detector`):
- "default" / "adas-0002": Intel's pedestrian-detection-adas-0002 (Apache-2.0, vendored as package data in
  `video/models/`, 2.6 MB) through the OpenVINO runtime: a real pretrained pedestrian detector that works offline on
  a fresh machine; no registry package ships a comparable one as small.
- a path to another OpenVINO IR (.xml) or ONNX (.onnx) SSD-style detector whose output is DetectionOutput rows
  `[image_id, label, conf, x0, y0, x1, y1]` (coordinates normalised to 0..1), or boxes + scores (+ labels) outputs;
  any other graph is refused with a ModelError describing what was found.
- "hog": OpenCV's HOG + linear SVM people detector, the no-model fallback (slow and weaker: see
  docs/benchmarks/video_detect.md).
- a MOTChallenge `det/det.txt` (or a sequence folder holding one): public detections served per frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from ..data.mot import read_mot
from ..errors import ConfigError, ModelError
from ..metrics.tracking import box_iou
from ..utils import openvino_core, openvino_precision

DEFAULT_MODEL = "pedestrian-detection-adas-0002"
DEFAULT_NAMES = ("default", "adas-0002", DEFAULT_MODEL)
__all__ = ["Detector", "HOGDetector", "MotDetections", "ONNXDetector", "OpenVINODetector", "box_iou",
           "build_detector", "default_model_path", "nms", "postprocess"]


def default_model_path() -> Path:
    """The vendored adas-0002 IR (.xml; the .bin is beside it), located as package data."""
    path = resources.files("reidkit.video") / "models" / DEFAULT_MODEL / f"{DEFAULT_MODEL}.xml"
    return Path(str(path))


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (OpenCV's NMSBoxes), best score first."""
    import cv2

    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(float).tolist(), 0.0, float(iou))
    return np.asarray(keep, np.int64).reshape(-1)


def postprocess(dets: np.ndarray, size: tuple[int, int], *, threshold: float, nms_iou: float | None,
                min_height: float) -> np.ndarray:
    """Clip (N, 5) detections to the (w, h) image, drop scores below `threshold` and boxes lower than `min_height`
    pixels, then suppress overlaps above `nms_iou` (None: no NMS). Sorted by score, float32."""
    dets = np.array(dets, np.float64).reshape(-1, 5)  # a copy: clipping must not touch the caller's array
    w, h = size
    dets[:, [0, 2]] = np.clip(dets[:, [0, 2]], 0, w)
    dets[:, [1, 3]] = np.clip(dets[:, [1, 3]], 0, h)
    keep = (dets[:, 4] >= threshold) & (dets[:, 3] - dets[:, 1] >= max(min_height, 1e-6)) & (dets[:, 2] > dets[:, 0])
    dets = dets[keep]
    if nms_iou is not None and nms_iou < 1.0 and len(dets) > 1:
        dets = dets[nms(dets[:, :4], dets[:, 4], nms_iou)]
    return dets[np.argsort(-dets[:, 4], kind="stable")].astype(np.float32)


class Detector:
    """Base class: subclasses implement `_raw(images, frame_indices)` -> unfiltered (N, 5) pixel boxes per image."""

    name = "detector"
    needs_frame_index = False

    def __init__(self, threshold: float = 0.5, nms_iou: float | None = 0.5, min_height: float = 0.0,
                 batch_size: int = 1) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"detector threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise ConfigError(f"detector batch_size must be >= 1, got {batch_size}")
        self.threshold, self.nms_iou, self.min_height, self.batch_size = threshold, nms_iou, min_height, batch_size

    def _raw(self, images: list[np.ndarray], frame_indices: list[int] | None) -> list[np.ndarray]:
        raise NotImplementedError

    def detect(self, images: Sequence[np.ndarray], frame_indices: Sequence[int] | None = None) -> list[np.ndarray]:
        images = list(images)
        if frame_indices is not None and len(frame_indices) != len(images):
            raise ConfigError(f"{self.name}: {len(images)} images but {len(frame_indices)} frame indices")
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            indices = None if frame_indices is None else list(frame_indices[start:start + self.batch_size])
            for image, raw in zip(chunk, self._raw(chunk, indices)):
                out.append(postprocess(raw, (image.shape[1], image.shape[0]), threshold=self.threshold,
                                       nms_iou=self.nms_iou, min_height=self.min_height))
        return out

    def detect_frames(self, frames: Sequence) -> list[np.ndarray]:
        """`detect` for `reidkit.video.sources.Frame`s (their images and indices)."""
        return self.detect([f.image for f in frames], [f.index for f in frames])

    __call__ = detect

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, threshold={self.threshold}, nms_iou={self.nms_iou})"


# ------------------------------------------------------------------------------------------------------------
# SSD-style networks (OpenVINO IR or ONNX).
# ------------------------------------------------------------------------------------------------------------

def _to_input(images: list[np.ndarray], height: int, width: int, bgr: bool) -> np.ndarray:
    """Resize (no letterbox: SSDs are trained on stretched inputs) to NCHW float32 0..255."""
    import cv2

    batch = np.empty((len(images), 3, height, width), np.float32)
    for k, image in enumerate(images):
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        batch[k] = (resized[..., ::-1] if bgr else resized).transpose(2, 0, 1)
    return batch


def _parse_ssd_outputs(outputs: list[np.ndarray], batch: int, sizes: list[tuple[int, int]], labels: set[int] | None,
                       source: str) -> list[np.ndarray]:
    """Pixel (N, 5) boxes per image from DetectionOutput rows (1x1xKx7) or boxes/scores(/labels) outputs."""
    rows = [o for o in outputs if o.ndim >= 2 and o.shape[-1] == 7]
    if rows:
        det = rows[0].reshape(-1, 7)
        det = det[det[:, 0] >= 0]  # padding rows have image_id -1
        if labels is not None:
            det = det[np.isin(det[:, 1].astype(int), list(labels))]
        result = []
        for k, (w, h) in enumerate(sizes):
            mine = det[det[:, 0].astype(int) == k]
            result.append(np.column_stack([mine[:, 3] * w, mine[:, 4] * h, mine[:, 5] * w, mine[:, 6] * h, mine[:, 2]]))
        return result
    boxes = [o for o in outputs if o.shape[-1] == 4]
    if boxes and batch == 1:
        b = boxes[0].reshape(-1, 4).astype(np.float64)
        others = [o.reshape(-1) for o in outputs if o.shape[-1] != 4 and o.size == len(b)]
        if others:
            scores = next((o for o in others if o.dtype.kind == "f"), others[0]).astype(np.float64)
            label_out = next((o for o in others if o.dtype.kind in "iu"), None)
            keep = np.ones(len(b), bool) if labels is None or label_out is None else np.isin(label_out, list(labels))
            w, h = sizes[0]
            if b.size and b.max() <= 1.5:  # normalised coordinates
                b = b * [w, h, w, h]
            return [np.column_stack([b[keep], scores[keep]])]
    shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
    raise ModelError(f"detector {source}: outputs not understood (shapes {shapes}); expected SSD DetectionOutput "
                     f"rows [image_id, label, conf, x0, y0, x1, y1] (..., 7) or boxes (N, 4) with scores (N)")


class OpenVINODetector(Detector):
    """An SSD-style OpenVINO IR (the default adas-0002): input N x 3 x H x W BGR 0..255, DetectionOutput rows.

    Batching reshapes the network to the batch size (compiled once per size); `threads` sets
    INFERENCE_NUM_THREADS (None: OpenVINO's choice); `precision` the inference precision (f32 by default)."""

    def __init__(self, xml: str | os.PathLike, *, threads: int | None = None, labels: set[int] | None = None,
                 precision: str = "f32", **kwargs) -> None:
        super().__init__(**kwargs)
        precision_config = openvino_precision(precision, "detector ")
        self.path, self.name, self.labels = Path(xml), Path(xml).stem, labels
        if not self.path.is_file() or not self.path.with_suffix(".bin").is_file():
            raise ModelError(f"detector {self.path}: the IR needs both {self.path.name} and "
                             f"{self.path.with_suffix('.bin').name}")
        self._core = openvino_core()
        try:
            self._model = self._core.read_model(str(self.path))
        except RuntimeError as exc:
            raise ModelError(f"detector {self.path}: cannot read the OpenVINO IR: {exc}") from exc
        if len(self._model.inputs) != 1 or len(self._model.inputs[0].partial_shape) != 4:
            raise ModelError(f"detector {self.path}: expected one NCHW image input, found "
                             f"{[str(i.partial_shape) for i in self._model.inputs]}")
        shape = self._model.inputs[0].partial_shape
        self._input_name = self._model.inputs[0].any_name
        self.input_size = (int(shape[3].get_length()), int(shape[2].get_length()))  # (w, h)
        self._config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        self._config["PERFORMANCE_HINT"] = "LATENCY"
        # f32 unless asked: bf16 (about 2x faster on this host) moved TUD-Campus IDF1 from 72.5 to 69.7, so the
        # same detections on every host come first
        self._config.update(precision_config)
        self._compiled: dict[int, object] = {}

    def _network(self, batch: int):
        if batch not in self._compiled:
            model = self._model if batch == 1 else self._core.read_model(str(self.path))
            if batch != 1:
                w, h = self.input_size
                model.reshape({self._input_name: [batch, 3, h, w]})
            self._compiled[batch] = self._core.compile_model(model, "CPU", self._config)
        return self._compiled[batch]

    def _raw(self, images: list[np.ndarray], frame_indices: list[int] | None) -> list[np.ndarray]:
        w, h = self.input_size
        batch = _to_input(images, h, w, bgr=True)
        result = self._network(len(images))(batch)
        outputs = [np.asarray(result[o]) for o in result]  # CompiledModel results keyed by output port
        sizes = [(im.shape[1], im.shape[0]) for im in images]
        return _parse_ssd_outputs(outputs, len(images), sizes, self.labels, str(self.path))


class ONNXDetector(Detector):
    """An SSD-style ONNX detector through onnxruntime: input N x 3 x H x W (BGR 0..255 unless `bgr=False`,
    `scale`/`mean` applied as (x - mean) * scale). Batches above 1 only when the graph's batch axis is dynamic."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, labels: set[int] | None = None,
                 bgr: bool = True, mean: float = 0.0, scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        import onnxruntime as ort

        self.path, self.name, self.labels = Path(path), Path(path).stem, labels
        self.bgr, self.mean, self.scale = bgr, mean, scale
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise ModelError(f"detector {self.path}: cannot load the ONNX model: {exc}") from exc
        inputs = self._session.get_inputs()
        shape = inputs[0].shape if len(inputs) == 1 else []
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
            raise ModelError(f"detector {self.path}: expected one NCHW image input with a fixed height and width, "
                             f"found {[(i.name, i.shape) for i in inputs]}")
        self._input_name = inputs[0].name
        self.input_size = (int(shape[3]), int(shape[2]))
        if isinstance(shape[0], int):  # a fixed batch axis
            if shape[0] != 1:
                raise ModelError(f"detector {self.path}: fixed batch size {shape[0]} (expected 1 or dynamic)")
            self.batch_size = 1

    def _raw(self, images: list[np.ndarray], frame_indices: list[int] | None) -> list[np.ndarray]:
        w, h = self.input_size
        batch = (_to_input(images, h, w, bgr=self.bgr) - self.mean) * self.scale
        outputs = self._session.run(None, {self._input_name: batch.astype(np.float32)})
        sizes = [(im.shape[1], im.shape[0]) for im in images]
        return _parse_ssd_outputs([np.asarray(o) for o in outputs], len(images), sizes, self.labels, str(self.path))


# ------------------------------------------------------------------------------------------------------------
# No-model fallback and public detections.
# ------------------------------------------------------------------------------------------------------------

class HOGDetector(Detector):
    """OpenCV's HOG people detector (Dalal & Triggs). Its SVM margins are mapped to (0, 1) by a logistic
    function, so the shared threshold applies; people shorter than ~128 px are found only after upscaling
    (`upscale`)."""

    name = "hog"

    def __init__(self, *, upscale: float = 1.0, win_stride: int = 8, **kwargs) -> None:
        kwargs.setdefault("threshold", 0.5)
        super().__init__(**kwargs)
        import cv2

        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.upscale, self.win_stride = upscale, win_stride

    def _raw(self, images: list[np.ndarray], frame_indices: list[int] | None) -> list[np.ndarray]:
        import cv2

        result = []
        for image in images:
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            if self.upscale != 1.0:
                gray = cv2.resize(gray, None, fx=self.upscale, fy=self.upscale)
            rects, weights = self._hog.detectMultiScale(gray, winStride=(self.win_stride, self.win_stride),
                                                        padding=(8, 8), scale=1.05)
            rects = np.asarray(rects, np.float64).reshape(-1, 4) / self.upscale
            scores = 1.0 / (1.0 + np.exp(-np.asarray(weights, np.float64).reshape(-1)))
            result.append(np.column_stack([rects[:, :2], rects[:, :2] + rects[:, 2:], scores]))
        return result


class MotDetections(Detector):
    """Public detections of a MOTChallenge `det/det.txt`, served per 0-based frame index (file frame - 1).

    Their confidences are detector-specific (MOT15's ACF gives 0..~120): they are divided by the file's highest
    score when it exceeds 1 (order preserved), so scores are in [0, 1]. Defaults keep every row (threshold 0, no
    NMS), as public detections are meant to be used as given."""

    needs_frame_index = True

    def __init__(self, det_txt: str | os.PathLike, **kwargs) -> None:
        kwargs.setdefault("threshold", 0.0)
        kwargs.setdefault("nms_iou", None)
        super().__init__(**kwargs)
        self.path = Path(det_txt)
        self.name = f"det.txt ({self.path})"
        table = read_mot(self.path)
        top = float(table.scores.max()) if len(table) else 1.0
        self.score_scale = top if top > 1.0 else 1.0
        scores = np.clip(table.scores / self.score_scale, 0.0, 1.0)
        dets = np.column_stack([table.xyxy, scores])
        self._by_frame = {frame - 1: dets[rows] for frame, rows in table.by_frame().items()}

    def _raw(self, images: list[np.ndarray], frame_indices: list[int] | None) -> list[np.ndarray]:
        if frame_indices is None:
            raise ConfigError(f"{self.name}: public detections are looked up by frame: call "
                              "detect(images, frame_indices) or detect_frames(frames)")
        return [self._by_frame.get(int(i), np.zeros((0, 5))) for i in frame_indices]


def build_detector(name_or_path: str | os.PathLike = "default", *, threshold: float | None = None,
                   nms_iou: float | None = None, min_height: float = 0.0, batch_size: int = 1,
                   threads: int | None = None) -> Detector:
    """A detector by name ("default", "adas-0002", "hog") or path (.xml OpenVINO IR, .onnx, det.txt, or a
    MOTChallenge sequence folder with det/det.txt).

    None means the detector's own default: `threshold` 0.5 for networks and HOG, 0 for public detections;
    `nms_iou` 0.5 for networks and HOG, no suppression for public detections (1.0 switches NMS off).
    `min_height` drops boxes lower than that many pixels; `threads` caps the inference threads."""
    spec = os.fspath(name_or_path)
    common: dict = {"min_height": min_height, "batch_size": batch_size}
    common |= {k: v for k, v in (("threshold", threshold), ("nms_iou", nms_iou)) if v is not None}
    if spec in DEFAULT_NAMES:
        return OpenVINODetector(default_model_path(), threads=threads, labels={1}, **common)
    if spec == "hog":
        return HOGDetector(**common)
    path = Path(spec)
    if path.is_dir() and (path / "det" / "det.txt").is_file():
        path = path / "det" / "det.txt"
    if path.suffix == ".txt":
        if not path.is_file():
            raise ModelError(f"detections {path}: no such file")
        return MotDetections(path, **common)
    if not path.exists():
        raise ModelError(f"detector {spec!r}: not a known name (default, adas-0002, hog) and no such file")
    if path.suffix == ".xml":
        return OpenVINODetector(path, threads=threads, **common)
    if path.suffix == ".onnx":
        return ONNXDetector(path, threads=threads, **common)
    raise ModelError(f"detector {path}: unknown kind (expected an OpenVINO .xml, an .onnx, or a MOT det.txt)")
