"""Reference meta-gate combine: per-token softmax over the 3 branch logits, then the weighted sum."""

from __future__ import annotations

import torch
from torch import Tensor


def gate_combine(branches: Tensor, gate_logits: Tensor) -> Tensor:
    """out [B, L, D] = sum_j softmax(gate_logits)[..., j] * branches[..., j].

    branches [B, L, D, 3], gate_logits [B, L, 3]. The softmax runs in float32 and its weights are
    rounded to the branches' dtype before the weighted sum, exactly as MetaAttention computes it.
    """
    if branches.dim() != 4 or branches.shape[-1] != 3 or gate_logits.shape != (*branches.shape[:2], 3):
        raise ValueError(f"gate_combine: expected branches [B, L, D, 3] and gate_logits [B, L, 3], "
                         f"got {tuple(branches.shape)} and {tuple(gate_logits.shape)}")
    weights = torch.softmax(gate_logits.float(), dim=-1).to(branches.dtype)
    return (branches * weights[..., None, :]).sum(dim=-1)
