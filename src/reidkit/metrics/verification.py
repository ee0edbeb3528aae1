"""Verification metrics for same/different pair decisions: accuracy, confusion matrix, ROC and AUC, with plots.

Scores are "higher = more likely the same person" (e.g. a pair network's log-odds, or a probability); labels
are 1 for same-person pairs and 0 for different-person pairs. A pair is predicted "same" when score > threshold.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..utils import atomic_path
from .rank import MetricInputError

CLASS_NAMES = ("different", "same")


def _scores_and_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if s.ndim != 1 or y.ndim != 1 or s.shape != y.shape:
        raise MetricInputError(f"scores and labels: expected two 1-D arrays of equal length, got shapes {s.shape} "
                               f"and {y.shape}")
    if s.size == 0:
        raise MetricInputError("scores: no pairs to evaluate")
    if np.isnan(s).any():
        raise MetricInputError(f"scores: contains {int(np.isnan(s).sum())} NaN value(s)")
    if not np.isin(y, (0, 1)).all():
        raise MetricInputError(f"labels: expected only 0 (different) and 1 (same), got values {np.unique(y)[:10]}")
    return s, y.astype(np.int64)


def confusion_matrix(scores, labels, threshold: float = 0.0) -> np.ndarray:
    """2x2 counts: rows = true class (different, same), columns = predicted class (score > threshold = same)."""
    s, y = _scores_and_labels(scores, labels)
    predicted = (s > threshold).astype(np.int64)
    return np.bincount(2 * y + predicted, minlength=4).reshape(2, 2)


def pair_accuracy(scores, labels, threshold: float = 0.0) -> float:
    """Fraction of pairs classified correctly."""
    cm = confusion_matrix(scores, labels, threshold)
    return float(np.trace(cm) / cm.sum())


def balanced_accuracy(scores, labels, threshold: float = 0.0) -> float:
    """Mean of the true-positive and true-negative rates (equals accuracy on a balanced pair set)."""
    cm = confusion_matrix(scores, labels, threshold)
    per_class = np.diag(cm) / np.maximum(cm.sum(1), 1)
    return float(per_class.mean())


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf; tied scores form one step.

    Point i counts pairs with score >= thresholds[i] as "same".
    """
    s, y = _scores_and_labels(scores, labels)
    num_pos, num_neg = int(y.sum()), int((1 - y).sum())
    if num_pos == 0 or num_neg == 0:
        raise MetricInputError(f"labels: ROC needs both classes, got {num_pos} same and {num_neg} different pairs")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]  # one point per distinct score
    tps = np.cumsum(y_sorted)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    fpr = np.r_[0.0, fps / num_neg]
    tpr = np.r_[0.0, tps / num_pos]
    return fpr, tpr, np.r_[np.inf, s_sorted[last_of_tie]]


def best_threshold(scores, labels) -> float:
    """The threshold (same = score > threshold) with the highest balanced accuracy on these pairs, midway between
    two consecutive distinct scores. Meant for pairs other than the ones reported (e.g. training identities)."""
    fpr, tpr, thresholds = roc_curve(scores, labels)
    best = int(np.argmax(tpr - fpr))  # balanced accuracy = (tpr + 1 - fpr) / 2
    if best == 0:  # calling every pair "different" is best: threshold at the highest score
        return float(thresholds[1])
    below = thresholds[best + 1] if best + 1 < thresholds.size else thresholds[best] - 1.0
    return float((thresholds[best] + below) / 2)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (trapezoids; equals P(score_same > score_different) with ties counting 1/2)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def verification_report(scores, labels, threshold: float = 0.0) -> dict:
    """Accuracy (%), balanced accuracy (%), AUC, the confusion matrix and pair counts, JSON-ready."""
    cm = confusion_matrix(scores, labels, threshold)
    return {
        "accuracy": 100.0 * float(np.trace(cm) / cm.sum()),
        "balanced_accuracy": 100.0 * balanced_accuracy(scores, labels, threshold),
        "auc": roc_auc(scores, labels),
        "threshold": threshold,
        "confusion_matrix": cm.tolist(),
        "num_same": int(cm[1].sum()),
        "num_different": int(cm[0].sum()),
    }


