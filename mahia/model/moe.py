"""Sparse top-k mixture of SwiGLU experts (the `mahia::moe_ffn` op) and its training losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mahia import kernels
from mahia.model.config import ModelConfig


class MixtureOfExperts(nn.Module):
    """Router (linear -> logits) + `mahia::moe_ffn`: dropless in eval, capacity-limited in training."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, h, e = config.d_model, config.expert_hidden, config.num_experts
        self.top_k = config.effective_top_k
        self.capacity_factor = config.capacity_factor
        self.router = nn.Linear(d, e, bias=False)
        self.w1 = nn.Parameter(torch.randn(e, 2 * h, d) * d ** -0.5)
        self.w2 = nn.Parameter(torch.randn(e, d, h) * h ** -0.5 * 0.5)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, L, D], mask [B, L] -> (y [B, L, D], router_logits [B*L, E])."""
        flat = x.reshape(-1, x.shape[-1])
        logits = self.router(flat)
        capacity = self.capacity_factor if self.training else 0.0
        y = kernels.moe_ffn(flat, logits, mask.reshape(-1).bool(), self.w1, self.w2, self.top_k, capacity)
        return y.reshape(x.shape), logits


def moe_aux_losses(router_logits: Tensor, mask: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """(load-balancing loss, router z-loss) over the real tokens only.

    Load balance (Switch Transformer, generalised to top-k): E * sum_e f_e * P_e, where f_e is the
    fraction of top-k assignments that go to expert e and P_e the mean router probability of e;
    it is 1 for a perfectly uniform router. z-loss: mean of logsumexp(logits)^2.
    """
    num_experts = router_logits.shape[-1]
    logits = router_logits[mask.reshape(-1).bool()].float()
    if logits.shape[0] == 0:
        raise ValueError("moe_aux_losses: no real tokens (every mask entry is 0)")
    probs = torch.softmax(logits, dim=-1)
    k = min(top_k, num_experts)
    assignments = F.one_hot(probs.topk(k, dim=-1).indices, num_experts).sum(dim=1).float()
    fraction = assignments.mean(dim=0) / k
    load_balance = num_experts * (fraction * probs.mean(dim=0)).sum()
    z_loss = torch.logsumexp(logits, dim=-1).square().mean()
    return load_balance, z_loss
