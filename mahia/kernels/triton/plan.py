"""Kernel launch plans as data: what an op launches, in order, at concrete sizes.

Each kernel module (`gate_combine`, `long_conv`, `ssd_scan`, `moe_ffn`; `meta_attention` one per op) has
`plan(sizes..., dtype) -> KernelPlan`: every buffer the op touches (its inputs and outputs, and the workspace it
allocates: name, dtype, element count) and its launches in order (kernel, grid, warps, stages, constexprs, each argument
by name: the buffer a pointer receives or an int32 scalar's value, and the buffers each launch reads
and writes). The same plan is used three ways, so launch logic exists once:
- the torch launcher executes it (`execute`: one allocation per workspace buffer, launches in order);
- `mahia.kernels.aot` compiles the kernels of the plans at representative sizes, and its manifest
  records the plan inputs so that a consumer calls `plan()` again;
- a TensorRT AOT plugin (one kernel per plugin node, arguments in the order input pointers, int32
  scalars, output pointers) takes `launch.plugin_order()`: the same launch through the kernel's AOT
  entry wrapper (`launch.entry`, a @triton.jit function calling the kernel body), its grid, block
  (32 * num_warps threads) and scalars; shared memory comes from the compiled binary
  (the AOT manifest's `shared_bytes` for `launch.variant`).

Invariants the tests check: every buffer is written by exactly one launch (single assignment, so no
kernel mutates a tensor another launch already produced, and a plugin chain needs no aliasing); no
launch receives one buffer twice; the executor gives each buffer its own allocation (no views of a
shared workspace: Inductor's functionalization of user-defined Triton kernels clones mutated views and
scatters them back, see `execute`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

# Triton pointer types of the buffer dtypes (a torch.bool tensor is one byte per element, as Triton's *i1).
POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.float64: "*fp64",
                 torch.int32: "*i32", torch.bool: "*i1", torch.float8_e4m3fn: "*fp8e4nv"}
# The `MMA` constexpr (tl.dot operand type) is recorded as the name of the operand dtype.
MMA_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float8_e4m3fn: "fp8e4nv"}


@dataclass(frozen=True)
class Buffer:
    """A tensor an op touches: an op input or output, or a workspace buffer the executor allocates."""

    name: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class Arg:
    """One runtime parameter of a kernel: a pointer to `buffer` (None: not passed, the constexprs
    compile out every access) or an int32 scalar `value`."""

    name: str
    buffer: str | None = None
    value: int | None = None

    @property
    def is_pointer(self) -> bool:
        """True for a pointer parameter (a buffer or an absent pointer), False for a scalar."""
        return self.value is None


@dataclass(frozen=True)
class Launch:
    """One kernel launch with concrete grid, launch options, constexprs and arguments."""

    module: str  # mahia.kernels.triton.<module>
    kernel: str  # the @triton.jit function in it
    grid: tuple[int, int, int]
    num_warps: int
    num_stages: int
    constexprs: tuple[tuple[str, object], ...]  # name, value (MMA as a dtype name: "bf16", "fp8e4nv", ...)
    args: tuple[Arg, ...]  # every runtime parameter, in the kernel's signature order
    reads: tuple[str, ...]  # buffer names
    writes: tuple[str, ...]
    entry: str | None = None  # the AOT entry kernel in plugin order (None: this launch has none)

    @property
    def block(self) -> tuple[int, int, int]:
        """Threads per program."""
        return (32 * self.num_warps, 1, 1)

    @property
    def scalars(self) -> dict[str, int]:
        """The int32 scalar arguments by name."""
        return {a.name: a.value for a in self.args if not a.is_pointer}

    @property
    def variant(self) -> str:
        """What determines the compiled binary: kernel, constexprs, warps, stages (grid and scalars do not)."""
        parts = [self.kernel] + [f"{k}{v}" for k, v in self.constexprs if k != "DOT_PRECISION"]
        return "-".join(str(p) for p in parts).replace(" ", "") + f"-w{self.num_warps}s{self.num_stages}"

    def function(self) -> object:
        """The @triton.jit function this launch runs."""
        return getattr(importlib.import_module(f"mahia.kernels.triton.{self.module}"), self.kernel)

    def plugin_order(self) -> Launch:
        """The same launch through its AOT entry kernel (`entry`, a @triton.jit wrapper in the same
        module), whose parameters are the buffers it only reads (input pointers), then the int32
        scalars, then the buffers it writes (output pointers), each group in this launch's signature
        order; absent pointers are dropped (the entry passes None). This is the order a TensorRT AOT
        plugin passes."""
        if self.entry is None:
            raise ValueError(f"{self.kernel} with {dict(self.constexprs)} has no AOT entry kernel")
        present = [a for a in self.args if not (a.is_pointer and a.buffer is None)]
        inputs = [a for a in present if a.is_pointer and a.buffer not in self.writes]
        scalars = [a for a in present if not a.is_pointer]
        outputs = [a for a in present if a.is_pointer and a.buffer in self.writes]
        return replace(self, kernel=self.entry, args=tuple(inputs + scalars + outputs), entry=None)


@dataclass(frozen=True)
class KernelPlan:
    """Everything one op call launches at concrete sizes; see the module docstring."""

    op: str
    inputs: tuple[str, ...]  # buffer names of the op's tensor inputs, in op order
    outputs: tuple[str, ...]
    buffers: tuple[Buffer, ...]  # inputs, outputs and workspace
    launches: tuple[Launch, ...]
    plan_inputs: Mapping[str, object] = field(default_factory=dict)  # the plan() arguments, for the manifest

    @property
    def workspace(self) -> tuple[Buffer, ...]:
        """The intermediate buffers the executor allocates (neither op input nor output)."""
        named = set(self.inputs) | set(self.outputs)
        return tuple(b for b in self.buffers if b.name not in named)

    def buffer(self, name: str) -> Buffer:
        """The buffer of that name."""
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(f"plan {self.op}: no buffer {name!r}")


def pointer(name: str, buffer: str | None = None) -> Arg:
    """A pointer argument (to the buffer of the parameter's name without `_ptr`, unless given)."""
    return Arg(name, buffer=buffer if buffer is not None else name.removesuffix("_ptr"))


def scalar(name: str, value: int) -> Arg:
    """An int32 scalar argument."""
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise ValueError(f"kernel scalar {name}={value!r} is not an int")
    if isinstance(value, int) and not -2 ** 31 <= value < 2 ** 31:
        raise ValueError(f"kernel scalar {name}={value} does not fit an int32")
    return Arg(name, value=value)


def launch(module: str, kernel: str, grid: tuple[int, ...], num_warps: int, num_stages: int,
           constexprs: Mapping[str, object], args: list[Arg], reads: tuple[str, ...],
           writes: tuple[str, ...], entry: str | None = "") -> Launch:
    """A Launch with the grid padded to three dimensions; entry defaults to `<kernel>_entry`."""
    grid3 = tuple(grid) + (1,) * (3 - len(grid))
    return Launch(module, kernel, grid3, num_warps, num_stages, tuple(constexprs.items()), tuple(args),
                  tuple(reads), tuple(writes), f"{kernel}_entry" if entry == "" else entry)


def _constexpr_values(launch_: Launch, function: object) -> dict[str, object]:
    """Constexprs as Triton takes them: MMA as a tl dtype (see launch.mma_dtype)."""
    from mahia.kernels.triton.launch import mma_dtype

    values = dict(launch_.constexprs)
    if "MMA" in values:
        values["MMA"] = mma_dtype(values["MMA"], function)
    return values


def _launch(function: object, grid: tuple[int, int, int], args: list[object], constexprs: dict[str, object],
            num_warps: int, num_stages: int) -> None:
    """Launch one kernel (through wrap_triton when compiled, so torch.compile and export see it)."""
    from mahia.kernels.triton.launch import traceable

    traceable(function)[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)


_PLAIN = (int, float, bool, str, type(None), torch.dtype)
_CACHE: dict[tuple, KernelPlan] = {}
_CACHE_LIMIT = 4096  # distinct (op, shape, dtype) calls kept; a few kB each


def _frozen(value: object) -> object:
    """A hashable form of a plan argument made of plain values, dicts and tuples; None if it holds anything else
    (a torch.SymInt while torch.compile traces: its plan must be built from the symbols every time)."""
    if isinstance(value, _PLAIN):
        return ("v", value)
    if isinstance(value, tuple):
        items = tuple(_frozen(v) for v in value)
        return None if None in items else ("t", items)
    if isinstance(value, Mapping):
        items = tuple((k, _frozen(v)) for k, v in sorted(value.items()))
        return None if any(v is None for _, v in items) else ("d", items)
    return None


def cached_plan(plan_fn: Callable[..., KernelPlan], *args: object, **kwargs: object) -> KernelPlan:
    """plan_fn(*args, **kwargs), built once per distinct arguments: building a plan costs 30-240 us of Python
    (moe_ffn's at 4,136 tokens 240 us, ssd_scan's 183 us on the 2-core CPU), which eager launches pay per call."""
    key = _frozen((plan_fn.__module__, plan_fn.__name__, args, kwargs))
    if key is None:
        return plan_fn(*args, **kwargs)
    plan = _CACHE.get(key)
    if plan is None:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        plan = _CACHE[key] = plan_fn(*args, **kwargs)
    return plan


def execute(plan: KernelPlan, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Run a plan: `tensors` holds its inputs and outputs (any shape, contiguous as the plan assumes);
    each workspace buffer gets its own allocation (a view of one shared workspace would be a mutated
    view under torch.compile: functionalization clones it and scatters it back into the base, and
    the base then aliases every other view). Returns all buffers by name."""
    missing = [name for name in plan.inputs + plan.outputs if name not in tensors]
    if missing:
        raise ValueError(f"{plan.op}: execute needs tensors {missing}")
    device = tensors[plan.inputs[0]].device
    buffers = dict(tensors)
    for buf in plan.workspace:
        buffers[buf.name] = torch.empty(buf.numel, dtype=buf.dtype, device=device)
    for step in plan.launches:
        function = step.function()
        args = [None if a.is_pointer and a.buffer is None else buffers[a.buffer] if a.is_pointer else a.value
                for a in step.args]
        _launch(function, step.grid, args, _constexpr_values(step, function), step.num_warps, step.num_stages)
    return buffers
