"""Alternating step timing for side-by-side step-time benchmarks: one step of each side in turn (both see the same
machine state), warm-up steps dropped, the median of the per-pair time ratios with quartiles reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

Step = Callable[[int], None]


def compare_steps(ours: Step, theirs: Step, name: str, pairs: int, warmup: int = 2) -> None:
    """Time ``ours(i)`` and ``theirs(i)`` alternately for ``pairs`` pairs after ``warmup``; print medians and the
    ratio ours / theirs (median of the pairs, quartiles)."""
    times: dict[str, list[float]] = {"domainfm": [], name: []}
    for i in range(pairs + warmup):
        for side, step in (("domainfm", ours), (name, theirs)):
            t = time.perf_counter()
            step(i)
            if i >= warmup:
                times[side].append(time.perf_counter() - t)
    ratios = sorted(a / b for a, b in zip(times["domainfm"], times[name]))
    q = [ratios[round(f * (len(ratios) - 1))] for f in (0.25, 0.5, 0.75)]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median step: domainfm {med['domainfm']:.3f} s, {name} {med[name]:.3f} s ({pairs} pairs)")
    print(f"time ratio domainfm / {name} per pair: median {q[1]:.3f} (quartiles {q[0]:.3f}, {q[2]:.3f})")
