"""One extractor interface over three runtimes: PyTorch checkpoints, onnxruntime and OpenVINO.

>>> ext = build_extractor("runs/x/best.pt")                    # TorchExtractor
>>> ext = build_extractor("model.onnx")                        # OnnxExtractor (reads model.json for preprocessing)
>>> ext = build_extractor(".../person-reidentification-retail-0288.xml")   # OpenVinoExtractor (Intel preset)
>>> feats = ext.embed(["a.jpg", "b.jpg"])                      # (2, D) float32, L2-normalised

Every extractor returns L2-normalised float32 embeddings, so cosine similarity is a dot product.
Images enter as RGB uint8 (N, 3, H, W) at the extractor's `input_size`; each backend applies its own
`Preprocessing` (channel order, scale, mean/std), which for exported models comes from a sidecar JSON
written by `reidkit export` and for the Intel Open Model Zoo models from `INTEL_PRESETS`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..data.images import ImageLike, load_image_tensor
from ..errors import ModelError, ReIDError
from ..utils import openvino_core, openvino_precision, progress
from .extractor import Extractor
from .features import require_finite_features

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


@runtime_checkable
class FeatureExtractor(Protocol):
    """What indexing and search need from a model, whatever runs it."""

    name: str
    input_size: tuple[int, int]
    resize: str

    @property
    def dim(self) -> int: ...

    def embed(self, images: Sequence[ImageLike], show_progress: bool = False) -> np.ndarray: ...

    def embed_uint8(self, images: torch.Tensor, show_progress: bool = False) -> np.ndarray: ...


@dataclass(frozen=True)
class Preprocessing:
    """RGB uint8 pixels -> model input: reorder channels, multiply by `scale`, then (x - mean) / std."""

    input_size: tuple[int, int] = (256, 128)
    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "stretch"

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ModelError(f"preprocessing channel_order={self.channel_order!r}: expected 'RGB' or 'BGR'")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelError(f"preprocessing mean={self.mean} std={self.std}: need 3 values each, std > 0")

    def apply(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """uint8 RGB (N, 3, H, W) -> float32 (N, 3, H, W) model input."""
        x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if self.channel_order == "BGR":
            x = x[:, ::-1]
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return np.ascontiguousarray((x.astype(np.float32) * np.float32(self.scale) - mean) / std)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Preprocessing:
        try:
            return cls(input_size=tuple(data["input_size"]), channel_order=data.get("channel_order", "RGB"),
                       scale=float(data.get("scale", 1.0 / 255.0)), mean=tuple(data.get("mean", (0.0,) * 3)),
                       std=tuple(data.get("std", (1.0,) * 3)), resize=data.get("resize", "stretch"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: bad preprocessing entry ({exc.__class__.__name__}: {exc})") from None


# Intel Open Model Zoo person re-identification models (OSNet-AIN), by file stem.
# 0277/0288: documented as BGR 0..255 NCHW 1x3x256x128 -> 256-d, cosine.
# 0267: undocumented; measured in docs/deployment.md. Its first layer is an InstanceNorm over the input, which
# cancels any per-channel scale and offset, so only the channel order matters -- and RGB beats BGR.
INTEL_PRESETS: dict[str, Preprocessing] = {
    "person-reidentification-retail-0277": Preprocessing((256, 128), "BGR", 1.0),
    "person-reidentification-retail-0288": Preprocessing((256, 128), "BGR", 1.0),
    "person-reidentification-retail-0267": Preprocessing((256, 128), "RGB", 1.0),
}


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """`model.onnx` / `model.xml` -> `model.json`, the preprocessing record written by `reidkit export`."""
    return Path(model_path).with_suffix(".json")


def resolve_preprocessing(model_path: Path, given: Preprocessing | None) -> Preprocessing:
    """Explicit argument, else the sidecar JSON, else an Intel preset; ModelError naming the options otherwise."""
    if given is not None:
        return given
    side = sidecar_path(model_path)
    if side.is_file():
        try:
            data = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{side}: unreadable preprocessing sidecar ({exc})") from None
        return Preprocessing.from_dict(data.get("preprocessing", data), str(side))
    if model_path.stem in INTEL_PRESETS:
        return INTEL_PRESETS[model_path.stem]
    raise ModelError(f"{model_path}: preprocessing unknown -- no sidecar {side.name} (written by `reidkit export`) "
                     f"and not one of the known models {sorted(INTEL_PRESETS)}; pass preprocessing=Preprocessing(...)")


# ---------------------------------------------------------------------------------------------------- images

DEPLOY_INSTALL = "pip install 'reidkit[deploy]'"


def import_optional(module: str, purpose: str, package: str | None = None) -> Any:
    """Import an optional ([deploy] extra) module, or ModelError naming the package and the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"{purpose} needs the Python package '{package or module}', which is not installed "
                         f"({exc}); install the deployment extra: {DEPLOY_INSTALL}") from None


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------- torch

