"""Where a forward's time goes, by model component, from torch.profiler.

Forward pre/post hooks on the eager model's modules open and close a `record_function` range per component
(nothing in the model changes, and the hooks exist only while profiling). Each kernel is counted once, at the op
that launched it, in the innermost component range around that op (on a CPU: each op's own CPU time). The gate is
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
    # Each kernel counted once, at the op that launched it, and given to the innermost component range above that
    # op. Not the ranges' own device totals: the profiler also appends each range's GPU-side copy
    # (gpu_user_annotation, first kernel to last, gaps included) to the range as a kernel. With those, base at 32 x
    # 2048 summed to 244 ms of kernel time a forward against 124 ms of latency (H200, 2026-12-01).
    host = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    parts = dict.fromkeys([*COMPONENTS, "other"], 0.0)
    for event in host:
        if event.name.startswith(RANGE_PREFIX) or event.is_user_annotation:
            continue
        own = sum(k.duration for k in event.kernels) if on_gpu else event.self_cpu_time_total
        parts[_component_of(event)] += own / 1e3 / calls  # us -> ms per forward
    return {"unit": "device ms per forward (kernel time)" if on_gpu else "CPU ms per forward",
            "total_ms": sum(parts.values()), "components": parts}


def _component_of(event: object) -> str:
    """The component of the innermost range around `event` (the gate op counts as the gate), or "other"."""
    while event is not None:
        if event.name.startswith(RANGE_PREFIX):
            return event.name.removeprefix(RANGE_PREFIX)
        if event.name == GATE_OP:
            return "meta-attention gate"
        event = event.cpu_parent
    return "other"
