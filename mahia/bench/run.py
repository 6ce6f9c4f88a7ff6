"""One benchmark run: every variant at every shape on the same random inputs, in one process, measured the same
way, plus the matmul peak, the fp32 reference logits and the per-component profile.

Order: the variants that do not compile first, each at every shape; then the per-component profile; then the
compiling variants, shape by shape (the slowest to start, and a crash there leaves the other figures
standing). With a time budget, what would start after it is spent is reported as skipped.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mahia.bench.components import profile_components
from mahia.bench.flops import forward_flops
from mahia.bench.measure import EnergyMeter, matmul_peak, time_calls, timed_first_call
from mahia.bench.variants import Variant
from mahia.kernels import use_reference_ops
from mahia.model import MahiaX, random_inputs

PROFILED = {"cuda": "eager-triton", "cpu": "eager-fp32"}  # the eager variant whose modules the profile hooks
GIB = 2 ** 30


@dataclass(frozen=True)
class BenchOptions:
    """How long and on what a run measures."""

    shapes: tuple[tuple[int, int], ...]  # (batch, text tokens)
    window: float = 1.0  # seconds of timed calls per variant and shape (at least 10 calls; see time_calls)
    warmup: int = 2  # calls after the first (which compiles and captures) before timing
    time_budget: float | None = None  # seconds; later measurements are skipped
    seed: int = 0
    profile: bool = True


def shape_label(shape: tuple[int, int]) -> str:
    """'8x512'."""
    return f"{shape[0]}x{shape[1]}"


def _logits(out: Tensor | np.ndarray) -> Tensor:
    return (torch.from_numpy(np.asarray(out)) if isinstance(out, np.ndarray) else out.detach().cpu()).double()


def _rel_error(out: Tensor, ref: Tensor) -> float:
    if not torch.isfinite(out).all():
        return math.inf
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def fp32_reference(model: MahiaX, feeds: Mapping[tuple[int, int], Mapping[str, Tensor]],
                   device: torch.device) -> dict[tuple[int, int], Tensor]:
    """Logits of the eager fp32 model with the reference ops (TF32 off) on `device` for the feeds (on `device`) of every
    shape: the accuracy yardstick."""
    reference = model if device.type == "cpu" else copy.deepcopy(model).to(device)
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the short convolution; matmuls are fp32 by default
    try:
        with torch.inference_mode(), use_reference_ops():
            return {shape: _logits(reference(**feed)) for shape, feed in feeds.items()}
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def describe_device(device: torch.device) -> dict[str, object]:
    """The machine and software the figures belong to."""
    info: dict[str, object] = {"type": device.type, "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        import triton

        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda, triton=triton.__version__,
                    capability=".".join(map(str, torch.cuda.get_device_capability(device))))
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


class _Runner:
    """Measures (variant, shape) pairs against the run's shared inputs, references, peak and clock."""

    def __init__(self, model: MahiaX, device: torch.device, options: BenchOptions) -> None:
        self.model, self.device, self.options = model, device, options
        self.started = time.perf_counter()
        self.energy = EnergyMeter(device)
        self.peak = matmul_peak(device)
        generator = torch.Generator().manual_seed(options.seed)
        self.feeds = {s: {k: v.to(device) for k, v in random_inputs(model.config, *s, generator, full=True).items()}
                      for s in options.shapes}
        self.references = fp32_reference(model, self.feeds, device)

    def over_budget(self) -> bool:
        budget = self.options.time_budget
        return budget is not None and time.perf_counter() - self.started > budget

    def measure(self, variant: Variant, shape: tuple[int, int]) -> dict[str, object]:
        batch, seq = shape
        flops = forward_flops(self.model.config, batch, seq)
        row: dict[str, object] = {"variant": variant.name, "key": variant.key, "precision": variant.precision,
                                  "batch": batch, "seq": seq, "flops": sum(flops.values())}
        if self.over_budget():
            return {**row, "status": f"skipped: the time budget of {self.options.time_budget:.0f} s was spent"}
        on_gpu = self.device.type == "cuda"
        try:
            run = variant.runner()
            feed = self.feeds[shape]
            if on_gpu:
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                resident = torch.cuda.memory_allocated(self.device)
            first = timed_first_call(lambda: run(feed), self.device)
            estimate = min(timed_first_call(lambda: run(feed), self.device) for _ in range(self.options.warmup))
            timing = time_calls(lambda: run(feed), self.device, self.options.window, self.energy, estimate)
            error = _rel_error(_logits(run(feed)), self.references[shape])
        except Exception as exc:  # noqa: BLE001 -- a variant that fails is reported, the others still run
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            return {**row, "status": f"failed: {type(exc).__name__}: {message}"}
        p50 = timing.p50
        row.update(status="ok", p50_ms=p50 * 1e3, p99_ms=timing.p99 * 1e3, calls=len(timing.seconds),
                   window_s=timing.wall_seconds,
                   samples_per_s=batch / p50, tokens_per_s=batch * seq / p50,
                   mfu=sum(flops.values()) / p50 / float(self.peak["flops_per_s"]),
                   energy_j_per_inference=timing.joules_per_call, energy=timing.energy_note,
                   rel_err_vs_fp32=error, first_call_s=first)
        if on_gpu:
            peak = torch.cuda.max_memory_allocated(self.device)
            row.update(peak_memory_gib=peak / GIB, added_memory_gib=(peak - resident) / GIB)
        return row


