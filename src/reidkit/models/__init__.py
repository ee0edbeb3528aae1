"""Models: `build_model(name, **cfg)` builds any registered model (see `list_models()`)."""

from .registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
