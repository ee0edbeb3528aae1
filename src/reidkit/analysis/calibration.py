"""Calibration of a verification score into P(same person), and the operating thresholds that go with it.

Platt scaling (the default) fits P(same) = sigmoid(slope * score + intercept) with scikit-learn's
`LogisticRegression` (no regularisation: two parameters and thousands of pairs need none). It is smooth and
strictly monotone, extrapolates to scores outside the validation range (two identical crops, cosine 1.0, get a
probability near 1 rather than the last bin's value) and cannot overfit a few hundred positive pairs. Isotonic
regression (`IsotonicRegression`) makes no assumption on the score distribution's shape and can fit a non-logistic
reliability curve better, but it is a step function: ties of probability, flat 0/1 ends, and it needs more pairs.
Both were measured on CUHK03-NP validation pairs (docs/verify_cluster.md).

The calibration is fitted on a *balanced* pair set (every same-person pair and as many different-person pairs),
so the probability assumes even prior odds; the FAR thresholds are measured on many more different-person pairs.
The record is plain data (lists, floats, strings) so it lives in a checkpoint's `extra["calibration"]` (read with
`weights_only=True`) or, for ONNX / OpenVINO models, in a `<model>.calibration.json` sidecar.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import load_checkpoint, update_checkpoint_extra
from ..data.pairs import PairSet, balanced_pairs, positive_pairs
from ..errors import ConfigError, DataError, ModelError
from ..metrics.calibration import STANDARD_FARS, threshold_at_far
from ..utils import atomic_write_json

METHODS = ("platt", "isotonic")
CALIBRATION_KEY = "calibration"
FORMAT = "reidkit-calibration-1"
# FAR grid stored with the calibration so that `verify --far F` works for any F inside it (log interpolation).
FAR_GRID = np.logspace(-5, np.log10(0.5), 45)


@dataclass
class Calibrator:
    """A fitted monotone map score -> P(same). Platt: (slope, intercept); isotonic: knots (x, y), linear between."""

    method: str
    slope: float = 0.0
    intercept: float = 0.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    def predict(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.slope * s + self.intercept)))
        return np.interp(s, self.knots_x, self.knots_y)  # IsotonicRegression.predict with out_of_bounds="clip"

    def score_at(self, probability: float) -> float:
        """The score where P(same) crosses `probability` (the decision threshold of a probability cut)."""
        if self.method == "platt":
            return float((np.log(probability / (1 - probability)) - self.intercept) / self.slope)
        above = np.flatnonzero(np.asarray(self.knots_y) >= probability)
        return float(self.knots_x[above[0]]) if above.size else float(self.knots_x[-1])

    def to_dict(self) -> dict[str, Any]:
        if self.method == "platt":
            return {"method": "platt", "slope": self.slope, "intercept": self.intercept}
        return {"method": "isotonic", "x": list(self.knots_x), "y": list(self.knots_y)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        if data.get("method") == "platt":
            return cls("platt", float(data["slope"]), float(data["intercept"]))
        if data.get("method") == "isotonic":
            return cls("isotonic", knots_x=tuple(map(float, data["x"])), knots_y=tuple(map(float, data["y"])))
        raise ModelError(f"calibration: unknown method {data.get('method')!r} (expected one of {METHODS})")


def fit_calibrator(scores, labels, method: str = "platt") -> Calibrator:
    """Fit Platt scaling or isotonic regression (scikit-learn) of labels (1 = same) on scores."""
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if s.size != y.size or len(np.unique(y)) != 2:
        raise DataError(f"calibration needs same and different pairs: got {int(np.sum(y == 1))} same and "
                        f"{int(np.sum(y == 0))} different")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-10, max_iter=200).fit(s[:, None], y)
        return Calibrator("platt", float(model.coef_[0, 0]), float(model.intercept_[0]))
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    return Calibrator("isotonic", knots_x=tuple(map(float, model.X_thresholds_)),
                      knots_y=tuple(map(float, model.y_thresholds_)))


# ------------------------------------------------------------------------------------------------ pairs

def random_negatives(pids, camids, count: int, rng: np.random.Generator, cross_camera: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` distinct unordered different-identity pairs (i < j), drawn uniformly without replacement (all
    of them when fewer exist); cross_camera keeps only pairs seen by two cameras, like the positives."""
    p, c = np.asarray(pids), np.asarray(camids)
    n = p.size
    if n <= 4000:  # small sets: enumerate every valid pair (<= 8M) and draw without replacement
        i, j = np.triu_indices(n, k=1)
        ok = (p[i] != p[j]) & ((c[i] != c[j]) if cross_camera else True)
        keys = (i * n + j)[ok]
        keys = keys[rng.choice(keys.size, min(count, keys.size), replace=False)] if keys.size > count else keys
    else:  # rejection sampling in vectorised rounds, each drawing 2x what is missing
        keys = np.zeros(0, dtype=np.int64)
        for _ in range(20):
            missing = count - keys.size
            if missing <= 0:
                break
            i, j = rng.integers(0, n, 2 * missing + 16), rng.integers(0, n, 2 * missing + 16)
            ok = (p[i] != p[j]) & ((c[i] != c[j]) if cross_camera else True)
            fresh = np.setdiff1d(np.unique(np.minimum(i, j)[ok] * n + np.maximum(i, j)[ok]), keys)
            keys = np.r_[keys, rng.permutation(fresh)[:missing]]
    keys = np.sort(keys)
    return keys // n, keys % n


