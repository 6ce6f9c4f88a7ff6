"""Where a forward's time goes, by model component, from torch.profiler.

Forward pre/post hooks on the eager model's modules open and close a `record_function` range per component
(nothing in the model changes, and the hooks exist only while profiling); the profiler attributes every kernel
to the ranges it was launched in, so a component's device time is its range's total. The meta-attention gate is
the `gate` Linear plus the `mahia::gate_combine` op. "other" is the rest of the forward's kernel time (norms,
the in/out projections of meta-attention, residuals, pooling).
"""

from __future__ import annotations

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
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(calls):
                run()
            if on_gpu:
                torch.cuda.synchronize(device)
    # Summed over the CPU-side events (ranges and ops) only: a range's device time is the kernels launched inside
    # it; the GPU-side copies of the ranges (Kineto's gpu_user_annotation) would count them twice.
    host = [e for e in prof.events() if e.device_type == DeviceType.CPU]

    def ms(events: list) -> float:
        field = "device_time_total" if on_gpu else "cpu_time_total"
        return sum(getattr(e, field) for e in events) / 1e3 / calls  # us -> ms per forward

    parts = {name: ms([e for e in host if e.name == RANGE_PREFIX + name]) for name in COMPONENTS}
    parts["meta-attention gate"] += ms([e for e in host if e.name == GATE_OP])
    whole = ms([e for e in host if e.cpu_parent is None])
    parts["other"] = max(whole - sum(parts.values()), 0.0)
    return {"unit": "device ms per forward (kernel time)" if on_gpu else "CPU ms per forward",
            "total_ms": whole, "components": parts}
