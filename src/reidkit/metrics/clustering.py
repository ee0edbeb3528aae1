"""Scores of a clustering against true identities: pairwise precision / recall / F, B-cubed precision / recall / F
(Bagga & Baldwin 1998), NMI and ARI (scikit-learn's), cluster counts.

Unassigned items (label -1, e.g. DBSCAN noise) count as singleton clusters, as evaluations of person clustering
count them. The pairwise and B-cubed scores come from the sparse contingency table (never a loop over pairs).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def singletons(labels) -> np.ndarray:
    """-1 (unassigned) becomes a cluster of its own per item."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    noise = labels < 0
    labels[noise] = labels.max(initial=0) + 1 + np.arange(noise.sum())
    return labels


def _contingency(true_labels, predicted) -> tuple[sp.csr_array, np.ndarray, np.ndarray, np.ndarray]:
    """(joint counts true x predicted, true sizes, predicted sizes, row index of each stored count)."""
    t = np.unique(np.asarray(true_labels), return_inverse=True)[1].ravel()
    p = np.unique(singletons(predicted), return_inverse=True)[1].ravel()
    joint = sp.csr_array((np.ones(t.size), (t, p)))
    joint.sum_duplicates()
    rows = np.repeat(np.arange(joint.shape[0]), np.diff(joint.indptr))
    return joint, np.bincount(t).astype(np.float64), np.bincount(p).astype(np.float64), rows


def f_score(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def bcubed(true_labels, predicted) -> tuple[float, float, float]:
    """B-cubed (precision, recall, F): per item, the share of its cluster that is its identity and the share of its
    identity that is in its cluster, averaged over items."""
    joint, a, b, rows = _contingency(true_labels, predicted)
    n = a.sum()
    precision = float(np.sum(joint.data ** 2 / b[joint.indices]) / n)
    recall = float(np.sum(joint.data ** 2 / a[rows]) / n)
    return precision, recall, f_score(precision, recall)


def bcubed_f(true_labels, predicted) -> float:
    """B-cubed F alone (what parameter choice needs; `clustering_scores` gives every score)."""
    return bcubed(true_labels, predicted)[2]


def pairwise(true_labels, predicted) -> tuple[float, float, float]:
    """Pairwise (precision, recall, F) over unordered pairs put together / truly together."""
    joint, a, b, _ = _contingency(true_labels, predicted)
    n_ij = joint.data
    same_both = float(np.sum(n_ij * (n_ij - 1)) / 2)
    same_pred = float(np.sum(b * (b - 1)) / 2)
    same_true = float(np.sum(a * (a - 1)) / 2)
    precision = same_both / same_pred if same_pred else 1.0
    recall = same_both / same_true if same_true else 1.0
    return precision, recall, f_score(precision, recall)


def clustering_scores(true_labels, predicted) -> dict[str, float]:
    """Every score: pairwise and B-cubed precision / recall / F, NMI and ARI (scikit-learn), the number of clusters
    (unassigned not counted), of unassigned items and of true identities."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t, raw = np.asarray(true_labels), np.asarray(predicted)
    p = singletons(raw)
    pw_p, pw_r, pw_f = pairwise(t, raw)
    bc_p, bc_r, bc_f = bcubed(t, raw)
    return {"pairwise_precision": pw_p, "pairwise_recall": pw_r, "pairwise_f": pw_f,
            "bcubed_precision": bc_p, "bcubed_recall": bc_r, "bcubed_f": bc_f,
            "nmi": float(normalized_mutual_info_score(t, p)), "ari": float(adjusted_rand_score(t, p)),
            "num_clusters": int(np.unique(raw[raw >= 0]).size), "num_unassigned": int(np.sum(raw < 0)),
            "num_true": int(np.unique(t).size)}
