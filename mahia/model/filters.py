"""Implicit long filters: a small MLP of sinusoidal position features times an exponential decay."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mahia.model.config import ModelConfig


def sinusoidal_features(positions: Tensor, num_features: int, max_len: int) -> Tensor:
    """[n] positions (any sign) -> [n, num_features] sin/cos features at geometric frequencies.

    Frequencies depend on the config's max_len, never on the current sequence length, so a filter
    tap at offset t is the same whatever length it is evaluated for (padding invariance needs it).
    """
    half = num_features // 2
    freqs = torch.exp(-math.log(max_len) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class ImplicitFilter(nn.Module):
    """Per-channel filter taps h[d, offset] = MLP(features(offset))[d] * exp(-rate_d * |offset|)."""

    def __init__(self, config: ModelConfig, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.num_features = config.filter_features
        self.max_len = config.max_seq_len + config.num_tabular_tokens
        self.mlp = nn.Sequential(
            nn.Linear(config.filter_features, config.filter_hidden), nn.SiLU(),
            nn.Linear(config.filter_hidden, config.filter_hidden), nn.SiLU(),
            nn.Linear(config.filter_hidden, config.d_model),
        )
        # Decay horizons spread log-uniformly from 4 tokens to the longest sequence.
        horizons = torch.logspace(math.log10(4.0), math.log10(float(self.max_len)), config.d_model)
        self.log_rate = nn.Parameter(-torch.log(horizons))

    def forward(self, length: int, like: Tensor) -> Tensor:
        """Taps for a sequence of `length`: [D, L] causal, or [D, 2L-1] over offsets -(L-1)..(L-1)."""
        if self.causal:
            offsets = torch.arange(length, device=like.device)
        else:
            offsets = torch.arange(1 - length, length, device=like.device)
        taps = self.mlp(sinusoidal_features(offsets, self.num_features, self.max_len).to(like.dtype))
        window = torch.exp(-torch.exp(self.log_rate)[None, :] * offsets.abs().to(torch.float32)[:, None])
        return (taps * window.to(taps.dtype)).t()