def validation_pairs(pids, camids, seed: int = 0, num_negatives: int = 100_000, cross_camera: bool = True
                     ) -> tuple[PairSet, PairSet]:
    """(fit pairs, threshold pairs) from labelled images.

    Fit pairs: every same-identity pair (cross-camera when `cross_camera`) plus one random different-identity pair
    per positive (`data.pairs.balanced_pairs`, seeded): balanced. Threshold pairs: every positive plus up to
    `num_negatives` distinct random different-identity pairs, so FAR 1e-3/1e-4 rest on enough false accepts.
    """
    p, c = np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64)
    if np.unique(p).size < 2:
        raise DataError(f"calibration needs at least 2 identities, got {np.unique(p).size}")
    rng = np.random.default_rng(seed)
    fit = balanced_pairs(p, c, rng, cross_camera)
    pos_first, pos_second = positive_pairs(p, c, cross_camera)
    neg_first, neg_second = random_negatives(p, c, num_negatives, rng, cross_camera)
    label = np.r_[np.ones(pos_first.size), np.zeros(neg_first.size)].astype(np.int64)
    return fit, PairSet(np.r_[pos_first, neg_first], np.r_[pos_second, neg_second], label)


# ------------------------------------------------------------------------------------------------ record

def far_thresholds(scores, labels) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Thresholds at the standard FARs ({"0.01": t, ...}) and on the stored FAR grid (for --far interpolation)."""
    standard = {f"{far:g}": threshold_at_far(scores, labels, far) for far in STANDARD_FARS}
    num_negatives = int(np.sum(np.asarray(labels) == 0))
    grid = [float(f) for f in FAR_GRID if f * num_negatives >= 1]  # measurable FARs only
    return standard, {"far": grid, "threshold": [threshold_at_far(scores, labels, f) for f in grid]}


def threshold_for_far(record: dict[str, Any], far: float) -> float:
    """The score threshold at `far` from a calibration record: stored exactly for 1e-2/1e-3/1e-4, else
    interpolated on log(FAR) over the stored grid; a FAR outside the measured range is refused."""
    exact = record["thresholds"].get(f"{far:g}")
    if exact is not None:
        return float(exact)
    grid = record["far_curve"]
    fars, thresholds = np.asarray(grid["far"]), np.asarray(grid["threshold"])
    if fars.size == 0 or not fars[0] <= far <= fars[-1]:
        raise ConfigError(f"--far {far:g}: outside the FAR range measured at calibration "
                          f"({fars[0]:g} .. {fars[-1]:g})" if fars.size else f"--far {far:g}: no FAR curve stored")
    return float(np.interp(np.log(far), np.log(fars), thresholds))


def calibration_sidecar(model_path: str | os.PathLike) -> Path:
    """`model.onnx` / `model.xml` -> `model.calibration.json` (the export's `model.json` holds preprocessing)."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.calibration.json")


def is_checkpoint(model_path: str | os.PathLike) -> bool:
    return Path(model_path).suffix.lower() in (".pt", ".pth", ".ckpt")


def load_calibration(model_path: str | os.PathLike, payload: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The stored calibration record of a model, or None: in the checkpoint, else in the sidecar JSON."""
    path = Path(model_path)
    if is_checkpoint(path):
        payload = payload if payload is not None else load_checkpoint(path)
        record = (payload.get("extra") or {}).get(CALIBRATION_KEY)
    else:
        side = calibration_sidecar(path)
        if not side.is_file():
            return None
        try:
            record = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{side}: unreadable calibration sidecar ({exc})") from None
    if record is not None and record.get("format") != FORMAT:
        raise ModelError(f"{model_path}: calibration record of an unknown format {record.get('format')!r}")
    return record


def store_calibration(model_path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write the record into the checkpoint (atomic rewrite of the file) or the sidecar JSON; returns where."""
    path = Path(model_path)
    if is_checkpoint(path):
        update_checkpoint_extra(path, CALIBRATION_KEY, record)
        return path
    side = calibration_sidecar(path)
    atomic_write_json(record, side)
    return side
