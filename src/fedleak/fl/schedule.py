"""Learning-rate schedules: the lr used by every client in (0-based) round r."""

from __future__ import annotations

import math

from fedleak.config import ScheduleConfig


def lr_at(sched: ScheduleConfig, lr0: float, r: int, total_rounds: int) -> float:
    """Learning rate of round ``r``.

    - constant: lr0
    - exponential: lr0 * gamma**r (the original default, ``lr <- 0.99 lr`` after each round)
    - cosine: lr0 * (1 + cos(pi r / E)) / 2
    - cosine-official: as the original ``run.sh`` path, which updates after the round, so round 0 and
      round 1 both use lr0 and round r >= 1 uses lr0 * (1 + cos(pi (r-1) / E)) / 2
    - milestones: lr0 * gamma**(number of milestones m with m < r), i.e. the factor applies after round m
    """
    if sched.kind == "constant":
        return lr0
    if sched.kind == "exponential":
        return lr0 * sched.gamma**r
    if sched.kind == "cosine":
        return lr0 * (1 + math.cos(math.pi * r / total_rounds)) / 2
    if sched.kind == "cosine-official":
        return lr0 if r == 0 else lr0 * (1 + math.cos(math.pi * (r - 1) / total_rounds)) / 2
    if sched.kind == "milestones":
        return lr0 * sched.gamma ** sum(1 for m in sched.milestones if m < r)
    raise ValueError(f"unknown schedule {sched.kind}")
