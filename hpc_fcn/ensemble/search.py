"""One-dimensional minimisers for the perturbation tuner: golden-section search on a bracket.

Pure and deterministic: the same objective values give the same points, so ranks that share the values
(broadcast from rank 0) take the same path without talking.
"""
from __future__ import annotations

import math
from typing import Callable

GOLD = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def golden_section_points(iterations: int) -> int:
    """Objective evaluations a :func:`golden_section` of ``iterations`` makes (besides ``start``)."""
    return iterations + 2


def golden_section(f: Callable[[float], float], lo: float, hi: float, iterations: int,
                   start: float | None = None) -> tuple[float, float]:
    """Minimise ``f`` on [lo, hi] by golden-section search (``iterations`` narrowing steps, iterations + 2 calls).

    Returns the best point evaluated and its value; ``start`` (evaluated first) is among the candidates, so
    the result is never worse than it. Ties keep the earlier point. NaN counts as +inf.
    """
    if not lo < hi:
        raise ValueError(f"empty bracket [{lo}, {hi}]")
    seen: list[tuple[float, float]] = []

    def F(x: float) -> float:
        v = f(x)
        v = math.inf if v != v else v
        seen.append((x, v))
        return v

    if start is not None:
        F(start)
    a, b = lo, hi
    c, d = b - GOLD * (b - a), a + GOLD * (b - a)
    fc, fd = F(c), F(d)
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - GOLD * (b - a)
            fc = F(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLD * (b - a)
            fd = F(d)
    best = min(range(len(seen)), key=lambda i: (seen[i][1], i))
    return seen[best]


__all__ = ["GOLD", "golden_section", "golden_section_points"]
