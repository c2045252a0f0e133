"""The one table of input normalisations (per-channel mean / std of pixels in [0, 1]), for every pipeline.

Which CIFAR-10 constants are right: the per-channel mean and (population) std of the 50,000 CIFAR-10 training
images are (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616) — that is ``cifar10``. The widely copied std
(0.2023, 0.1994, 0.2010) is *not* CIFAR-10's std (it is about the mean of the per-image stds); the FedMIA original
uses it, so FedMIA reproductions keep it explicitly as ``cifar10-fedmia`` (the ``default`` of cifar10, cifar100
and dermnet membership runs, unchanged). The inversion originals (DLG/IG/Soteria code) compute the statistics
themselves in full float precision; their presets keep those values as ``<dataset>-ig``.
"""

from __future__ import annotations

Stats = tuple[tuple[float, ...], tuple[float, ...]]

NORMALIZATIONS: dict[str, Stats] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # the originals' constants, kept where a reproduction needs them
    "cifar10-fedmia": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar10-ig": (
        (0.4914672374725342, 0.4822617471218109, 0.4467701315879822),
        (0.24703224003314972, 0.24348513782024384, 0.26158785820007324),
    ),
    "cifar100-ig": (
        (0.5071598291397095, 0.4866936206817627, 0.44120192527770996),
        (0.2673342823982239, 0.2564384639263153, 0.2761504650115967),
    ),
    "mnist-ig": ((0.13066373765468597,), (0.30810782313346863,)),
}

__all__ = ["NORMALIZATIONS", "Stats"]
