"""Measurements: per-call latency (CUDA events on a GPU, perf_counter on a CPU), the measured matmul peak, GPU
energy from NVML's total-energy counter, and peak GPU memory.

Energy is read, never estimated: NVML's `nvmlDeviceGetTotalEnergyConsumption` (millijoules since the driver
loaded) before and after the timed calls; where NVML or the counter is missing the result says why. The counter
advances in steps (their interval is measured once per run), so a window's energy is known to about one step: a
window shorter than MIN_COUNTER_UPDATES steps gets a reason instead of a figure. The H200's counter steps every
100 ms (measured). There, windows of 10 calls (12-45 ms, mahia-bench --window 0, 2026-12-01) read 0.0000 J where
the counter had not moved, and 2.14 J a call at 1x128 where it had, against 0.26 J over a 0.5 s window (itself up to
20% off, which is why the timed window is now lengthened to MIN_COUNTER_UPDATES steps and a quarter).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Timed calls: enough to fill `window` seconds, at least MIN and at most MAX calls.
MIN_CALLS, MAX_CALLS = 10, 1000
# Energy is reported for windows of at least this many counter steps: one step's error is then <= 10%.
MIN_COUNTER_UPDATES = 10


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of the timed calls, and what the window cost in energy (joules) or why it is unknown."""

    seconds: tuple[float, ...]
    wall_seconds: float
    energy_joules: float | None
    energy_note: str  # "nvml" or the reason energy is unavailable

    @property
    def p50(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.seconds)

    @property
    def p99(self) -> float:
        """99th percentile seconds per call (nearest rank: the slowest call below 100 calls)."""
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    @property
    def joules_per_call(self) -> float | None:
        """Energy per call, where NVML measured it."""
        return None if self.energy_joules is None else self.energy_joules / len(self.seconds)


def counter_update_interval(read: Callable[[], int], clock: Callable[[], float] = time.perf_counter,
                            limit: float = 1.0, steps: int = 3) -> float | None:
    """Median seconds between successive changes of the counter `read()` polls, over `steps` intervals (one irregular
    update does not set it), or None if it does not change `steps + 1` times within `limit` seconds."""
    deadline = clock() + limit
    changes: list[float] = []
    last = read()
    while len(changes) <= steps and clock() < deadline:
        value = read()
        if value != last:
            changes.append(clock())
            last = value
    if len(changes) <= steps:
        return None
    return statistics.median(later - earlier for earlier, later in zip(changes, changes[1:]))


def window_energy(before: int, after: int, wall: float, interval: float) -> tuple[float | None, str]:
    """(joules, "nvml") for a window of `wall` seconds between counter readings `before` and `after` (millijoules),
    or (None, why not) when the window spans under MIN_COUNTER_UPDATES steps of `interval` seconds."""
    if wall < MIN_COUNTER_UPDATES * interval:
        return None, (f"unavailable: the {wall * 1e3:.0f} ms window spans under {MIN_COUNTER_UPDATES} steps of NVML's "
                      f"energy counter (one every {interval * 1e3:.0f} ms, measured)")
    return (after - before) / 1e3, "nvml"


class EnergyMeter:
    """NVML's total-energy counter of one GPU and its measured update interval, or the reason it cannot be read."""

    def __init__(self, device: torch.device) -> None:
        self.handle, self.reason, self.interval = None, "", math.inf
        if device.type != "cuda":
            self.reason = "unavailable: NVML measures GPUs only (CPU run)"
            return
        try:
            import pynvml  # nvidia-ml-py
        except ModuleNotFoundError:
            self.reason = "unavailable: nvidia-ml-py (pynvml) is not installed"
            return
        try:
            pynvml.nvmlInit()
            # The same GPU as torch's, by UUID (CUDA_VISIBLE_DEVICES renumbers devices; NVML does not).
            uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
            self.handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}") if uuid is not None else \
                pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self.pynvml = pynvml
            interval = counter_update_interval(self.millijoules)
        except Exception as exc:  # noqa: BLE001 -- NVMLError_NotSupported, NoPermission, ...: recorded as the reason
            self.handle, self.reason = None, f"unavailable: NVML {type(exc).__name__}: {exc}"
            return
        if interval is None:
            self.handle, self.reason = None, "unavailable: NVML's energy counter did not advance 4 times in 1 s"
        else:
            self.interval = interval

    @property
    def min_window(self) -> float:
        """Seconds of timed calls that give an energy figure: MIN_COUNTER_UPDATES steps and a quarter for the
        per-call estimate's error (0 without NVML)."""
        return 0.0 if self.handle is None else 1.25 * MIN_COUNTER_UPDATES * self.interval

    def millijoules(self) -> int | None:
        """The counter now, or None."""
        return None if self.handle is None else self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)


def time_calls(fn: Callable[[], object], device: torch.device, window: float, energy: EnergyMeter,
               estimate: float) -> Timing:
    """Call fn() enough times to fill `window` seconds (at least MIN_CALLS, at most MAX_CALLS) and the energy meter's
    min_window (past MAX_CALLS if need be), given one call takes about `estimate` s; time each."""
    estimate = max(estimate, 1e-6)
    calls = max(MIN_CALLS, min(MAX_CALLS, math.ceil(window / estimate)), math.ceil(energy.min_window / estimate))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
        before, start = energy.millijoules(), time.perf_counter()
        for begin, end in zip(starts, ends):
            begin.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        wall, after = time.perf_counter() - start, energy.millijoules()
        seconds = tuple(b.elapsed_time(e) / 1e3 for b, e in zip(starts, ends))
    else:
        before, start, seconds_list = None, time.perf_counter(), []
        for _ in range(calls):
            begin = time.perf_counter()
            fn()
            seconds_list.append(time.perf_counter() - begin)
        wall, after, seconds = time.perf_counter() - start, None, tuple(seconds_list)
    if before is None or after is None:
        return Timing(seconds, wall, None, energy.reason)
    return Timing(seconds, wall, *window_energy(before, after, wall, energy.interval))


def timed_first_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call, synchronised (the first call of a variant: compilation and capture included)."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def matmul_peak(device: torch.device) -> dict[str, object]:
    """The measured matrix-product rate: bf16 8192^3 on a GPU (the MFU denominator), fp32 1024^3 on a CPU."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    timing = time_calls(lambda: a @ b, device, 0.0, EnergyMeter(torch.device("cpu")), 1.0)  # MIN_CALLS calls
    return {"flops_per_s": 2 * size ** 3 / statistics.mean(timing.seconds), "dtype": str(dtype).removeprefix("torch."),
            "matmul": f"{size}x{size}x{size}, random data, mean of {len(timing.seconds)} after 3 warm-ups"}
