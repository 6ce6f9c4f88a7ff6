"""Reference MoE with FP8 (E4M3) expert weights and per-output-channel scales.

The format the FP8 deploy path stores: w_fp8 = round_e4m3(w / scale) with one float32 scale per
output channel (row of w1 [E, 2H, D], row of w2 [E, D, H]), scale = max|row| / 448 (E4M3's largest
finite value). The reference dequantises the weights to the activations' dtype and runs moe_ffn.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mahia.kernels.reference.moe_ffn import moe_ffn

E4M3_MAX = 448.0


def quantize_experts_fp8(weights: Tensor) -> tuple[Tensor, Tensor]:
    """(float8_e4m3fn weights, float32 scales [..., rows]) with one scale per row (output channel)."""
    amax = weights.detach().float().abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return (weights.float() / scale[..., None]).to(torch.float8_e4m3fn), scale


def dequantize_experts_fp8(weights: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """weights * scale per row, in dtype."""
    return (weights.float() * scale.float()[..., None]).to(dtype)


def moe_ffn_fp8(x: Tensor, router_logits: Tensor, mask: Tensor, w1: Tensor, w1_scale: Tensor, w2: Tensor,
                w2_scale: Tensor, top_k: int, capacity_factor: float) -> Tensor:
    """moe_ffn with w1 [E, 2H, D] / w2 [E, D, H] in float8_e4m3fn and scales [E, 2H] / [E, D]."""
    if w1_scale.shape != w1.shape[:2] or w2_scale.shape != w2.shape[:2]:
        raise ValueError(f"moe_ffn_fp8: expected w1_scale {tuple(w1.shape[:2])} and w2_scale {tuple(w2.shape[:2])}, "
                         f"got {tuple(w1_scale.shape)} and {tuple(w2_scale.shape)}")
    return moe_ffn(x, router_logits, mask, dequantize_experts_fp8(w1, w1_scale, x.dtype),
                   dequantize_experts_fp8(w2, w2_scale, x.dtype), top_k, capacity_factor)
