"""Gradient inversion: DLG, iDLG, Inverting Gradients (FedSGD and multi-step FedAvg), adaptive attacks.

Layers: :mod:`.victim` (what the server sees), :mod:`.optimize` / :mod:`.adaptive` (attacks, which only read a
:class:`ServerView`), :mod:`fedleak.metrics.image` (evaluation, the only place that sees the ground truth).
"""

from fedleak.lazy import lazy_exports

# Exported names -> their module, imported on first access (PEP 562): ``import fedleak.attacks.inversion.commands``
# (``fedleak invert --help``, ``fedleak --help``) must not import torch through this package.
_EXPORTS = {
    "FeatureReadout": "fedleak.attacks.inversion.adaptive",
    "adaptive_config": "fedleak.attacks.inversion.adaptive",
    "read_out_features": "fedleak.attacks.inversion.adaptive",
    "GradientMatcher": "fedleak.attacks.inversion.costs",
    "layer_weights": "fedleak.attacks.inversion.costs",
    "reference_cost": "fedleak.attacks.inversion.costs",
    "total_variation": "fedleak.attacks.inversion.costs",
    "class_scores": "fedleak.attacks.inversion.labels",
    "infer_labels": "fedleak.attacks.inversion.labels",
    "FeatureTarget": "fedleak.attacks.inversion.optimize",
    "GradientInversion": "fedleak.attacks.inversion.optimize",
    "InversionConfig": "fedleak.attacks.inversion.optimize",
    "Reconstruction": "fedleak.attacks.inversion.optimize",
    "dlg_config": "fedleak.attacks.inversion.optimize",
    "idlg_config": "fedleak.attacks.inversion.optimize",
    "ig_config": "fedleak.attacks.inversion.optimize",
    "invert": "fedleak.attacks.inversion.optimize",
    "milestones": "fedleak.attacks.inversion.optimize",
    "GroundTruth": "fedleak.attacks.inversion.victim",
    "LocalHyper": "fedleak.attacks.inversion.victim",
    "ServerView": "fedleak.attacks.inversion.victim",
    "SideInfo": "fedleak.attacks.inversion.victim",
    "batch_gradient": "fedleak.attacks.inversion.victim",
    "client_update": "fedleak.attacks.inversion.victim",
    "local_update": "fedleak.attacks.inversion.victim",
    "soft_cross_entropy": "fedleak.attacks.inversion.victim",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
