"""Reference of the meta-attention's elementwise ends as backend "cuda" fuses them (mahia.kernels.triton.
meta_attention): the Hyena short convolution with its k * v product, the gate's weighted sum with the branches'
last steps, and the SSD branch's gated RMSNorm. Float32 arithmetic (float64 for float64 inputs), each output
rounded once to the input dtype (k and v too, before their product)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def hyena_short_conv(proj: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """proj [B, L, 3D], weight [w, 3D], bias [3D] -> (q [B, L, D], kv [B, D, L]).

    c [B, 3D, L] is the causal depthwise convolution of width w of proj along L: c[t] = bias + sum_j weight[j] *
    proj[t - w + 1 + j] (zero before the start), summed in that order; q, k, v = c split in three along the
    channels, each rounded to proj's dtype, and kv = k * v rounded again: the model's depthwise nn.Conv1d (as it
    accumulates) then k * v.
    """
    if proj.dim() != 3 or proj.shape[-1] % 3 or weight.shape[1:] != proj.shape[-1:] or bias.shape != proj.shape[-1:]:
        raise ValueError(f"hyena_short_conv: expected proj [B, L, 3D], weight [w, 3D], bias [3D], got "
                         f"{tuple(proj.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    width, length = weight.shape[0], proj.shape[1]
    compute = torch.promote_types(proj.dtype, torch.float32)
    padded = F.pad(proj.transpose(1, 2), (width - 1, 0))
    acc = bias.to(compute)[:, None]
    for j in range(width):
        acc = torch.addcmul(acc, weight[j].to(compute)[:, None], padded[..., j:j + length].to(compute))
    q, k, v = acc.to(proj.dtype).chunk(3, dim=1)
    return q.transpose(1, 2).contiguous(), (k.to(compute) * v.to(compute)).to(proj.dtype)


def meta_attention_combine(q: Tensor, hyena_conv: Tensor, kv: Tensor, skip: Tensor, ssd: Tensor,
                           fourier_conv: Tensor, gate_logits: Tensor) -> Tensor:
    """out [B, L, D] = w0 * hyena + w1 * ssd + w2 * fourier, rounded once to q's dtype, where w = softmax(gate_logits)
    over the last dim, hyena = q * (hyena_conv + skip * kv) and fourier = gelu(fourier_conv) (erf form).

    q, ssd [B, L, D]; hyena_conv, kv, fourier_conv [B, D, L] (the long convs' layout); skip [D]; gate_logits [B, L, 3].
    """
    batch, length, dim = q.shape
    shapes = {"ssd": (ssd, (batch, length, dim)), "hyena_conv": (hyena_conv, (batch, dim, length)),
              "kv": (kv, (batch, dim, length)), "fourier_conv": (fourier_conv, (batch, dim, length)),
              "skip": (skip, (dim,)), "gate_logits": (gate_logits, (batch, length, 3))}
    for name, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"meta_attention_combine: {name} must be {list(shape)} for q {list(q.shape)}, "
                             f"got {list(tensor.shape)}")
    compute = torch.promote_types(q.dtype, torch.float32)
    weights = torch.softmax(gate_logits.to(compute), dim=-1)
    hyena = q.to(compute) * (hyena_conv.to(compute) + skip.to(compute)[:, None] * kv.to(compute)).transpose(1, 2)
    fourier = F.gelu(fourier_conv.to(compute)).transpose(1, 2)
    out = weights[..., 0, None] * hyena + weights[..., 1, None] * ssd.to(compute) + weights[..., 2, None] * fourier
    return out.to(q.dtype)


def ssd_gated_norm(y: Tensor, x: Tensor, skip: Tensor, z: Tensor, weight: Tensor, eps: float) -> Tensor:
    """out [B, L, H * P] = g * rsqrt(mean(g^2) + eps) * weight, rounded once to y's dtype, where g = (y + skip[h] * x)
    * silu(z) over the flattened heads: the SSD branch's skip, SiLU gate and RMSNorm.

    y, x [B, L, H, P] (the scan's output and input), skip [H], z [B, L, H * P], weight [H * P].
    """
    batch, length, heads, head_dim = y.shape
    shapes = {"x": (x, (batch, length, heads, head_dim)), "skip": (skip, (heads,)),
              "z": (z, (batch, length, heads * head_dim)), "weight": (weight, (heads * head_dim,))}
    for name, (tensor, shape) in shapes.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"ssd_gated_norm: {name} must be {list(shape)} for y {list(y.shape)}, "
                             f"got {list(tensor.shape)}")
    compute = torch.promote_types(y.dtype, torch.float32)
    gated = (y.to(compute) + skip.to(compute)[:, None] * x.to(compute)).flatten(2) * F.silu(z.to(compute))
    normed = gated * torch.rsqrt(gated.square().mean(dim=-1, keepdim=True) + eps)
    return (normed * weight.to(compute)).to(y.dtype)