def _figure(size: tuple[float, float]):
    # Object-oriented matplotlib (Agg): no global pyplot state, safe in threads and tests.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
             title: str = "ROC") -> Path:
    """One ROC curve per entry {label: (fpr, tpr)}; the label should carry the AUC if wanted."""
    if not curves:
        raise MetricInputError("plot_roc: no curve to plot")
    axes = (figure := _figure((4.5, 4.2))).add_subplot()
    for name, (fpr, tpr) in curves.items():
        axes.plot(fpr, tpr, label=name)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.005))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _save(figure, path)


def plot_confusion(matrix: np.ndarray, path: str | os.PathLike, title: str = "Confusion matrix") -> Path:
    """The 2x2 matrix as a picture: counts and row percentages (rows = true class)."""
    cm = np.asarray(matrix)
    if cm.shape != (2, 2):
        raise MetricInputError(f"plot_confusion: expected a 2x2 matrix, got shape {cm.shape}")
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    axes = (figure := _figure((4.2, 3.8))).add_subplot()
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(cm):
        axes.text(j, i, f"{count}\n{100 * rates[i, j]:.1f}%", ha="center", va="center",
                  color="white" if rates[i, j] > 0.5 else "black")
    axes.set(xticks=[0, 1], yticks=[0, 1], xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
             xlabel="predicted", ylabel="true", title=title)
    return _save(figure, path)


def plot_roc_det(scores, labels, path: str | os.PathLike, marks: Mapping[str, float] | None = None,
                 title: str = "Verification") -> Path:
    """ROC (TAR against FAR on a log axis) and DET (FRR against FAR on normal-deviate axes) side by side, with
    each threshold of `marks` ({label: threshold on the score}) drawn as a point on both curves."""
    from scipy.special import ndtri

    fpr, tpr, _ = roc_curve(scores, labels)
    s, y = _scores_and_labels(scores, labels)
    figure = _figure((9.0, 4.2))
    roc, det = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    floor = 0.5 / max(int((1 - y).sum()), 1)  # log axes: a FAR of 0 is drawn at half a false accept
    roc.plot(np.maximum(fpr, floor), tpr, color="tab:blue", label=f"AUC {roc_auc(s, y):.4f}")
    roc.set(xscale="log", xlim=(floor, 1), ylim=(0, 1.005), xlabel="false accept rate (log)",
            ylabel="true accept rate", title=f"{title}: ROC")
    clip = np.clip  # probit axes: keep rates strictly inside (0, 1)
    eps = 1e-6
    det.plot(ndtri(clip(fpr, eps, 1 - eps)), ndtri(clip(1 - tpr, eps, 1 - eps)), color="tab:blue")
    ticks = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95])
    det.set(xticks=ndtri(ticks), yticks=ndtri(ticks), xticklabels=[f"{t:g}" for t in ticks],
            yticklabels=[f"{t:g}" for t in ticks], xlabel="false accept rate", ylabel="false reject rate",
            title=f"{title}: DET", xlim=(ndtri(max(floor, 5e-5)), ndtri(0.99)), ylim=(ndtri(5e-5), ndtri(0.99)))
    for (name, threshold), colour in zip((marks or {}).items(), ("tab:red", "tab:orange", "tab:green",
                                                                 "tab:purple", "tab:brown"), strict=False):
        far = float(np.mean(s[y == 0] > threshold))
        tar = float(np.mean(s[y == 1] > threshold))
        label = f"{name}: t={threshold:.3g}, TAR {tar:.3f}"
        roc.plot([max(far, floor)], [tar], "o", color=colour, label=label)
        det.plot([ndtri(clip(far, eps, 1 - eps))], [ndtri(clip(1 - tar, eps, 1 - eps))], "o", color=colour)
    for axes in (roc, det):
        axes.grid(alpha=0.3)
    roc.legend(loc="lower right", fontsize=7)
    return _save(figure, path)
