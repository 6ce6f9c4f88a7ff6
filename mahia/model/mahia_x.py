"""MAHIA-X: embedding -> blocks of (meta-attention, MoE) under fabric gates -> graph memory -> pooled head."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from mahia.model.config import ModelConfig
from mahia.model.embedding import InputEmbedding
from mahia.model.fabric import DynamicNeuroFabric
from mahia.model.memory import GraphDiffusionMemory
from mahia.model.meta_attention import MetaAttention
from mahia.model.moe import MixtureOfExperts
from mahia.model.norm import RMSNorm

INPUT_NAMES = ("input_ids", "attention_mask", "numeric", "categorical")
OUTPUT_NAMES = ("logits",)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x [B, L, D] over positions where mask [B, L] is 1."""
    return (x * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)


class Block(nn.Module):
    """Pre-norm residual block: x + g0 * MetaAttention(norm(x)), then x + g1 * MoE(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention = MetaAttention(config)
        self.moe_norm = RMSNorm(config.d_model, config.norm_eps)
        self.moe = MixtureOfExperts(config)

    def forward(self, x: Tensor, mask: Tensor, gates: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, L, D], mask [B, L], gates [B, 2] -> (x, router_logits)."""
        x = x + gates[:, 0, None, None] * self.attention(self.attention_norm(x), mask)
        update, router_logits = self.moe(self.moe_norm(x), mask)
        return x + gates[:, 1, None, None] * update, router_logits


class ModelOutput(NamedTuple):
    """Logits plus what training needs: each block's router logits and the token mask."""

    logits: Tensor
    router_logits: tuple[Tensor, ...]
    token_mask: Tensor


class MahiaX(nn.Module):
    """The MAHIA-X classifier over text + tabular inputs; the reference for every numerical check."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = InputEmbedding(config)
        self.fabric = DynamicNeuroFabric(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.memory_norm = RMSNorm(config.d_model, config.norm_eps)
        self.memory = GraphDiffusionMemory(config)
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.num_classes)

    def forward_with_router_logits(self, input_ids: Tensor, attention_mask: Tensor, numeric: Tensor,
                                   categorical: Tensor) -> ModelOutput:
        """Full forward pass, keeping every block's router logits for the MoE training losses."""
        x, mask = self.embedding(input_ids, attention_mask, numeric, categorical)
        gates = self.fabric(masked_mean(x, mask))
        router_logits = []
        for i, block in enumerate(self.blocks):
            x, logits = block(x, mask, gates[:, i])
            router_logits.append(logits)
        h = self.memory_norm(x)
        x = x + self.memory(h, masked_mean(h, mask))
        pooled = masked_mean(self.final_norm(x), mask)
        return ModelOutput(self.head(pooled), tuple(router_logits), mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, numeric: Tensor, categorical: Tensor) -> Tensor:
        """logits [B, num_classes] for input_ids [B, L], attention_mask [B, L], numeric [B, Fn], categorical [B, Fc]."""
        return self.forward_with_router_logits(input_ids, attention_mask, numeric, categorical).logits


def build_model(config: ModelConfig, seed: int = 0) -> MahiaX:
    """A freshly initialised model; the same seed gives the same weights, without touching global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MahiaX(config)
