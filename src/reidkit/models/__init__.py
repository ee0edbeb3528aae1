"""Models: `build_model(name, **cfg)` builds any registered model (see `list_models()`)."""

from .aligned import LocalBranch
from .backbones import build_backbone, list_backbones
from .backbones.pretrained import LoadReport, load_user_weights
from .pair.ncc import NormalizedCrossCorrelation
from .registry import build_model, list_models, register_model

__all__ = ["LoadReport", "LocalBranch", "build_backbone", "build_model", "list_backbones", "list_models",
           "NormalizedCrossCorrelation", "load_user_weights",
           "register_model"]
