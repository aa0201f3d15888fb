"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import statistics
import time


def median_rate(fn, count: int, repeats: int) -> float:
    """Median of ``count / seconds`` over ``repeats`` timed calls of ``fn`` (after a warm-up)."""
    fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)
