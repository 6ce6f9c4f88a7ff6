"""Reference MoE with FP8 (E4M3) expert weights and per-output-channel scales.

The format the FP8 deploy path stores: w_fp8 = round_e4m3(w / scale) with one float32 scale per
output channel (row of w1 [E, 2H, D], row of w2 [E, D, H]), scale = max|row| / 448 (E4M3's largest
finite value). The reference dequantises the weights to the activations' dtype and runs moe_ffn.

With activation scales too (x_scale [1], hidden_scale [E]: calibrated, as the FP8 ONNX export's Q/DQ
pairs are), the experts' input and hidden rows are E4M3 values as well: the reference rounds them to
E4M3 and computes in float32 (float64 for float64 inputs), routing as moe_ffn does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mahia.kernels.reference.moe_ffn import moe_ffn, route_tokens

E4M3_MAX = 448.0


def quantize_experts_fp8(weights: Tensor) -> tuple[Tensor, Tensor]:
    """(float8_e4m3fn weights, float32 scales [..., rows]) with one scale per row (output channel)."""
    amax = weights.detach().float().abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return (weights.float() / scale[..., None]).to(torch.float8_e4m3fn), scale


def dequantize_experts_fp8(weights: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """weights * scale per row, in dtype."""
    return (weights.float() * scale.float()[..., None]).to(dtype)


def fake_quantize_e4m3(values: Tensor, scale: Tensor | float) -> Tensor:
    """values rounded to the E4M3 grid in units of `scale` (clamped to +-448 of them), in values' dtype
    (float32 or float64, where E4M3 values times a float32 scale are exact)."""
    return (values / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(values.dtype) * scale


def moe_ffn_fp8(x: Tensor, router_logits: Tensor, mask: Tensor, w1: Tensor, w1_scale: Tensor, w2: Tensor,
                w2_scale: Tensor, top_k: int, capacity_factor: float, x_scale: Tensor | None = None,
                hidden_scale: Tensor | None = None) -> Tensor:
    """moe_ffn with w1 [E, 2H, D] / w2 [E, D, H] in float8_e4m3fn and scales [E, 2H] / [E, D]; with x_scale [1]
    and hidden_scale [E] too, FP8 activations (see the module docstring)."""
    if w1_scale.shape != w1.shape[:2] or w2_scale.shape != w2.shape[:2]:
        raise ValueError(f"moe_ffn_fp8: expected w1_scale {tuple(w1.shape[:2])} and w2_scale {tuple(w2.shape[:2])}, "
                         f"got {tuple(w1_scale.shape)} and {tuple(w2_scale.shape)}")
    if x_scale is None and hidden_scale is None:
        return moe_ffn(x, router_logits, mask, dequantize_experts_fp8(w1, w1_scale, x.dtype),
                       dequantize_experts_fp8(w2, w2_scale, x.dtype), top_k, capacity_factor)
    num_experts = w1.shape[0]
    if x_scale is None or hidden_scale is None or x_scale.numel() != 1 or hidden_scale.shape != (num_experts,):
        raise ValueError(f"moe_ffn_fp8: FP8 activations take x_scale [1] and hidden_scale [{num_experts}], got "
                         f"{None if x_scale is None else tuple(x_scale.shape)} and "
                         f"{None if hidden_scale is None else tuple(hidden_scale.shape)}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    weights, experts, keep = route_tokens(router_logits, mask, top_k, capacity_factor)
    x_q = fake_quantize_e4m3(x.to(work), x_scale.to(work).reshape(()))
    w1_d, w2_d = dequantize_experts_fp8(w1, w1_scale, work), dequantize_experts_fp8(w2, w2_scale, work)
    out = torch.zeros(x.shape, dtype=work, device=x.device)
    for e in range(num_experts):
        token, slot = torch.nonzero((experts == e) & keep, as_tuple=True)
        gate, up = (x_q[token] @ w1_d[e].t()).chunk(2, dim=-1)
        hidden = fake_quantize_e4m3(F.silu(gate) * up, hidden_scale[e].to(work))
        out.index_add_(0, token, (hidden @ w2_d[e].t()) * weights[token, slot, None].to(work))
    return out.to(x.dtype)
