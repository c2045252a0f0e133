"""Gradient inversion: DLG, iDLG, Inverting Gradients (FedSGD and multi-step FedAvg), adaptive attacks.

Layers: :mod:`.victim` (what the server sees), :mod:`.optimize` / :mod:`.adaptive` (attacks, which only read a
:class:`ServerView`), :mod:`fedleak.metrics.image` (evaluation, the only place that sees the ground truth).
"""

from fedleak.attacks.inversion.adaptive import FeatureReadout, adaptive_config, read_out_features
from fedleak.attacks.inversion.costs import GradientMatcher, layer_weights, reference_cost, total_variation
from fedleak.attacks.inversion.labels import class_scores, infer_labels
from fedleak.attacks.inversion.optimize import (
    FeatureTarget,
    GradientInversion,
    InversionConfig,
    Reconstruction,
    dlg_config,
    idlg_config,
    ig_config,
    invert,
    milestones,
)
from fedleak.attacks.inversion.victim import (
    GroundTruth,
    LocalHyper,
    ServerView,
    SideInfo,
    batch_gradient,
    client_update,
    local_update,
    soft_cross_entropy,
)

__all__ = [
    "FeatureReadout",
    "FeatureTarget",
    "GradientInversion",
    "GradientMatcher",
    "GroundTruth",
    "InversionConfig",
    "LocalHyper",
    "Reconstruction",
    "ServerView",
    "SideInfo",
    "adaptive_config",
    "batch_gradient",
    "class_scores",
    "client_update",
    "dlg_config",
    "idlg_config",
    "ig_config",
    "infer_labels",
    "invert",
    "layer_weights",
    "local_update",
    "milestones",
    "read_out_features",
    "reference_cost",
    "soft_cross_entropy",
    "total_variation",
]
