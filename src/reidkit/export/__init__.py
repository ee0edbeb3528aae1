"""Deployment exports: ONNX (dynamic batch) and OpenVINO IR, verified against PyTorch.

>>> from reidkit.export import export_model
Exports are lazy so that `reidkit.cli.export` (imported when the CLI parser is built) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .onnx import ExportReport, export_model

__all__ = ["ExportReport", "export_model"]


def __getattr__(name: str):
    if name in __all__:
        from . import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
