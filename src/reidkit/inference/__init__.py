"""Inference: embed images (paths, PIL images or HxWx3 arrays, in memory) with a checkpoint or an exported model.

>>> from reidkit.inference import build_extractor
>>> ext = build_extractor("runs/x/best.pt")         # or model.onnx / model.xml (onnxruntime / OpenVINO)
>>> feats = ext.embed(["a.jpg", crop_array])        # (N, D) float32, L2-normalised

This is the package's public API (search, export and re-ranking use only these names). Exports are lazy so that
importing `reidkit.inference` for one name does not load every runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backends import (
        BACKENDS,
        DEPLOY_INSTALL,
        INTEL_PRESETS,
        FeatureExtractor,
        OnnxExtractor,
        OpenVinoExtractor,
        Preprocessing,
        TorchExtractor,
        build_extractor,
        describe_extractor,
        import_optional,
        l2_normalize,
        sidecar_path,
    )
    from .extractor import Extractor, extract_split_features
    from .features import embed_tensor, embed_tensor_local

_LAZY = {
    **dict.fromkeys(("BACKENDS", "DEPLOY_INSTALL", "INTEL_PRESETS", "FeatureExtractor", "OnnxExtractor",
                     "OpenVinoExtractor", "Preprocessing", "TorchExtractor", "build_extractor", "describe_extractor",
                     "import_optional", "l2_normalize", "sidecar_path"), "backends"),
    "Extractor": "extractor", "extract_split_features": "extractor",
    "embed_tensor": "features", "embed_tensor_local": "features",
}
__all__ = [
    "BACKENDS", "DEPLOY_INSTALL", "INTEL_PRESETS", "Extractor", "FeatureExtractor", "OnnxExtractor",
    "OpenVinoExtractor", "Preprocessing", "TorchExtractor", "build_extractor", "describe_extractor", "embed_tensor",
    "embed_tensor_local", "extract_split_features", "import_optional", "l2_normalize", "sidecar_path",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
