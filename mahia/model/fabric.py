"""Dynamic layer fabric: per-sample sigmoid gates on every block's residual updates."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mahia.model.config import ModelConfig


class DynamicNeuroFabric(nn.Module):
    """summary [B, D] -> gates [B, n_layers, 2] in (0, 1): (meta-attention, MoE) of each block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_layers = config.n_layers
        self.proj = nn.Linear(config.d_model, 2 * config.n_layers)
        # Start with every gate mostly open (sigmoid(2) = 0.88) so depth is used from the first step.
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.constant_(self.proj.bias, 2.0)

    def forward(self, summary: Tensor) -> Tensor:
        """Gates for each block's two residual updates."""
        return torch.sigmoid(self.proj(summary)).reshape(-1, self.n_layers, 2)
