"""Frame sources: video files, frame folders (MOTChallenge img1/) and live streams, one camera each.

Interface (stable; the tracker and pipeline are written against it):
- `Frame`: index (0-based decode order), time in seconds, RGB uint8 HxWx3 array.
- `open_source(spec) -> FrameSource`: iterable of Frame, with `.camera` (name), `.fps`, `.size` (w, h),
  `.num_frames` (None when unknown, e.g. live), `.close()`; a context manager.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    index: int          # 0-based position in the source (MOT files write index + 1)
    time: float         # seconds since the source's start
    image: np.ndarray   # RGB uint8, H x W x 3
