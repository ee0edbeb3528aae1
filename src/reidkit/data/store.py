"""Decode a list of images once into an in-memory uint8 tensor (N, 3, H, W).

ReID crops are small: 7,365 CUHK03 images at 256x128 take 0.7 GB, so training reads memory, not JPEGs.
The decoding itself (thread pool, every unreadable file reported) is `data.images`, the one decoder; this
module keeps the store's historical import path.
"""

from __future__ import annotations

from .images import load_image_tensor

__all__ = ["load_image_tensor"]
