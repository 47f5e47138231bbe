"""Step schedules: cosine from ``start`` to ``end`` after a linear warmup (as in DINO/DINOv2 ``cosine_scheduler``)."""

from __future__ import annotations

import math


class CosineSchedule:
    """``value(step)``: linear ``warmup_start -> start`` over ``warmup_steps``, then
    ``end + (start - end) * (1 + cos(pi * t)) / 2`` with ``t`` going 0 -> 1 over the remaining steps.

    ``warmup_steps`` may be a fraction of the total (``< 1``). Used for lr, weight decay, EMA momentum and
    teacher temperature.
    """

    def __init__(self, start: float, end: float | None = None, warmup_steps: float = 0, warmup_start: float = 0.0):
        self.start = float(start)
        self.end = float(start if end is None else end)
        self.warmup_steps = warmup_steps
        self.warmup_start = float(warmup_start)

    def __call__(self, step: int, total: int) -> float:
        warmup = int(round(self.warmup_steps * total)) if 0 < self.warmup_steps < 1 else int(self.warmup_steps)
        if step < warmup:
            return self.warmup_start + (self.start - self.warmup_start) * step / warmup
        rest = max(1, total - warmup)
        t = min(1.0, (step - warmup) / rest)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))

    def __repr__(self) -> str:
        return f"CosineSchedule(start={self.start}, end={self.end}, warmup_steps={self.warmup_steps})"


class LinearWarmupSchedule(CosineSchedule):
    """Linear warmup then constant (e.g. DINO teacher temperature 0.04 -> 0.07 over 30 epochs)."""

    def __init__(self, start: float, end: float, warmup_steps: float):
        super().__init__(start=end, end=end, warmup_steps=warmup_steps, warmup_start=start)
