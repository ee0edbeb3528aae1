"""Verification operating points and calibration quality: thresholds at a false accept rate, TAR at FAR, the DET
curve and the expected calibration error (ECE) of same-person probabilities.

Same conventions as `verification.py`: scores are "higher = more likely the same person", labels 1 = same,
0 = different, and a pair is accepted as "same" when score > threshold. Pure numpy (no model, no I/O).
"""

from __future__ import annotations

import numpy as np

from .rank import MetricInputError
from .verification import _scores_and_labels, roc_curve

STANDARD_FARS = (1e-2, 1e-3, 1e-4)


def threshold_at_far(scores, labels, far: float) -> float:
    """The lowest threshold whose false accept rate (different-person pairs with score > threshold) is <= far.

    With n different-person pairs, m = floor(far * n) of them may be accepted: the threshold is the (m+1)-th
    highest different-person score, so exactly the m above it pass (fewer when scores tie). far * n < 1 cannot
    be measured on these pairs: the highest different-person score is returned (FAR 0 on them).
    """
    s, y = _scores_and_labels(scores, labels)
    if not 0.0 < far < 1.0:
        raise MetricInputError(f"far={far}: must be in (0, 1)")
    negatives = np.sort(s[y == 0])[::-1]
    if negatives.size == 0:
        raise MetricInputError("labels: no different-person pairs to measure a false accept rate on")
    allowed = int(np.floor(far * negatives.size + 1e-9))
    return float(negatives[min(allowed, negatives.size - 1)])


def tar_at_far(scores, labels, far: float) -> tuple[float, float]:
    """(true accept rate, threshold) at the threshold of `threshold_at_far`."""
    s, y = _scores_and_labels(scores, labels)
    threshold = threshold_at_far(s, y, far)
    positives = s[y == 1]
    if positives.size == 0:
        raise MetricInputError("labels: no same-person pairs to measure a true accept rate on")
    return float(np.mean(positives > threshold)), threshold


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false accept rate, false reject rate, thresholds): the ROC's points as error rates (FRR = 1 - TPR)."""
    fpr, tpr, thresholds = roc_curve(scores, labels)
    return fpr, 1.0 - tpr, thresholds


def reliability_bins(probabilities, labels, num_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width probability bins: per bin the count, mean predicted P(same) and observed fraction same.

    Bin b holds p in [b/B, (b+1)/B) (the last bin includes 1.0). Empty bins have count 0 and NaN means.
    """
    p, y = _scores_and_labels(probabilities, labels)
    if p.min() < 0.0 or p.max() > 1.0:
        raise MetricInputError(f"probabilities: expected values in [0, 1], got [{p.min():.4g}, {p.max():.4g}]")
    if num_bins < 1:
        raise MetricInputError(f"num_bins={num_bins}: must be >= 1")
    index = np.minimum((p * num_bins).astype(np.int64), num_bins - 1)
    counts = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, weights=p, minlength=num_bins) / counts
        frac = np.bincount(index, weights=y, minlength=num_bins) / counts
    return {"count": counts, "mean_probability": mean_p, "fraction_same": frac}


def expected_calibration_error(probabilities, labels, num_bins: int = 15) -> float:
    """ECE of P(same): sum over bins of (bin size / n) * |observed fraction same - mean predicted P(same)|.

    Binary reliability over the positive class (Naeini et al. 2015; Guo et al. 2017 use the same binning on the
    top-class confidence). 0 = perfectly calibrated; a constant 0.5 on a balanced set also scores 0, so read it
    beside AUC.
    """
    bins = reliability_bins(probabilities, labels, num_bins)
    used = bins["count"] > 0
    gaps = np.abs(bins["fraction_same"][used] - bins["mean_probability"][used])
    return float(np.sum(bins["count"][used] * gaps) / bins["count"].sum())
