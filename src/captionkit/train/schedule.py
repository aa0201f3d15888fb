"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

from captionkit.config import LR_SCHEDULES
from captionkit.errors import CaptionKitError


def lr_multiplier(step: int, total_steps: int, schedule: str, warmup_steps: int = 0) -> float:
    """Factor on the base learning rate at ``step`` (0-based) of ``total_steps``.

    Linear warm-up over ``warmup_steps``, then ``constant``; ``cosine`` decay to 0 at the end;
    or ``step``: x0.1 after half of the (post-warm-up) steps and x0.01 after three quarters.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return 1.0 if progress < 0.5 else 0.1 if progress < 0.75 else 0.01
    raise CaptionKitError(f"unknown lr_schedule {schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
