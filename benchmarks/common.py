"""What the benchmark scripts share: wall-clock timing, relative error, the machine's description.

The scripts are run as `python benchmarks/<script>.py` from the repository root and import `mahia` as
installed (`make install`; on a machine without the project installed, `PYTHONPATH=.` does the same);
this module is found beside them.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


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


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 on the CPU (inf when out has a non-finite element)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return math.inf
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
