"""The `mahia::` custom ops: the model's hot ops as single nodes for torch.export.

Each op is a `torch.library.triton_op`: on CUDA tensors (half, bfloat16, float32) it launches its
Triton kernel (mahia.kernels.triton, imported on first use) through `wrap_triton`, so torch.compile
and AOTInductor see and embed the kernels; on every other device and dtype it runs its pure-PyTorch
reference (mahia.kernels.reference), the ground truth. Each has a fake (meta) implementation for
tracing with dynamic shapes, and an autograd formula that recomputes the reference under autograd,
so training works through the same op the exporter sees.

To run the references on CUDA tensors too (to compare, or to rule a kernel out), use

    with mahia.kernels.use_reference_ops():
        y = model(**inputs)

or `use_reference_ops(True/False)` to set it for the block. The switch is a contextvars.ContextVar:
it holds per thread and per asyncio task, and nests. It is read when an op runs eagerly (and when
torch.compile traces it: a graph compiled under the switch keeps the references).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from mahia.kernels import reference

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_REFERENCE_OPS = contextvars.ContextVar("mahia_reference_ops", default=False)


@contextlib.contextmanager
def use_reference_ops(enabled: bool = True) -> Iterator[None]:
    """Within the block, every `mahia::` op runs its pure-PyTorch reference, on CUDA tensors too
    (enabled=False: the Triton kernels again, inside an outer block that turned them off)."""
    token = _REFERENCE_OPS.set(bool(enabled))
    try:
        yield
    finally:
        _REFERENCE_OPS.reset(token)


def reference_ops_enabled() -> bool:
    """True inside `use_reference_ops()`."""
    return _REFERENCE_OPS.get()


def _use_triton(*tensors: Tensor) -> bool:
    """The Triton kernel serves CUDA tensors of half, bfloat16 or float32 (unless use_reference_ops is
    on); the reference serves the rest."""
    return not _REFERENCE_OPS.get() and all(t.is_cuda for t in tensors) and tensors[0].dtype in _TRITON_DTYPES


@torch.library.triton_op("mahia::long_conv", mutates_args=())
def long_conv(x: Tensor, filt: Tensor, causal: bool) -> Tensor:
    """FFT long convolution (causal filter [D, L] or two-sided filter [D, 2L-1]) of x [B, D, L]; on CUDA the
    Toeplitz kernel or torch.fft by length and batch (mahia.kernels.triton.long_conv.choose_algorithm)."""
    if _use_triton(x, filt):
        from mahia.kernels.triton import long_conv as kernel

        if kernel.choose_algorithm(x.shape[-1], causal, x.shape[0]) == "toeplitz":
            return kernel.long_conv(x, filt, causal)
    return reference.long_conv(x, filt, causal)


@long_conv.register_fake
def _long_conv_fake(x: Tensor, filt: Tensor, causal: bool) -> Tensor:
    return torch.empty_like(x)


@torch.library.triton_op("mahia::ssd_scan", mutates_args=())
def ssd_scan(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk_size: int) -> Tensor:
    """Mamba-2 SSD scan: x [B, L, H, P], dt [B, L, H], a [H], b/c [B, L, N] -> y [B, L, H, P]."""
    if _use_triton(x, dt, a, b, c):
        from mahia.kernels.triton import ssd_scan as kernel

        return kernel.ssd_scan(x, dt, a, b, c, chunk_size)
    return reference.ssd_scan(x, dt, a, b, c, chunk_size)


@ssd_scan.register_fake
def _ssd_scan_fake(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk_size: int) -> Tensor:
    return torch.empty_like(x)


@torch.library.triton_op("mahia::moe_ffn", mutates_args=())
def moe_ffn(x: Tensor, router_logits: Tensor, mask: Tensor, w1: Tensor, w2: Tensor,
            top_k: int, capacity_factor: float) -> Tensor:
    """Top-k routed SwiGLU experts with weighted combine: x [T, D] -> y [T, D]."""
    if _use_triton(x, router_logits, mask, w1, w2) and w1.dtype == w2.dtype == x.dtype:
        from mahia.kernels.triton import moe_ffn as kernel

        return kernel.moe_ffn(x, router_logits, mask, w1, w2, top_k, capacity_factor)
    return reference.moe_ffn(x, router_logits, mask, w1, w2, top_k, capacity_factor)


@moe_ffn.register_fake
def _moe_ffn_fake(x: Tensor, router_logits: Tensor, mask: Tensor, w1: Tensor, w2: Tensor,
                  top_k: int, capacity_factor: float) -> Tensor:
    return torch.empty_like(x)


@torch.library.triton_op("mahia::moe_ffn_fp8", mutates_args=())
def moe_ffn_fp8(x: Tensor, router_logits: Tensor, mask: Tensor, w1: Tensor, w1_scale: Tensor, w2: Tensor,
                w2_scale: Tensor, top_k: int, capacity_factor: float, x_scale: Tensor | None = None,
                hidden_scale: Tensor | None = None) -> Tensor:
    """moe_ffn with float8_e4m3fn expert weights and float32 per-output-channel scales [E, 2H] / [E, D]; with the
    float32 activation scales x_scale [1] and hidden_scale [E] too, FP8 activations (FP8 tensor-core products)."""
    if _use_triton(x, router_logits, mask, w1, w1_scale, w2, w2_scale) and x.dtype != torch.float32:
        from mahia.kernels.triton import moe_ffn as kernel

        return kernel.moe_ffn(x, router_logits, mask, w1, w2, top_k, capacity_factor, w1_scale=w1_scale,
                              w2_scale=w2_scale, x_scale=x_scale, hidden_scale=hidden_scale)
    return reference.moe_ffn_fp8(x, router_logits, mask, w1, w1_scale, w2, w2_scale, top_k, capacity_factor,
                                 x_scale, hidden_scale)


@moe_ffn_fp8.register_fake
def _moe_ffn_fp8_fake(x: Tensor, router_logits: Tensor, mask: Tensor, w1: Tensor, w1_scale: Tensor, w2: Tensor,
                      w2_scale: Tensor, top_k: int, capacity_factor: float, x_scale: Tensor | None = None,
                      hidden_scale: Tensor | None = None) -> Tensor:
    return torch.empty_like(x)


@torch.library.triton_op("mahia::gate_combine", mutates_args=())
def gate_combine(branches: Tensor, gate_logits: Tensor) -> Tensor:
    """Meta-gate: softmax over 3 branch logits [B, L, 3], weighted sum of branches [B, L, D, 3]."""
    if _use_triton(branches, gate_logits):
        from mahia.kernels.triton import gate_combine as kernel

        return kernel.gate_combine(branches, gate_logits)
    return reference.gate_combine(branches, gate_logits)


@gate_combine.register_fake
def _gate_combine_fake(branches: Tensor, gate_logits: Tensor) -> Tensor:
    return branches.new_empty(branches.shape[:-1])


@torch.library.triton_op("mahia::hyena_short_conv", mutates_args=())
def hyena_short_conv(proj: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """The Hyena short conv of proj [B, L, 3D] (weight [w, 3D], bias [3D]) -> q [B, L, D], k * v [B, D, L]
    (backend "cuda", inference only: no autograd formula)."""
    if _use_triton(proj, weight, bias):
        from mahia.kernels.triton import meta_attention as kernel

        return kernel.hyena_short_conv(proj, weight, bias)
    return reference.hyena_short_conv(proj, weight, bias)


@hyena_short_conv.register_fake
def _hyena_short_conv_fake(proj: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    batch, length, channels = proj.shape
    return proj.new_empty(batch, length, channels // 3), proj.new_empty(batch, channels // 3, length)


@torch.library.triton_op("mahia::meta_attention_combine", mutates_args=())
def meta_attention_combine(q: Tensor, hyena_conv: Tensor, kv: Tensor, skip: Tensor, ssd: Tensor,
                           fourier_conv: Tensor, gate_logits: Tensor) -> Tensor:
    """The meta-attention gate's weighted sum of the three branches, with the Hyena product and the Fourier GELU,
    from the long convs' [B, D, L] outputs (backend "cuda", inference only: no autograd formula)."""
    if _use_triton(q, hyena_conv, kv, skip, ssd, fourier_conv, gate_logits):
        from mahia.kernels.triton import meta_attention as kernel

        return kernel.meta_attention_combine(q, hyena_conv, kv, skip, ssd, fourier_conv, gate_logits)
    return reference.meta_attention_combine(q, hyena_conv, kv, skip, ssd, fourier_conv, gate_logits)


