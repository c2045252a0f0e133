"""FL defenses against membership inference, selected in the config's ``defense`` section.

Importing this package registers every defense with :func:`fedleak.fl.hooks.register_defense`:

===================  ==========================================================================================
``perturb``          Gaussian noise on the upload; ``clip: C`` turns it into client-level DP with an RDP accountant
``dpsgd``            local DP-SGD (per-sample clipping + noise) with sample-level (ε, δ)
``sparse``           top-k of |Δ| per tensor (> 1,000 entries) or over all entries
``quant``            b-bit quantisation of Δ, floor (original) or stochastic (unbiased) rounding
``mixup``            MixUp on inputs and labels (``labels_only`` = the original's label-only version)
``augment``          crop / flips / rotation / colour jitter recipe in plain torch
``sampling``         a fraction p of the client's data per round (redrawn or fixed)
``augment+sampling`` both
``instahide``        k-sample mixing, one random sign mask per encoded image, soft labels
===================  ==========================================================================================

Gradient transforms for the inversion attacks live in ``fedleak.defenses.gradient`` (a separate API).
"""

from fedleak.defenses import data, dpsgd, update  # noqa: F401  (registration on import)
from fedleak.defenses.accountant import RDPAccountant, epsilon, rdp_sampled_gaussian
from fedleak.defenses.data import Augment, Compose, InstaHide, MixUp, Sampling
from fedleak.defenses.dpsgd import DPSGD
from fedleak.defenses.update import Perturb, Quant, Sparse


def defense_params() -> dict[str, dict[str, str]]:
    """Every defense's accepted parameters and their one-line descriptions (for docs and --help)."""
    from fedleak.defenses.data import AUGMENT_PARAMS, INSTAHIDE_PARAMS, MIXUP_PARAMS, SAMPLING_PARAMS
    from fedleak.defenses.dpsgd import DPSGD_PARAMS
    from fedleak.defenses.update import PERTURB_PARAMS, QUANT_PARAMS, SPARSE_PARAMS

    table = {
        "perturb": PERTURB_PARAMS, "dpsgd": DPSGD_PARAMS, "sparse": SPARSE_PARAMS, "quant": QUANT_PARAMS,
        "mixup": MIXUP_PARAMS, "augment": AUGMENT_PARAMS, "sampling": SAMPLING_PARAMS,
        "instahide": INSTAHIDE_PARAMS,
    }
    return {name: {k: f"{p.doc} (default {p.default!r})" for k, p in spec.items()} for name, spec in table.items()}


__all__ = [
    "Augment", "Compose", "DPSGD", "InstaHide", "MixUp", "Perturb", "Quant", "RDPAccountant", "Sampling", "Sparse",
    "defense_params", "epsilon", "rdp_sampled_gaussian",
]
