"""Meta-attention: Hyena, Mamba-2 SSD and Fourier branches combined by a per-token softmax gate."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mahia import kernels
from mahia.model.config import ModelConfig
from mahia.model.filters import ImplicitFilter
from mahia.model.norm import RMSNorm


def causal_depthwise_conv(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """Short causal depthwise convolution of x [B, C, L] (conv padded by width - 1 on both sides)."""
    return conv(x)[..., : x.shape[-1]]


class HyenaBranch(nn.Module):
    """Order-2 Hyena: y = q * causal_long_conv(k * v, h) with short convs and an implicit filter."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.proj = nn.Linear(d, 3 * d)
        self.short_conv = nn.Conv1d(3 * d, 3 * d, config.short_conv_width, groups=3 * d,
                                    padding=config.short_conv_width - 1)
        self.filter = ImplicitFilter(config, causal=True)
        self.skip = nn.Parameter(torch.ones(d))

    def forward(self, u: Tensor) -> Tensor:
        """u [B, L, D] -> [B, L, D]; causal, so padding after a position never reaches it."""
        length = u.shape[1]
        q, k, v = causal_depthwise_conv(self.proj(u).transpose(1, 2), self.short_conv).chunk(3, dim=1)
        kv = k * v
        y = kernels.long_conv(kv, self.filter(length, u), True) + self.skip[:, None] * kv
        return (q * y).transpose(1, 2)


class SSDBranch(nn.Module):
    """Mamba-2 selective state space branch (scalar decay per head, input-dependent dt, B, C).

    As in Mamba-2, the gated output is RMS-normalised before out_proj: without it the scan's output
    grew to ~1e5 in the trained model, which no per-tensor int8 activation scale can represent.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.heads, self.head_dim, self.state = config.ssm_heads, config.ssm_head_dim, config.d_state
        self.chunk_size = config.chunk_size
        inner = self.heads * self.head_dim
        self.proj = nn.Linear(config.d_model, 2 * inner + 2 * self.state + self.heads)
        self.norm = RMSNorm(inner, config.norm_eps)
        self.out_proj = nn.Linear(inner, config.d_model)
        # Mamba-2 initialisation: decay rates in [1, 16], dt in [1e-3, 1e-1] after softplus.
        self.a_log = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, self.heads)))
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), self.heads))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.skip = nn.Parameter(torch.ones(self.heads))

    def scan(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u [B, L, D] -> the scan's output y and input x [B, L, heads, head_dim], and the gate z [B, L, inner];
        in float32 for fp16 activations: the trained default's scan passes fp16's largest value, 65504 (its chunk
        sums reached 62784 and inf, and every logit was NaN; benchmarks/RESULTS.md)."""
        batch, length, _ = u.shape
        inner = self.heads * self.head_dim
        x, z, b, c, dt = self.proj(u).split([inner, inner, self.state, self.state, self.heads], dim=-1)
        if u.dtype == torch.float16:
            x, z, b, c, dt = (t.float() for t in (x, z, b, c, dt))
        x = x.reshape(batch, length, self.heads, self.head_dim)
        dt = F.softplus(dt + self.dt_bias)
        a = -torch.exp(self.a_log.to(x.dtype))
        return kernels.ssd_scan(x, dt, a, b, c, self.chunk_size), x, z

    def forward(self, u: Tensor) -> Tensor:
        """u [B, L, D] -> [B, L, D]; causal."""
        y, x, z = self.scan(u)
        y = y + self.skip[:, None] * x
        return self.out_proj(self.norm(y.flatten(2) * F.silu(z)).to(u.dtype))


class FourierBranch(nn.Module):
    """Bidirectional global filter over relative offsets, applied by FFT to the masked sequence."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.filter = ImplicitFilter(config, causal=False)

    def forward(self, u: Tensor, mask: Tensor) -> Tensor:
        """u [B, L, D], mask [B, L] -> [B, L, D]; padded positions are zeroed before they can mix in."""
        v = (self.proj(u) * mask[..., None]).transpose(1, 2)
        return F.gelu(kernels.long_conv(v, self.filter(u.shape[1], u), False)).transpose(1, 2)


class MetaAttention(nn.Module):
    """in_proj -> (Hyena, SSD, Fourier) -> per-token softmax gate over branches -> out_proj."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.in_proj = nn.Linear(d, 3 * d)
        self.hyena = HyenaBranch(config)
        self.ssd = SSDBranch(config)
        self.fourier = FourierBranch(config)
        self.gate = nn.Linear(d, 3)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, L, D] (normalised), mask [B, L] -> [B, L, D]."""
        u_hyena, u_ssd, u_fourier = self.in_proj(x).chunk(3, dim=-1)
        branches = torch.stack([self.hyena(u_hyena), self.ssd(u_ssd), self.fourier(u_fourier, mask)], dim=-1)
        return self.out_proj(kernels.gate_combine(branches, self.gate(x)))
