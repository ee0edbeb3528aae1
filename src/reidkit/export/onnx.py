"""Export a reidkit checkpoint to ONNX (dynamic batch) or OpenVINO IR, verified against PyTorch.

`export_model("best.pt", fmt="onnx")` writes `best.onnx` plus `best.json`, the sidecar that tells
`OnnxExtractor` / `OpenVinoExtractor` the preprocessing (input size, RGB, /255, mean/std) and the embedding
size. The graph takes float32 (N, 3, H, W) normalised images and returns the L2-normalised (N, D) embedding,
exactly what the PyTorch model returns in eval mode. Nothing is written to the final paths unless the exported
model matches PyTorch within `tolerance` on the verification images.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import is_image_name, load_image_tensor
from ..errors import ModelError
from ..inference import (
    OnnxExtractor,
    OpenVinoExtractor,
    Preprocessing,
    TorchExtractor,
    import_optional,
    sidecar_path,
)
from ..utils import atomic_write_json

FORMATS = ("onnx", "openvino")
SIDECAR_FORMAT = "reidkit-export-1"
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"


@dataclass
class ExportReport:
    path: str
    sidecar: str
    format: str
    dim: int
    max_abs_diff: float
    num_images: int
    verified_on: str

    def summary(self) -> str:
        return (f"wrote {self.path} ({self.format}, {self.dim}-d) and {self.sidecar}\n"
                f"verified against PyTorch on {self.num_images} {self.verified_on} images: "
                f"max abs difference {self.max_abs_diff:.2e}")


def verification_images(source: str | os.PathLike | None, count: int, size: tuple[int, int],
                        seed: int = 0) -> tuple[list[Any], str]:
    """Up to `count` images from a folder (sorted, recursive) or, without a source, seeded random-noise images."""
    if source is None:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8) for _ in range(count)], "random-noise"
    folder = Path(source)
    if folder.is_file():
        return [str(folder)], "real"
    paths = sorted(os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if is_image_name(n))
    if not paths:
        raise ModelError(f"--verify-images {folder}: no images found")
    return paths[:count], "real"


class _EmbeddingOnly(torch.nn.Module):
    """Guarantees the exported graph has one (N, D) output even if the model returns a dict in some mode."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ModelError(f"model returns {type(out).__name__} in eval mode; export needs an (N, D) tensor")
        return out


def _require_opset(opset: int) -> None:
    """ModelError naming --opset unless the TorchScript exporter used here can write that opset."""
    from torch.onnx import _constants  # the exporter's own bounds; private, hence the fallbacks

    low = getattr(_constants, "ONNX_MIN_OPSET", 7)
    high = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 17))
    if not low <= opset <= high:
        raise ModelError(f"--opset {opset}: the ONNX exporter supports opsets {low}..{high}")


def _trace_to_onnx(module: torch.nn.Module, dummy: tuple[torch.Tensor, ...], path: str | os.PathLike, opset: int,
                   inputs: list[str], outputs: list[str]) -> None:
    """Trace `module` on `dummy` into ONNX with every input and output batch axis dynamic."""
    _require_opset(opset)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo export, which needs onnxscript (not a
        # dependency); it still produces standard graphs that both runtimes accept.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module.eval(), dummy, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=outputs, do_constant_folding=True,
                              dynamic_axes={name: {0: "batch"} for name in inputs + outputs})
        except OSError as error:  # the exporter's own writes (full disk, ...) do not say which file
            if error.filename is not None:
                raise
            raise OSError(error.errno, error.strerror, str(path)) from error


def _torch_to_onnx(model: torch.nn.Module, input_size: tuple[int, int], path: Path, opset: int) -> None:
    dummy = (torch.randn(2, 3, *input_size),)
    try:
        _trace_to_onnx(_EmbeddingOnly(model), dummy, path, opset, [INPUT_NAME], [OUTPUT_NAME])
    except torch.onnx.OnnxExporterError as error:  # an operator the model uses has no form in this (old) opset
        reason = str(error).split("[Caused by", 1)[0].strip()
        raise ModelError(f"--opset {opset}: {type(model).__name__} cannot be exported at this opset: {reason}"
                         ) from None


def export_pair_onnx(model: torch.nn.Module, path: str | os.PathLike, opset: int = 17) -> None:
    """A pair network's forward(x1, x2) -> (N, 2) logits as ONNX (inputs "x1", "x2", output "logits"), batch axis
    dynamic. IDLA records its traceable neighbourhood-difference path; verify the result on the target runtime."""
    dummy = (torch.zeros(2, 3, *model.input_size), torch.zeros(2, 3, *model.input_size))
    try:
        _trace_to_onnx(model, dummy, path, opset, ["x1", "x2"], ["logits"])
    except torch.onnx.OnnxExporterError as error:  # e.g. MLS: its STN's affine_grid and uneven adaptive pooling
        reason = str(error).split("[Caused by", 1)[0].strip()
        raise ModelError(f"export_pair_onnx: {type(model).__name__} cannot be exported to ONNX opset {opset}: "
                         f"{reason}") from None


