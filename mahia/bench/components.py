"""Where a forward's time goes, by model component, from torch.profiler.

Forward pre/post hooks on the eager model's modules open and close a `record_function` range per component
(nothing in the model changes, and the hooks exist only while profiling). On a GPU each kernel is counted once, in
the range whose GPU-side span holds it; the total is the forward's kernel time. On a CPU each op's own CPU time
counts, in the innermost range around it; Python's time between ops does not, so the total is below the latency. The
gate is the `gate` Linear plus the `mahia::gate_combine` op. "other" is the rest (norms, the in/out projections of
meta-attention, residuals, pooling).
"""

from __future__ import annotations

import bisect
import contextlib
import re
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.autograd import DeviceType

# component -> pattern of the module paths it covers (MahiaX's attribute names)
COMPONENTS: dict[str, str] = {
    "embedding": r"^embedding$",
    "fabric gates": r"^fabric$",
    "hyena": r"^blocks\.\d+\.attention\.hyena$",
    "ssd": r"^blocks\.\d+\.attention\.ssd$",
    "fourier": r"^blocks\.\d+\.attention\.fourier$",
    "meta-attention gate": r"^blocks\.\d+\.attention\.gate$",
    "moe": r"^blocks\.\d+\.moe$",
    "memory": r"^memory$",
    "head": r"^head$",
}
GATE_OP = "mahia::gate_combine"
GATE_KERNEL = "gate_combine_kernel"  # the op's one kernel on a GPU
RANGE_PREFIX = "mahia.component."


@contextlib.contextmanager
def component_ranges(model: nn.Module) -> Iterator[None]:
    """While active, each component module's forward runs inside record_function('mahia.component.<name>')."""
    handles, open_ranges = [], []

    def enter(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            scope = torch.profiler.record_function(RANGE_PREFIX + name)
            scope.__enter__()
            open_ranges.append(scope)
        return hook

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        open_ranges.pop().__exit__(None, None, None)

    for path, module in model.named_modules():
        for name, pattern in COMPONENTS.items():
            if re.match(pattern, path):
                handles.append(module.register_forward_pre_hook(enter(name)))
                handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profile_components(model: nn.Module, run: Callable[[], object], device: torch.device,
                       calls: int = 3) -> dict[str, object]:
    """Per-component time of `run()` (a forward of `model`), averaged over `calls` calls: device (kernel) time on a
    GPU, CPU time on a CPU. Returns {"unit", "total_ms", "components": {name: ms per forward}}."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    on_gpu = device.type == "cuda"
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with component_ranges(model):
        run()  # the hooks in place, before the profiler starts
        if on_gpu:
            torch.cuda.synchronize(device)  # that call's kernels are not the profiled calls'
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(calls):
                run()
            if on_gpu:
                torch.cuda.synchronize(device)
    events = prof.events()
    parts = dict.fromkeys([*COMPONENTS, "other"], 0.0)
    for name, microseconds in (kernel_times(events) if on_gpu else cpu_times(events)):
        parts[name] += microseconds / 1e3 / calls  # us -> ms per forward
    return {"unit": "device ms per forward (kernel time)" if on_gpu else "CPU ms per forward",
            "total_ms": sum(parts.values()), "components": parts}


def kernel_times(events: list) -> Iterator[tuple[str, float]]:
    """(component, microseconds) of every kernel, once each, by the component range whose GPU-side span (from its
    first kernel to its last, on the one stream the model runs on) holds the kernel's start.

    Not by the host events' kernel lists: the profiler links some kernels to several host events. Summed that way,
    base at 32 x 2048 had 218 ms of kernels a forward against 125 ms of kernel events and of latency (H200,
    2026-12-01)."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name.removeprefix(RANGE_PREFIX)) for e in events
                   if e.device_type == DeviceType.CUDA and e.is_user_annotation and e.name.startswith(RANGE_PREFIX))
    if not spans and any(e.name.startswith(RANGE_PREFIX) for e in events):
        # every kernel would land in "other" with a plausible total: say so instead
        raise RuntimeError("the profiler returned the component ranges on the host but no GPU-side copies of them "
                           f"(user annotations named {RANGE_PREFIX}*): cannot attribute kernels to components")
    starts = [span[0] for span in spans]
    for kernel in events:
        if kernel.device_type != DeviceType.CUDA or kernel.is_user_annotation:
            continue
        at = bisect.bisect_right(starts, kernel.time_range.start) - 1
        if at >= 0 and kernel.time_range.start < spans[at][1]:
            name = spans[at][2]
        else:
            name = "meta-attention gate" if kernel.name == GATE_KERNEL else "other"
        yield name, kernel.time_range.elapsed_us()


def cpu_times(events: list) -> Iterator[tuple[str, float]]:
    """(component, microseconds) of every host op's own CPU time, by the innermost range around it."""
    for event in events:
        if event.device_type == DeviceType.CPU and not event.name.startswith(RANGE_PREFIX):
            yield _component_of(event), event.self_cpu_time_total


def _component_of(event: object) -> str:
    """The component of the innermost range around `event` (the gate op counts as the gate), or "other"."""
    while event is not None:
        if event.name.startswith(RANGE_PREFIX):
            return event.name.removeprefix(RANGE_PREFIX)
        if event.name == GATE_OP:
            return "meta-attention gate"
        event = event.cpu_parent
    return "other"
