"""The AOT payload of a plugin: what TensorRT's AOT runtime launches for one plugin node.

`binary_request` says which binary a launch needs (entry kernel, constexprs, warps, stages, pointer dtypes: not
the sizes); `compile_binary` builds it through mahia.kernels.aot (the plugin-ready PTX: Triton's hidden scratch
parameters removed, `.version` pinned to aot.PTX_VERSION); `aot_payload` evaluates the launch formula at concrete
ints and pairs it with the binary. mahia.plugins_trt.qdp calls the same two functions with TensorRT's symbolic
sizes, and benchmarks/trt_plugins_gpu.py launches `aot_payload`'s result through the CUDA driver.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from mahia.plugins_trt.specs import DTYPES, LaunchFormula, PluginSpec, Sizes, bind, launch_formula, output_dtypes


@dataclass(frozen=True)
class BinaryRequest:
    """Everything the compiled binary of a launch depends on (never the sizes: grid and scalars are arguments)."""

    op: str
    module: str
    entry: str
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int
    pointers: tuple[tuple[str, str, str], ...]  # (parameter, tensor, dtype) of the inputs, then the outputs
    inputs: int  # how many of `pointers` are inputs
    scalars: tuple[str, ...]
    arch: int  # compute capability, e.g. 90


@dataclass(frozen=True)
class Binary:
    """A compiled entry kernel: the PTX entry name, the plugin-ready PTX, its static shared memory."""

    entry: str
    ptx: str
    shared_bytes: int
    ptx_version: str
    arch: int


@dataclass(frozen=True)
class Payload:
    """One plugin launch at concrete sizes, as TensorRT's AOT runtime performs it: cuModuleLoadData(ptx),
    cuModuleGetFunction(kernel_name), cuLaunchKernel(grid, block, shared_bytes, args)."""

    plugin: str
    kernel_name: str
    ptx: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    inputs: tuple[str, ...]  # pointer arguments first, by tensor name
    scalars: tuple[tuple[str, int], ...]  # then the int32 scalars
    outputs: tuple[str, ...]  # then the output pointers


def target_arch() -> int:
    """The compute capability to build for: $MAHIA_TRT_ARCH (e.g. 90), else the current CUDA device's."""
    if os.environ.get("MAHIA_TRT_ARCH"):
        return int(os.environ["MAHIA_TRT_ARCH"])
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("plugins_trt: no CUDA device to build the plugins' PTX for; set MAHIA_TRT_ARCH (e.g. 90)")
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def binary_request(sizes: Sizes, formula: LaunchFormula, dtypes: Sequence[str], arch: int) -> BinaryRequest:
    """The binary a node's launch needs; `dtypes` are its input dtype names."""
    spec = sizes.spec
    pointers = tuple((t.param, t.name, d) for t, d in zip(spec.inputs, dtypes, strict=True))
    pointers += tuple((o.param, o.name, d) for o, d in zip(spec.outputs, output_dtypes(spec, dtypes), strict=True))
    return BinaryRequest(spec.op, formula.module, formula.entry, formula.constexprs, formula.num_warps,
                         formula.num_stages, pointers, len(spec.inputs), tuple(name for name, _ in formula.scalars),
                         arch)


def _build(request: BinaryRequest) -> Binary:
    """Compile one binary with mahia.kernels.aot.compile_launch (scalar values do not enter the binary)."""
    from mahia.kernels import aot
    from mahia.kernels.triton.plan import Arg, Buffer, KernelPlan, Launch

    inputs, outputs = request.pointers[:request.inputs], request.pointers[request.inputs:]
    args = ([Arg(param, buffer=name) for param, name, _ in inputs] + [Arg(name, value=0) for name in request.scalars]
            + [Arg(param, buffer=name) for param, name, _ in outputs])
    launch = Launch(request.module, request.entry, (1, 1, 1), request.num_warps, request.num_stages,
                    request.constexprs, tuple(args), tuple(n for _, n, _ in inputs), tuple(n for _, n, _ in outputs))
    plan = KernelPlan(request.op, tuple(n for _, n, _ in inputs), tuple(n for _, n, _ in outputs),
                      tuple(Buffer(name, DTYPES[dtype].torch, 0) for _, name, dtype in request.pointers), (launch,))
    with tempfile.TemporaryDirectory(prefix="mahia-plugin-") as staging:
        entry = aot.compile_launch(plan, launch, request.arch, Path(staging))
        ptx = (Path(staging) / entry["ptx"]["file"]).read_text()
    return Binary(entry["entry"], ptx, entry["shared_bytes"], entry["ptx_version"], request.arch)


_BINARIES: dict[BinaryRequest, Binary] = {}


def compile_binary(request: BinaryRequest) -> Binary:
    """The binary of a request, compiled once per process."""
    if request not in _BINARIES:
        _BINARIES[request] = _build(request)
    return _BINARIES[request]


def build_binaries(requests: Iterable[BinaryRequest], workers: int = 1) -> None:
    """Compile many binaries ahead, in `workers` fresh processes (Triton compiles one kernel at a time)."""
    todo = sorted({r for r in requests if r not in _BINARIES}, key=repr)
    if workers <= 1 or len(todo) <= 1:
        for request in todo:
            compile_binary(request)
        return
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
        _BINARIES.update(zip(todo, pool.map(_build, todo), strict=True))


def aot_payload(spec: PluginSpec, shapes: Sequence[Sequence[int]], dtypes: Sequence[str], attrs: Mapping[str, int],
                tactic: int = 0, arch: int | None = None) -> Payload:
    """The payload of one plugin node at concrete input shapes and dtypes (the path qdp.aot_impl takes)."""
    sizes = bind(spec, shapes, attrs, dtypes, tactic=tactic)
    formula = launch_formula(sizes)
    binary = compile_binary(binary_request(sizes, formula, dtypes, arch if arch is not None else target_arch()))
    return Payload(spec.name, binary.entry, binary.ptx, tuple(formula.grid), formula.block, binary.shared_bytes,
                   tuple(t.name for t in spec.inputs), tuple(formula.scalars), tuple(o.name for o in spec.outputs))
