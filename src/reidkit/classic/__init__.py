"""Hand-crafted features and learned metrics of the pre-deep re-id literature (LOMO, XQDA)."""

from .lomo import LOMO
from .methods import CLASSIC_METHODS, classic_split_features
from .xqda import XQDA

__all__ = ["CLASSIC_METHODS", "LOMO", "XQDA", "classic_split_features"]
