"""Reference sparse top-k mixture of SwiGLU experts: routing, expert FFNs and weighted combine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def route_tokens(router_logits: Tensor, mask: Tensor, top_k: int,
                 capacity_factor: float) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax router with renormalised top-k: (weights [T, k] fp32 (fp64 for fp64 logits), experts [T, k],
    keep [T, k] bool).

    top_k is clamped to the number of experts. Tokens with mask = 0 are never routed (keep is False).
    capacity_factor <= 0 means dropless (inference). Otherwise each expert takes at most
    ceil(capacity_factor * valid_tokens * k / E) assignments. Overflow policy: assignments are served
    first by rank (every token's first choice before any second choice), then by token position;
    an assignment past its expert's capacity is dropped: its weight is not given to the other
    experts, and a token whose every assignment is dropped passes through the residual unchanged.
    """
    num_tokens, num_experts = router_logits.shape
    k = min(top_k, num_experts)
    work = torch.float64 if router_logits.dtype == torch.float64 else torch.float32
    probs = torch.softmax(router_logits.to(work), dim=-1)
    top_probs, experts = probs.topk(k, dim=-1)
    weights = top_probs / top_probs.sum(dim=-1, keepdim=True)
    keep = mask.bool()[:, None].expand(num_tokens, k)
    if capacity_factor > 0:
        # A tensor, not int(): reading the count on the host would stop the GPU, once per MoE layer per step.
        # float64, in the order the Triton kernel's expert_capacity computes it, so that both round alike.
        valid = mask.bool().sum().to(torch.float64)
        capacity = torch.ceil(capacity_factor * valid * k / num_experts).long()
        # Rank-major order: all first choices (by position), then all second choices, ...
        ranked = F.one_hot(experts.t().reshape(-1), num_experts) * keep.t().reshape(-1, 1)
        queue_position = (ranked.cumsum(dim=0) * ranked).sum(dim=-1)  # 1-based, 0 where not kept
        keep = keep & (queue_position <= capacity).reshape(k, num_tokens).t()
    return weights, experts, keep


def moe_ffn(x: Tensor, router_logits: Tensor, mask: Tensor, w1: Tensor, w2: Tensor,
            top_k: int, capacity_factor: float) -> Tensor:
    """y [T, D] = sum over kept top-k experts e of weight * W2_e (silu(x W_gate_e^T) * (x W_up_e^T)).

    x [T, D], router_logits [T, E], mask [T] (nonzero = a real token), w1 [E, 2H, D] holding the
    gate rows then the up rows, w2 [E, D, H]. Expert matmuls run in x's dtype; the weighted combine
    accumulates in float32 (float64 for float64 inputs). Masked tokens get y = 0.
    """
    num_tokens, d_model = x.shape
    num_experts = w1.shape[0]
    if router_logits.shape != (num_tokens, num_experts) or mask.shape != (num_tokens,):
        raise ValueError(f"moe_ffn: expected router_logits [{num_tokens}, {num_experts}] and mask "
                         f"[{num_tokens}], got {tuple(router_logits.shape)} and {tuple(mask.shape)}")
    if (w1.dim() != 3 or w1.shape[2] != d_model or w1.shape[1] % 2
            or w2.shape != (num_experts, d_model, w1.shape[1] // 2)):
        raise ValueError(f"moe_ffn: expected w1 [E, 2H, {d_model}] and w2 [E, {d_model}, H], "
                         f"got {tuple(w1.shape)} and {tuple(w2.shape)}")
    weights, experts, keep = route_tokens(router_logits, mask, top_k, capacity_factor)
    accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.zeros(num_tokens, d_model, dtype=accumulate, device=x.device)
    for e in range(num_experts):
        token, slot = torch.nonzero((experts == e) & keep, as_tuple=True)
        if token.numel() == 0:
            continue
        gate, up = (x[token] @ w1[e].t()).chunk(2, dim=-1)
        expert_out = (F.silu(gate) * up) @ w2[e].t()
        out.index_add_(0, token, expert_out.to(accumulate) * weights[token, slot, None].to(accumulate))
    return out.to(x.dtype)
