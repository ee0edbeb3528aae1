"""reidkit: person re-identification toolkit.

High-level flow (data -> model -> training -> inference -> metrics), as in the README:
    >>> from reidkit import Extractor, TrainConfig, evaluate_rank, load_dataset, train_embedding
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import TYPE_CHECKING

try:  # pyproject.toml is the one place the version is written
    __version__ = _metadata.version("reidkit")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["Extractor", "TrainConfig", "build_model", "evaluate_rank", "load_dataset", "train_embedding"]

if TYPE_CHECKING:
    from .data import load_dataset
    from .inference.extractor import Extractor
    from .metrics import evaluate_rank
    from .models import build_model
    from .training.config import TrainConfig
    from .training.embedding import train_embedding

_LAZY = {
    "Extractor": "reidkit.inference.extractor",
    "TrainConfig": "reidkit.training.config",
    "train_embedding": "reidkit.training.embedding",
    "build_model": "reidkit.models",
    "evaluate_rank": "reidkit.metrics",
    "load_dataset": "reidkit.data",
    "verify": "reidkit.analysis",
    "cluster": "reidkit.analysis",
    "explain": "reidkit.analysis",
}


def __getattr__(name: str):
    # Lazy so that `import reidkit` (and the CLI start-up) does not pay for torch/matplotlib imports.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reidkit' has no attribute {name!r}")
