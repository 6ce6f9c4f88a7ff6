"""Graph-diffusion memory: input-conditioned memory nodes diffused over a learned graph, read by attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mahia.model.config import ModelConfig


class GraphDiffusionMemory(nn.Module):
    """M learned nodes, shifted by the sample's summary, K lazy random-walk steps, then token reads.

    A pure function of its input: the per-sample memory is rebuilt on every call, nothing persists
    across calls or samples.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, m = config.d_model, config.memory_nodes
        self.steps = config.diffusion_steps
        self.nodes = nn.Parameter(torch.randn(m, d) * 0.02)
        self.adjacency_logits = nn.Parameter(torch.randn(m, m) * 0.02)
        self.condition = nn.Linear(d, d)
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d)

    def adjacency(self) -> Tensor:
        """Row-normalised (row-stochastic) adjacency [M, M]."""
        return torch.softmax(self.adjacency_logits, dim=-1)

    def forward(self, x: Tensor, summary: Tensor) -> Tensor:
        """x [B, L, D] tokens, summary [B, D] pooled input -> [B, L, D] read from the diffused memory."""
        adjacency = self.adjacency().to(x.dtype)
        memory = self.nodes[None] + self.condition(summary)[:, None, :]
        for _ in range(self.steps):
            memory = 0.5 * (memory + torch.einsum("ij,bjd->bid", adjacency, memory))
        scores = self.query(x) @ self.key(memory).transpose(1, 2) / math.sqrt(x.shape[-1])
        attention = torch.softmax(scores.float(), dim=-1).to(x.dtype)
        return self.out_proj(attention @ self.value(memory))
