"""Losses for re-identification; build any of them from a config with `build_loss(name, **cfg)`.

Call conventions (each class says which in its `inputs` attribute):
    "logits"            loss(logits, labels)                                       ce
    "embeddings"        loss(embeddings, labels[, indices_tuple])                  metric losses, center
    "embeddings+local"  loss(embeddings, labels, local_features[, indices_tuple])  aligned_triplet
    "students"          loss(logits=[...], embeddings=[...])                       mutual
    "pair_logits"       loss(pair_logits, pair_labels, triplets)                   improved_ranking
    "attribute_logits"  loss(attribute_logits, attribute_targets)                  attribute_wce
    "embeddings+attributes"  loss(embeddings, labels, attributes[, indices_tuple])  attribute_triplet
    "distillation"      loss(student_embeddings, teacher_embeddings)                darkrank, similarity_distillation,
                                                                                   feature_distillation
Metric losses also accept a distance matrix: `loss.forward_distance(dist, labels[, indices_tuple])`.
"""

from ..distance import METRICS, check_metric, pairwise_distance
from . import attributes as _attributes  # noqa: F401  (registers attribute_wce, attribute_triplet)
from .aligned import AlignedTripletLoss
from .base import MetricLoss, reduce_losses
from .classification import CenterLoss, CrossEntropyLabelSmooth
from .distillation import DarkRankLoss, FeatureDistillationLoss, SimilarityDistillationLoss
from .mutual import MutualLearningLoss
from .pair import ContrastiveLoss, MarginSampleMiningLoss
from .quadruplet import QuadrupletLoss
from .ranking import ImprovedRankingLoss
from .registry import build_loss, list_losses, loss_class, loss_parameters, register_loss
from .triplet import BatchHardTripletLoss, ImprovedTripletLoss, SoftHardTripletLoss, TripletLoss

__all__ = [
    "METRICS",
    "AlignedTripletLoss",
    "BatchHardTripletLoss",
    "CenterLoss",
    "ContrastiveLoss",
    "CrossEntropyLabelSmooth",
    "DarkRankLoss",
    "FeatureDistillationLoss",
    "ImprovedRankingLoss",
    "ImprovedTripletLoss",
    "MarginSampleMiningLoss",
    "MetricLoss",
    "MutualLearningLoss",
    "QuadrupletLoss",
    "SimilarityDistillationLoss",
    "SoftHardTripletLoss",
    "TripletLoss",
    "build_loss",
    "check_metric",
    "list_losses",
    "loss_class",
    "loss_parameters",
    "pairwise_distance",
    "reduce_losses",
    "register_loss",
]
