"""How the launchers call a Triton kernel: through torch.library.wrap_triton when compiled, directly
when running under the Triton interpreter (TRITON_INTERPRET=1), which wrap_triton does not accept."""

from __future__ import annotations

import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

_TL_DTYPES = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32, "fp8e4nv": tl.float8e4nv}


def is_interpreted(kernel: object) -> bool:
    """True when the kernel was decorated under TRITON_INTERPRET=1 (runs on CPU tensors)."""
    return not isinstance(kernel, JITFunction)


def traceable(kernel: object) -> object:
    """The kernel wrapped for torch.compile / torch.export tracing, or itself under the interpreter."""
    if is_interpreted(kernel):
        return kernel
    return torch.library.wrap_triton(kernel)


def mma_dtype(name: str, kernel: object) -> tl.dtype:
    """The dtype of tl.dot operands (the plans' MMA constexpr, "bf16" / "fp16" / "fp32" / "fp8e4nv"), except
    bfloat16 under the interpreter.

    The Triton interpreter (3.x) multiplies bfloat16 dot operands as raw 16-bit integers (numpy has
    no bfloat16), so there the operands, already rounded to bfloat16, are widened to float32.
    """
    if name == "bf16" and is_interpreted(kernel):
        return tl.float32
    return _TL_DTYPES[name]


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact float32 FMA for float32 inputs (the reference is float32)."""
    return "ieee" if dtype == torch.float32 else "tf32"
