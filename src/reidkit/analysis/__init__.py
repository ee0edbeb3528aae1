"""Analysis of what a model sees: 1:1 verification (a calibrated probability and a threshold at a chosen FAR),
N:N clustering of unlabelled crops into identities, and pictures that explain why two crops match.

>>> import reidkit
>>> reidkit.verify("a.jpg", "b.jpg", model="best.pt")               # VerifyResult(probability, same, threshold, ...)
>>> reidkit.cluster("crops/", model="best.pt", out="clusters/")     # ClusterResult(paths, labels, ...)
>>> reidkit.explain("a.jpg", "b.jpg", model="best.pt", out="why.png")  # ExplainResult(dimensions, maps, ...)
"""

from __future__ import annotations

from .cluster import ClusterParams, ClusterResult, cluster, cluster_features, clustering_scores
from .explain import ExplainResult, explain
from .verify import CalibrationResult, VerifyResult, calibrate, verify

__all__ = ["CalibrationResult", "ClusterParams", "ClusterResult", "ExplainResult", "VerifyResult", "calibrate",
           "cluster", "cluster_features", "clustering_scores", "explain", "verify"]