@meta_attention_combine.register_fake
def _meta_attention_combine_fake(q: Tensor, hyena_conv: Tensor, kv: Tensor, skip: Tensor, ssd: Tensor,
                                 fourier_conv: Tensor, gate_logits: Tensor) -> Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.triton_op("mahia::ssd_gated_norm", mutates_args=())
def ssd_gated_norm(y: Tensor, x: Tensor, skip: Tensor, z: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The SSD branch's skip, SiLU gate and RMSNorm of the scan's output y [B, L, H, P] -> [B, L, H * P]
    (backend "cuda", inference only: no autograd formula)."""
    if _use_triton(y, x, skip, z, weight):
        from mahia.kernels.triton import meta_attention as kernel

        return kernel.ssd_gated_norm(y, x, skip, z, weight, eps)
    return reference.ssd_gated_norm(y, x, skip, z, weight, eps)


@ssd_gated_norm.register_fake
def _ssd_gated_norm_fake(y: Tensor, x: Tensor, skip: Tensor, z: Tensor, weight: Tensor, eps: float) -> Tensor:
    return y.new_empty(*y.shape[:2], y.shape[2] * y.shape[3])


def _register_recompute_autograd(op: torch._library.custom_ops.CustomOpDef, fn: Callable[..., Tensor],
                                 num_tensor_args: int) -> None:
    """Backward by recomputing `fn` (the reference) under autograd on the saved inputs.

    The first num_tensor_args arguments are tensors; the rest are static (ints, bools, floats).
    Costs one extra forward per backward, and keeps a single source of truth for the gradient.
    """

    def setup_context(ctx: object, inputs: Sequence[object], output: Tensor) -> None:
        ctx.save_for_backward(*inputs[:num_tensor_args])
        ctx.static_args = tuple(inputs[num_tensor_args:])

    def backward(ctx: object, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        leaves = [t.detach().requires_grad_(needs and t.is_floating_point())
                  for t, needs in zip(ctx.saved_tensors, ctx.needs_input_grad)]
        with torch.enable_grad():
            output = fn(*leaves, *ctx.static_args)
        wanted = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(output, wanted, grad_output, allow_unused=True) if wanted else ())
        tensor_grads = tuple(next(grads) if t.requires_grad else None for t in leaves)
        return tensor_grads + (None,) * len(ctx.static_args)

    op.register_autograd(backward, setup_context=setup_context)


_register_recompute_autograd(long_conv, reference.long_conv, num_tensor_args=2)
_register_recompute_autograd(ssd_scan, reference.ssd_scan, num_tensor_args=5)
_register_recompute_autograd(moe_ffn, reference.moe_ffn, num_tensor_args=5)
_register_recompute_autograd(moe_ffn_fp8, reference.moe_ffn_fp8, num_tensor_args=7)
_register_recompute_autograd(gate_combine, reference.gate_combine, num_tensor_args=2)
