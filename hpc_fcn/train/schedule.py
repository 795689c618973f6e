"""Learning rate per optimizer step: linear warm-up to the peak, then a cosine decay to ``min_lr``."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, lr: float, min_lr: float = 0.0, warmup: int = 0) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of a phase with ``total`` steps.

    Warm-up rises linearly and reaches ``lr`` at step ``warmup`` (step 0 already gets lr/(warmup+1),
    never zero); the cosine then falls from ``lr`` to ``min_lr`` at the last step.
    """
    if total < 1:
        raise ValueError(f"a phase needs at least one step, got {total}")
    if not 0 <= step < total:
        raise ValueError(f"step {step} outside the phase's {total} steps")
    warmup = min(warmup, total - 1)
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    span = total - 1 - warmup
    if span == 0:
        return lr
    frac = (step - warmup) / span
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))


class PhaseSchedule:
    """The schedule of one phase, applied to an optimizer before each step."""

    def __init__(self, total_steps: int, lr: float, min_lr: float = 0.0, warmup: int = 0):
        self.total, self.lr, self.min_lr, self.warmup = total_steps, lr, min_lr, warmup

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total, self.lr, self.min_lr, self.warmup)

    def apply(self, optimizer, step: int) -> float:
        """Set every parameter group's lr (times the group's ``lr_scale``, default 1); returns the base lr."""
        value = self(step)
        for group in optimizer.param_groups:
            group["lr"] = value * group.get("lr_scale", 1.0)
        return value