def run_bench(model: MahiaX, variants: Sequence[Variant], device: torch.device, options: BenchOptions,
              log: Callable[[str], None] = lambda line: None,
              on_row: Callable[[dict[str, object]], None] = lambda document: None) -> dict[str, object]:
    """Measure every variant at every shape; returns the bench.json document (without the command). `on_row`
    gets the document so far after each measurement (to save partial results of a run that may be cut short)."""
    runner = _Runner(model, device, options)
    log(f"matmul peak: {float(runner.peak['flops_per_s']) / 1e9:.1f} GFLOP/s ({runner.peak['dtype']}); "
        f"energy: {runner.energy.reason or f'nvml, its counter steps every {runner.energy.interval * 1e3:.0f} ms'}")
    rows: list[dict[str, object]] = []
    components: dict[str, object] = {}

    def document() -> dict[str, object]:
        return {"device": describe_device(device), "peak": runner.peak, "energy_source": runner.energy.reason or "nvml",
                "energy_counter_step_ms": runner.energy.interval * 1e3 if runner.energy.handle is not None else None,
                "shapes": [list(s) for s in options.shapes], "results": rows, "components": components,
                "seconds": time.perf_counter() - runner.started}

    def measure_all(pairs: list[tuple[Variant, tuple[int, int]]]) -> None:
        for variant, shape in pairs:
            row = runner.measure(variant, shape)
            rows.append(row)
            log(_progress(row))
            on_row(document())

    measure_all([(v, s) for v in variants if v.phase == 0 for s in options.shapes])
    profiled = next((v for v in variants if v.key == PROFILED[device.type] and v.module is not None), None)
    if options.profile and profiled is not None:
        for shape in options.shapes:
            if runner.over_budget():
                components[shape_label(shape)] = {"status": "skipped: time budget"}
                continue
            try:
                run, feed = profiled.runner(), runner.feeds[shape]
                components[shape_label(shape)] = {"variant": profiled.name, **profile_components(
                    profiled.module(), lambda: run(feed), device)}
            except Exception as exc:  # noqa: BLE001 -- reported, as a variant's failure is
                components[shape_label(shape)] = {"status": f"failed: {type(exc).__name__}: {exc}"}
            log(_component_line(shape_label(shape), components[shape_label(shape)]))
    # shape by shape, so that a time budget spent on compilation still leaves each compiled variant at the first shapes
    for phase in sorted({v.phase for v in variants} - {0}):
        measure_all([(v, s) for s in options.shapes for v in variants if v.phase == phase])
    return document()


def _progress(row: Mapping[str, object]) -> str:
    head = f"{row['variant']} @ {row['batch']}x{row['seq']}: "
    if row["status"] != "ok":
        return head + str(row["status"])
    energy = row["energy_j_per_inference"]
    return head + (f"p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms ({row['calls']} calls), "
                   f"{row['samples_per_s']:.1f} samples/s, MFU {100 * row['mfu']:.1f}%, "
                   f"peak mem {row.get('peak_memory_gib', float('nan')):.2f} GiB, "
                   f"energy {'n/a' if energy is None else f'{energy:.4f} J'}, rel err {row['rel_err_vs_fp32']:.2e}, "
                   f"first call {row['first_call_s']:.1f} s")


def _component_line(label: str, entry: Mapping[str, object]) -> str:
    if "components" not in entry:
        return f"components @ {label}: {entry['status']}"
    parts = ", ".join(f"{name} {ms:.3f}" for name, ms in entry["components"].items())
    return f"components @ {label} ({entry['unit']}): {parts}; total {entry['total_ms']:.3f}"
