"""What mahia-bench times: one `Variant` per way of running the model, built lazily (a variant that cannot be
built is reported with the reason, and the others still run).

GPU (every one on the same inputs, in one process):
  eager-ref          eager bf16 model, `mahia::` ops on their PyTorch references (use_reference_ops)
  eager-triton       eager bf16 model, Triton kernels
  compile            torch.compile of that eager model (Triton kernels inside), one static graph per shape
  cuda-bf16          the CUDA backend's bf16 deployment: CUDA graph per shape bucket
  cuda-bf16-compile  the same, torch.compile'd before capture
  cuda-fp8           the CUDA backend's fp8 deployment (FP8 GEMMs + FP8 experts), CUDA graphs
  cuda-fp8-compile   the same, torch.compile'd before capture
CPU:
  eager-fp32         the eager fp32 model (PyTorch references)
  onnx-<precision>   an artifact's ONNX graph on ONNX Runtime (CPU execution provider), through mahia.runtime
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import mahia.runtime
from mahia.kernels import use_reference_ops
from mahia.model import MahiaX
from mahia.runtime.backends.cuda import DeployedModel, deployable_module, raise_recompile_limit
from mahia.runtime.backends.cuda_buckets import Buckets

RunFn = Callable[[Mapping[str, Tensor]], "Tensor | np.ndarray"]

GPU_VARIANTS = ("eager-ref", "eager-triton", "compile", "cuda-bf16", "cuda-bf16-compile", "cuda-fp8",
                "cuda-fp8-compile")
CPU_VARIANTS = ("eager-fp32", "onnx-fp32", "onnx-int8", "onnx-fp8")


@dataclass
class Variant:
    """One way of running the model: `build()` returns run(inputs on the variant's device) -> logits."""

    key: str
    name: str
    precision: str
    build: Callable[[], RunFn]
    # 0: measured first; 1, 2: compiling variants, measured after the profile in this order (compilation is the
    # slowest and riskiest part of a run: with a time budget, the lower phases' figures are there first)
    phase: int = 0
    module: Callable[[], torch.nn.Module] | None = None  # eager variants: the module, for the per-component profile
    _run: RunFn | None = field(default=None, repr=False)

    def runner(self) -> RunFn:
        """The built run function (built on first use)."""
        if self._run is None:
            self._run = self.build()
        return self._run


class _Cache:
    """Modules shared by several variants, built once on first use."""

    def __init__(self) -> None:
        self.items: dict[str, object] = {}

    def get(self, key: str, make: Callable[[], object]) -> object:
        if key not in self.items:
            self.items[key] = make()
        return self.items[key]


def gpu_variants(model: MahiaX, device: torch.device, buckets: Buckets,
                 fp8_scales: Callable[[], Mapping[str, float]]) -> list[Variant]:
    """The GPU variants of the eager fp32 `model`; `fp8_scales()` gives the activation scales (or raises why not)."""
    cache = _Cache()
    # Every compiled variant and shape is one more compiled entry of the same MahiaX.forward code: above dynamo's
    # recompile limit (8) the rest would silently run uncompiled.
    raise_recompile_limit(64)

    def eager() -> torch.nn.Module:
        return cache.get("eager", lambda: copy.deepcopy(model).to(device=device, dtype=torch.bfloat16).eval())

    def deployed(precision: str) -> torch.nn.Module:
        return cache.get(precision, lambda: deployable_module(
            model, precision, device, fp8_scales() if precision == "fp8" else None)[0])

    def reference_ops() -> RunFn:
        module = eager()

        def run(x: Mapping[str, Tensor]) -> Tensor:
            with torch.inference_mode(), use_reference_ops():
                return module(**x)
        return run

    def plain(module: Callable[..., Tensor]) -> RunFn:
        def run(x: Mapping[str, Tensor]) -> Tensor:
            with torch.inference_mode():
                return module(**x)
        return run

    def backend(precision: str, compiled: bool) -> Callable[[], RunFn]:
        return lambda: DeployedModel(deployed(precision), buckets, device, cuda_graphs=True, compile=compiled).forward

    return [
        Variant("eager-ref", "eager bf16, reference ops", "bf16", reference_ops),
        Variant("eager-triton", "eager bf16, Triton ops", "bf16", lambda: plain(eager()), module=eager),
        Variant("cuda-bf16", "cuda bf16 (CUDA graphs)", "bf16", backend("bf16", False)),
        Variant("cuda-fp8", "cuda fp8 (CUDA graphs)", "fp8", backend("fp8", False)),
        # dynamic=False, as the deployment compiles each bucket. With the default, a shape after the first recompiles
        # with dynamic sizes (torch's automatic dynamic shapes): first calls of 153 s at 8 x 512 and 147 s at
        # 32 x 2048 after 37 s at 1 x 128 (H200, 2026-12-01), which kept one mahia-bench run from fitting in 10 minutes
        Variant("compile", "torch.compile, Triton ops", "bf16",
                lambda: plain(torch.compile(eager(), dynamic=False)), phase=1),
        Variant("cuda-bf16-compile", "cuda bf16 (CUDA graphs + compile)", "bf16", backend("bf16", True), phase=1),
        # last: the fp8 goal (against bf16 at the largest shape) is judged on the uncompiled deployments already
        Variant("cuda-fp8-compile", "cuda fp8 (CUDA graphs + compile)", "fp8", backend("fp8", True), phase=2),
    ]


def cpu_variants(model: MahiaX, artifacts: Mapping[str, Path]) -> list[Variant]:
    """eager fp32 on the CPU, and each artifact's ONNX graph ({precision: directory}) on ONNX Runtime."""

    def eager() -> RunFn:
        def run(x: Mapping[str, Tensor]) -> Tensor:
            with torch.inference_mode():
                return model(**x)
        return run

    def onnx(directory: Path) -> Callable[[], RunFn]:
        return lambda: mahia.runtime.load(directory, backend="onnx", allow_failed=True).runner

    return [Variant("eager-fp32", "eager fp32", "fp32", eager, module=lambda: model)] + [
        Variant(f"onnx-{precision}", f"onnxrt {precision}", precision, onnx(directory))
        for precision, directory in artifacts.items()]
