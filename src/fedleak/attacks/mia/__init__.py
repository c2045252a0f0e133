"""Membership inference attacks over a run's stored signals (see ``attacks.py`` for the formulas)."""

from fedleak.attacks.mia.attacks import (
    AGGREGATIONS,
    ATTACKS,
    FedMIARounds,
    aggregate,
    avg_cosine,
    avg_diff,
    avg_norm,
    blackbox_loss,
    fedmia,
    fedmia_i,
    fedmia_ii,
    fedmia_rounds,
    grad_cosine,
    grad_diff,
    grad_norm,
    loss_series,
    resolve_names,
    run_attacks,
    runnable_names,
)
from fedleak.attacks.mia.margin import (  # registers the margin variants into ATTACKS
    MARGIN_ATTACKS,
    blackbox_margin,
    fedmia_i_margin,
    loss_series_margin,
)
from fedleak.attacks.mia.evaluate import can_rotate, evaluate, is_aligned
from fedleak.attacks.mia.evaluation import Evaluation
from fedleak.attacks.mia.names import check_fedmia_options
from fedleak.attacks.mia.result import AttackResult

__all__ = [
    "AGGREGATIONS",
    "ATTACKS",
    "AttackResult",
    "MARGIN_ATTACKS",
    "blackbox_margin",
    "fedmia_i_margin",
    "loss_series_margin",
    "Evaluation",
    "FedMIARounds",
    "aggregate",
    "avg_cosine",
    "avg_diff",
    "avg_norm",
    "blackbox_loss",
    "can_rotate",
    "check_fedmia_options",
    "evaluate",
    "fedmia",
    "fedmia_i",
    "fedmia_ii",
    "fedmia_rounds",
    "grad_cosine",
    "grad_diff",
    "grad_norm",
    "is_aligned",
    "loss_series",
    "resolve_names",
    "run_attacks",
    "runnable_names",
]
