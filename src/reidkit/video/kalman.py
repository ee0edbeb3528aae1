"""Constant-velocity Kalman filter on boxes as (cx, cy, aspect = w / h, h), vectorised over tracks.

State (8,): cx, cy, a, h and their velocities per frame. The noise model is ByteTrack's / DeepSORT's: process and
measurement noise proportional to the box height (a far, small person moves fewer pixels), the aspect nearly
constant. Every function takes a stack of tracks, mean (T, 8) and covariance (T, 8, 8), so one call predicts or
corrects all tracks of a frame at once.

Written here (40 lines of numpy) because filterpy is not a dependency and is one object per track; the
equations are the textbook ones (predict x' = F x, P' = F P F^T + Q; update K = P H^T S^-1, S = H P H^T + R,
x'' = x' + K (z - H x'), P'' = P' - K S K^T), tested against a hand evaluation in tests/test_video_tracker.py.
"""

from __future__ import annotations

import numpy as np

STD_POSITION = 1.0 / 20   # std of position noise, a fraction of the box height
STD_VELOCITY = 1.0 / 160  # std of velocity noise (per frame), a fraction of the box height
STD_ASPECT = 1e-2         # process noise of the aspect ratio
STD_ASPECT_VELOCITY = 1e-5
STD_ASPECT_MEASURED = 1e-1

H = np.hstack([np.eye(4), np.zeros((4, 4))])  # measurement = the first four state entries


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) cx, cy, w / h, h."""
    boxes = np.asarray(boxes, dtype=np.float64)
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    return np.column_stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h])


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(N, >=4) cx, cy, a, h (extra columns ignored) -> (N, 4) x1, y1, x2, y2."""
    cx, cy, a, h = xyah[:, 0], xyah[:, 1], xyah[:, 2], xyah[:, 3]
    w = a * h
    return np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _diag(std: np.ndarray) -> np.ndarray:
    """(T, k) standard deviations -> (T, k, k) diagonal covariances."""
    out = np.zeros(std.shape + (std.shape[1],))
    idx = np.arange(std.shape[1])
    out[:, idx, idx] = std ** 2
    return out


def initiate(measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 4) xyah measurements -> new tracks at rest: mean (T, 8), covariance (T, 8, 8)."""
    z = np.asarray(measurement, dtype=np.float64)
    h = z[:, 3]
    mean = np.hstack([z, np.zeros_like(z)])
    pos, vel = 2 * STD_POSITION * h, 10 * STD_VELOCITY * h
    std = np.column_stack([pos, pos, np.full_like(h, STD_ASPECT), pos,
                           vel, vel, np.full_like(h, 1e-5), vel])
    return mean, _diag(std)


def transition(dt: float) -> np.ndarray:
    """F for a step of `dt` frames: position += dt x velocity."""
    f = np.eye(8)
    f[:4, 4:] = dt * np.eye(4)
    return f


def predict(mean: np.ndarray, cov: np.ndarray, dt: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One prediction step of `dt` frames for every track; process noise grows with dt."""
    if len(mean) == 0:
        return mean, cov
    h = mean[:, 3]
    pos, vel = STD_POSITION * h, STD_VELOCITY * h
    std = np.column_stack([pos, pos, np.full_like(h, STD_ASPECT), pos,
                           vel, vel, np.full_like(h, STD_ASPECT_VELOCITY), vel])
    f = transition(dt)
    return mean @ f.T, f @ cov @ f.T + dt * _diag(std)


def project(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """State -> measurement space: predicted measurement (T, 4) and innovation covariance S (T, 4, 4)."""
    h = mean[:, 3]
    std = np.column_stack([STD_POSITION * h, STD_POSITION * h, np.full_like(h, STD_ASPECT_MEASURED),
                           STD_POSITION * h])
    return mean @ H.T, H @ cov @ H.T + _diag(std)


def update(mean: np.ndarray, cov: np.ndarray, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct every track (row) with its xyah measurement (T, 4)."""
    if len(mean) == 0:
        return mean, cov
    projected, s = project(mean, cov)
    pht = cov @ H.T                                                   # (T, 8, 4)
    gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)  # K = P H^T S^-1 (S symmetric)
    innovation = np.asarray(measurement, dtype=np.float64) - projected
    new_mean = mean + np.einsum("tij,tj->ti", gain, innovation)
    new_cov = cov - gain @ s @ gain.transpose(0, 2, 1)
    return new_mean, new_cov
