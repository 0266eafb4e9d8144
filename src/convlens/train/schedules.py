"""Learning-rate schedules as pure functions of the step.

The loop sets `lr = peak * lr_factor(step, ...)` before every optimiser step. Being a function of the
step alone, the schedule needs no state of its own in a checkpoint: resuming at step `s` resumes it.
"""

from __future__ import annotations

import math


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """The multiplier of the peak learning rate at optimiser step `step` (0-based).

    Args:
        schedule: `onecycle` (linear rise over the warm-up, then linear fall to 0: the triangular
            one-cycle of Smith 2018 as used by fast CIFAR trainers), `cosine` (linear warm-up, then
            half a cosine to 0, Loshchilov & Hutter 2017) or `step` (linear warm-up, then the peak,
            x0.1 after 50 % and again after 75 % of the steps: He et al. 2016's 32k/48k of 64k).
        step: optimiser steps taken so far.
        total_steps: optimiser steps of the whole run.
        warmup_steps: steps of linear warm-up (clipped to the run's length).
    """
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)
    # Warm-up starts a little above 0 so that step 0 is not wasted.
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "step":
        return 0.01 if step >= 0.75 * total_steps else 0.1 if step >= 0.5 * total_steps else 1.0
    # Progress through the decay phase, 0 at its start, 1 at the last step.
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    if schedule == "onecycle":
        return max(0.0, 1.0 - t)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {schedule!r}")
