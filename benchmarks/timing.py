"""Wall-clock timing shared by the CPU benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def run_seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of `repeats` runs of fn() after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up."""
    return statistics.median(run_seconds(fn, repeats))
