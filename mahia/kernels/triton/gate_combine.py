"""Triton kernel for `mahia::gate_combine`: per-token softmax over 3 branch logits + weighted sum.

One program handles BLOCK_T tokens x BLOCK_D features; the [.., D, 3] branch layout is read as a
[BLOCK_T, BLOCK_D, 4] tile with the 4th lane masked, so each load covers a contiguous run of memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mahia.kernels.triton.plan import Buffer, KernelPlan, cached_plan, execute, launch, pointer, scalar

NUM_BRANCHES = 3


@triton.jit
def gate_combine_kernel(branches_ptr, logits_ptr, out_ptr, num_tokens, dim,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[t, d] = sum_j softmax(logits[t, :])_j * branches[t, d, j], softmax in float32."""
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    tokens = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    feats = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    lanes = tl.arange(0, 4)
    token_ok = tokens < num_tokens
    lane_ok = lanes < 3

    logits = tl.load(logits_ptr + tokens[:, None] * 3 + lanes[None, :],
                     mask=token_ok[:, None] & lane_ok[None, :], other=float("-inf")).to(tl.float32)
    logits = tl.where(lane_ok[None, :], logits, float("-inf"))
    peak = tl.max(logits, axis=1)
    peak = tl.where(token_ok, peak, 0.0)
    weights = tl.exp(logits - peak[:, None])
    weights = weights / tl.sum(weights, axis=1)[:, None]
    # Round the weights to the branch dtype, as the reference (and the model) do.
    weights = weights.to(branches_ptr.dtype.element_ty).to(tl.float32)

    offsets = (tokens[:, None, None] * dim + feats[None, :, None]) * 3 + lanes[None, None, :]
    ok = token_ok[:, None, None] & (feats < dim)[None, :, None] & lane_ok[None, None, :]
    branch = tl.load(branches_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    out = tl.sum(branch * weights[:, None, :], axis=2)
    tl.store(out_ptr + tokens[:, None] * dim + feats[None, :], out.to(out_ptr.dtype.element_ty),
             mask=token_ok[:, None] & (feats < dim)[None, :])


@triton.jit
def gate_combine_kernel_entry(branches_ptr, logits_ptr, num_tokens, dim, out_ptr,
                              BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """AOT entry in plugin order (input pointers, int32 scalars, output pointers)."""
    gate_combine_kernel(branches_ptr, logits_ptr, out_ptr, num_tokens, dim, BLOCK_T, BLOCK_D)


# A memory-bound kernel: this tile streams at 66% of the H100's copy bandwidth (benchmarks/RESULTS.md).
CONFIG = {"BLOCK_T": 4, "BLOCK_D": 256, "num_warps": 4}


def plan(num_tokens: int, dim: int, dtype: torch.dtype) -> KernelPlan:
    """One launch: branches [T, D, 3] and gate_logits [T, 3] (dtype) -> out [T, D]."""
    cfg = CONFIG
    grid = (triton.cdiv(num_tokens, cfg["BLOCK_T"]), triton.cdiv(dim, cfg["BLOCK_D"]))
    step = launch("gate_combine", "gate_combine_kernel", grid, cfg["num_warps"], 1,
                  {"BLOCK_T": cfg["BLOCK_T"], "BLOCK_D": cfg["BLOCK_D"]},
                  [pointer("branches_ptr"), pointer("logits_ptr"), pointer("out_ptr"),
                   scalar("num_tokens", num_tokens), scalar("dim", dim)],
                  reads=("branches", "logits"), writes=("out",))
    buffers = (Buffer("branches", dtype, num_tokens * dim * NUM_BRANCHES), Buffer("logits", dtype, num_tokens * 3),
               Buffer("out", dtype, num_tokens * dim))
    return KernelPlan("gate_combine", ("branches", "logits"), ("out",), buffers, (step,),
                      {"num_tokens": num_tokens, "dim": dim, "dtype": dtype})


def gate_combine(branches: Tensor, gate_logits: Tensor) -> Tensor:
    """Launch the kernel: branches [B, L, D, 3], gate_logits [B, L, 3] -> [B, L, D]."""
    *lead, dim, _ = branches.shape
    branches = branches.contiguous()
    gate_logits = gate_logits.contiguous()
    num_tokens = branches.numel() // (dim * NUM_BRANCHES) if dim else 0
    out = torch.empty(*lead, dim, dtype=branches.dtype, device=branches.device)
    if out.numel() == 0:
        return out
    execute(cached_plan(plan, num_tokens, dim, branches.dtype),
            {"branches": branches, "logits": gate_logits, "out": out})
    return out