class TorchExtractor(Extractor):
    """The PyTorch `Extractor`, plus the `name` and `preprocessing` the other backends expose."""

    backend = "torch"

    @property
    def name(self) -> str:
        return f"torch:{self.checkpoint.name}"

    @property
    def model_path(self) -> Path:
        return self.checkpoint

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(tuple(self.input_size), "RGB", 1.0 / 255.0, tuple(self.mean), tuple(self.std),
                             self.resize)


# ------------------------------------------------------------------------------------------- array runtimes

class _ArrayExtractor:
    """Shared batching, preprocessing and normalisation for runtimes that take float32 numpy batches."""

    backend = "?"

    def __init__(self, model_path: str | os.PathLike, preprocessing: Preprocessing | None, batch_size: int,
                 flip: bool = False):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"model {self.model_path}: file not found")
        if batch_size < 1:
            raise ModelError(f"batch_size={batch_size}: must be >= 1")
        self.preprocessing = resolve_preprocessing(self.model_path, preprocessing)
        self.input_size = tuple(self.preprocessing.input_size)
        self.resize = self.preprocessing.resize
        self.batch_size, self.flip = batch_size, flip
        self._dim: int | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model_path.name}"

    @property
    def dim(self) -> int:
        if self._dim is None:  # models without a static output shape: run one blank image
            self._dim = int(self._forward(self.preprocessing.apply(np.zeros((1, 3, *self.input_size), np.uint8)))
                            .shape[1])
        return self._dim

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed_uint8(self, images: torch.Tensor | np.ndarray, show_progress: bool = False) -> np.ndarray:
        """uint8 RGB (N, 3, H, W) at input size -> (N, D) float32, L2-normalised."""
        if tuple(images.shape[2:]) != self.input_size:
            raise ReIDError(f"images: expected size {self.input_size}, got {tuple(images.shape[2:])}")
        chunks = [self._forward_tta(images[s:s + self.batch_size])
                  for s in progress(range(0, images.shape[0], self.batch_size), desc=f"embedding ({self.backend})",
                                    enabled=show_progress, leave=False)]
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return require_finite_features(l2_normalize(np.concatenate(chunks).astype(np.float32, copy=False)),
                                       f"model {self.model_path}")

    def _forward_tta(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """flip=True sums the outputs of the images and their mirrors, as the torch Extractor does."""
        batch = self.preprocessing.apply(images)
        out = self._forward(batch)
        return out + self._forward(np.ascontiguousarray(batch[..., ::-1])) if self.flip else out

    def embed(self, images: Sequence[ImageLike], show_progress: bool = False) -> np.ndarray:
        """Paths, PIL images or HxWx3 arrays (see data.images.image_array) -> (N, D) float32, L2-normalised."""
        return self.embed_uint8(load_image_tensor(list(images), self.input_size, self.resize), show_progress)


def _rewrite_mvn_with_epsilon(graph: Any, epsilon: float = 1e-9) -> int:
    """Replace MeanVarianceNormalization nodes by explicit ops with an epsilon; returns how many.

    onnxruntime's MVN divides by the bare standard deviation, so a group whose values are all equal (e.g. an
    all-zero ReLU output) yields 0/0 = NaN. Intel's 0267 model has such groups on ordinary images; OpenVINO
    runs it fine because its MVN adds an epsilon.
    """
    from onnx import TensorProto, helper

    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "MeanVarianceNormalization":
            nodes.append(node)
            continue
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), [0, 2, 3])
        x, y, p = node.input[0], node.output[0], f"{node.output[0]}__mvn{count}"
        graph.initializer.append(helper.make_tensor(f"{p}_eps", TensorProto.FLOAT, [], [epsilon]))
        nodes += [helper.make_node("ReduceMean", [x], [f"{p}_mean"], axes=axes, keepdims=1),
                  helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_centred"]),
                  helper.make_node("Mul", [f"{p}_centred", f"{p}_centred"], [f"{p}_sq"]),
                  helper.make_node("ReduceMean", [f"{p}_sq"], [f"{p}_var"], axes=axes, keepdims=1),
                  helper.make_node("Add", [f"{p}_var", f"{p}_eps"], [f"{p}_var_eps"]),
                  helper.make_node("Sqrt", [f"{p}_var_eps"], [f"{p}_std"]),
                  helper.make_node("Div", [f"{p}_centred", f"{p}_std"], [y])]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def _free_batch_axis(graph: Any) -> None:
    """Let a model exported with a fixed batch of 1 take any batch (checked by a probe afterwards)."""
    for value in (graph.input[0], *graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    del graph.value_info[:]  # stale intermediate shapes with batch 1; the runtime re-infers them


class OnnxExtractor(_ArrayExtractor):
    """An ONNX model run by onnxruntime on the CPU."""

    backend = "onnxruntime"

    def __init__(self, model_path: str | os.PathLike, preprocessing: Preprocessing | None = None,
                 batch_size: int = 32, threads: int | None = None, flip: bool = False):
        super().__init__(model_path, preprocessing, batch_size, flip)
        onnx = import_optional("onnx", f"{self.model_path}: the onnxruntime backend")
        ort = import_optional("onnxruntime", f"{self.model_path}: the onnxruntime backend")
        try:
            model = onnx.load(str(self.model_path))
        except Exception as exc:  # protobuf raises several types for corrupt files
            raise ModelError(f"model {self.model_path}: not a readable ONNX file ({exc})") from None
        self.patched_mvn = _rewrite_mvn_with_epsilon(model.graph)
        fixed_batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
        _free_batch_axis(model.graph)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # old exports list unused initialisers as warnings, one line each
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.fixed_batch = self._probe_batch(fixed_batch)
        out_shape = self.session.get_outputs()[0].shape
        self._dim = out_shape[-1] if isinstance(out_shape[-1], int) else None

    def _probe_batch(self, fixed_batch: int) -> int | None:
        """None if batches of any size work, else the batch size the graph is hard-wired to."""
        if not fixed_batch:
            return None
        blank = np.zeros((2, 3, *self.input_size), dtype=np.float32)
        try:
            if self.session.run(None, {self.input_name: blank})[0].shape[0] == 2:
                return None
        except Exception:  # any failure means the graph needs its original batch size
            pass
        return fixed_batch

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None:
            return self.session.run(None, {self.input_name: batch})[0]
        step = self.fixed_batch  # only for graphs hard-wired to one batch size
        return np.concatenate([self.session.run(None, {self.input_name: batch[s:s + step]})[0]
                               for s in range(0, len(batch), step)])


class OpenVinoExtractor(_ArrayExtractor):
    """An OpenVINO IR (.xml + .bin) or ONNX model run by the OpenVINO CPU runtime.

    precision "f32" (default) keeps full accuracy; "bf16" is OpenVINO's default on CPUs with bf16 support and
    is faster but moves embeddings by ~1e-2.
    """

    backend = "openvino"

    def __init__(self, model_path: str | os.PathLike, preprocessing: Preprocessing | None = None,
                 batch_size: int = 32, precision: str = "f32", threads: int | None = None, device: str = "CPU",
                 flip: bool = False):
        super().__init__(model_path, preprocessing, batch_size, flip)
        config: dict[str, Any] = openvino_precision(precision)
        ov = import_optional("openvino", f"{self.model_path}: the OpenVINO backend")
        core = openvino_core()
        try:
            model = core.read_model(str(self.model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with C++ messages
            raise ModelError(f"model {self.model_path}: OpenVINO cannot read it ({exc})") from None
        self.fixed_batch = self._make_batch_dynamic(model, ov)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, device, config)
        self.precision = precision
        out_shape = model.outputs[0].get_partial_shape()
        self._dim = out_shape[-1].get_length() if out_shape[-1].is_static else None

    def _make_batch_dynamic(self, model: Any, ov: Any) -> int | None:
        """Intel IRs are saved with batch 1; reshape to a dynamic batch when the graph allows it."""
        name = model.inputs[0].get_any_name()
        try:
            model.reshape({name: ov.PartialShape([-1, 3, *self.input_size])})
            return None
        except Exception:  # reshape fails for graphs with hard-wired batch constants
            shape = model.inputs[0].get_partial_shape()
            return shape[0].get_length() if shape[0].is_static else 1

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None:
            return np.asarray(self.compiled(batch)[0])
        step = self.fixed_batch
        return np.concatenate([np.asarray(self.compiled(batch[s:s + step])[0]) for s in range(0, len(batch), step)])


# ------------------------------------------------------------------------------------------------- factory

def build_extractor(spec: str | os.PathLike, backend: str = "auto", batch_size: int = 32, device: str = "auto",
                    precision: str = "f32", threads: int | None = None,
                    preprocessing: Preprocessing | None = None, flip: bool = False) -> FeatureExtractor:
    """An extractor for a reidkit checkpoint (.pt), an ONNX file or an OpenVINO IR (.xml), by file type.

    backend: "auto" (torch for checkpoints, onnxruntime for .onnx, openvino for .xml), or force one;
    an .onnx file can run on "openvino" too. flip=True: flip test-time augmentation on every backend.
    """
    path = Path(spec)
    if backend not in BACKENDS:
        raise ModelError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise ModelError(f"model {path}: file not found")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES and backend in ("auto", "torch"):
        return TorchExtractor(path, device=device, batch_size=batch_size, flip=flip)
    if suffix == ".onnx" and backend in ("auto", "onnxruntime"):
        return OnnxExtractor(path, preprocessing, batch_size, threads, flip)
    if suffix in (".onnx", ".xml") and backend in ("auto", "openvino"):
        return OpenVinoExtractor(path, preprocessing, batch_size, precision, threads, flip=flip)
    raise ModelError(f"model {path}: cannot run a {suffix or 'suffix-less'} file with backend {backend!r} "
                     f"(checkpoints {'/'.join(TORCH_SUFFIXES)} -> torch; .onnx -> onnxruntime or openvino; "
                     ".xml -> openvino; export checkpoints first with `reidkit export`)")


def model_files(path: Path) -> list[Path]:
    """Files whose bytes define the model (an IR's weights live in the .bin beside the .xml)."""
    files = [path]
    if path.suffix.lower() == ".xml" and path.with_suffix(".bin").is_file():
        files.append(path.with_suffix(".bin"))
    return files


def file_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def describe_extractor(extractor: FeatureExtractor) -> dict[str, Any]:
    """JSON-able identity of an extractor, stored in an index so later adds and searches can be checked."""
    path = Path(getattr(extractor, "model_path", "")).resolve()
    info: dict[str, Any] = {"backend": getattr(extractor, "backend", "?"), "name": extractor.name,
                            "path": str(path), "dim": int(extractor.dim),
                            "input_size": list(extractor.input_size), "flip": bool(getattr(extractor, "flip", False))}
    if path.is_file():
        info["sha256"] = file_digest(model_files(path))
    prep = getattr(extractor, "preprocessing", None)
    if isinstance(prep, Preprocessing):
        info["preprocessing"] = prep.to_dict()
    return info