def _sidecar(torch_ext: TorchExtractor, checkpoint: Path, out: Path, opset: int,
             verification: dict[str, Any]) -> dict[str, Any]:
    """The sidecar shared by `model.onnx` and `model.xml` of one stem; verification results kept per format."""
    source = str(checkpoint.resolve())
    previous: dict[str, Any] = {}
    if sidecar_path(out).is_file():
        try:
            previous = json.loads(sidecar_path(out).read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
    verified = previous.get("verified", {}) if previous.get("source_checkpoint") == source else {}
    return {"format": SIDECAR_FORMAT, "preprocessing": torch_ext.preprocessing.to_dict(), "dim": torch_ext.dim,
            "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "output": "l2-normalised", "opset": opset,
            "source_checkpoint": source, "verified": verified | verification}


def _max_abs_diff(reference: np.ndarray, other: np.ndarray) -> float:
    if reference.shape != other.shape:
        raise ModelError(f"exported model gives shape {other.shape}, PyTorch {reference.shape}")
    return float(np.abs(reference - other).max()) if reference.size else 0.0


def _convert_to_openvino(onnx_path: Path, xml_path: Path) -> None:
    ov = import_optional("openvino", "export --format openvino")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def export_model(checkpoint: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None,
                 opset: int = 17, verify_images: str | os.PathLike | None = None, num_verify: int = 32,
                 tolerance: float = 1e-4, batch_size: int = 16) -> ExportReport:
    """Export `checkpoint` to `fmt` ("onnx" or "openvino"); see the module docstring.

    Verification embeds up to `num_verify` images (from `verify_images`, else random noise) with PyTorch and
    with the exported model in batches of `batch_size` (so a last, smaller batch exercises the dynamic batch
    axis) and raises ModelError if any embedding value differs by more than `tolerance`.
    """
    if fmt not in FORMATS:
        raise ModelError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    for module in ("onnx", "onnxruntime") if fmt == "onnx" else ("onnx", "openvino"):  # before any work
        import_optional(module, f"export --format {fmt}")
    _require_opset(opset)
    checkpoint = Path(checkpoint)
    torch_ext = TorchExtractor(checkpoint, device="cpu", batch_size=batch_size)
    out = Path(out) if out else checkpoint.with_suffix(".onnx" if fmt == "onnx" else ".xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    images, kind = verification_images(verify_images, num_verify, torch_ext.input_size)
    pixels = load_image_tensor(images, torch_ext.input_size, torch_ext.resize)  # both runtimes see the same pixels
    reference = torch_ext.embed_uint8(pixels)
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.export-", dir=out.parent))
    try:
        onnx_path = work / "model.onnx"
        _torch_to_onnx(torch_ext.model, torch_ext.input_size, onnx_path, opset)
        exported = _verify(work, onnx_path, fmt, torch_ext.preprocessing, pixels, batch_size)
        diff = _max_abs_diff(reference, exported)
        if not diff <= tolerance:  # NaN compares false both ways: a NaN difference is a failure, never a pass
            raise ModelError(f"export of {checkpoint}: {fmt} output differs from PyTorch by {diff:.2e} "
                             f"(tolerance {tolerance:.0e}; NaN means the exported model gives NaN); not written")
        _move_into_place(work, fmt, out)
        verification = {fmt: {"file": out.name, "max_abs_diff": diff, "images": f"{len(images)} {kind}"}}
        atomic_write_json(_sidecar(torch_ext, checkpoint, out, opset, verification), sidecar_path(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportReport(str(out), str(sidecar_path(out)), fmt, torch_ext.dim, diff, len(images), kind)


def _verify(work: Path, onnx_path: Path, fmt: str, prep: Preprocessing, pixels: torch.Tensor,
            batch_size: int) -> np.ndarray:
    if fmt == "onnx":
        return OnnxExtractor(onnx_path, prep, batch_size=batch_size).embed_uint8(pixels)
    _convert_to_openvino(onnx_path, work / "model.xml")
    return OpenVinoExtractor(work / "model.xml", prep, batch_size=batch_size, precision="f32").embed_uint8(pixels)


def _move_into_place(work: Path, fmt: str, out: Path) -> None:
    """Rename the verified files over the targets (an IR's .bin before its .xml, so the .xml never dangles)."""
    if fmt == "onnx":
        os.replace(work / "model.onnx", out)
        return
    os.replace(work / "model.bin", out.with_suffix(".bin"))
    os.replace(work / "model.xml", out)


def read_sidecar(model_path: str | os.PathLike) -> dict[str, Any]:
    path = sidecar_path(model_path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read export sidecar ({exc})") from None


def report_dict(report: ExportReport) -> dict[str, Any]:
    return asdict(report)
