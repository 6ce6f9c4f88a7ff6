"""Triton kernels for `mahia::moe_ffn`: routing, block-aligned permutation, grouped SwiGLU, combine.

Four launches, all deterministic (no atomics; every output element has one writer, sums run in a
fixed order):
1. `moe_route_kernel` (one program): softmax router, top-k, renormalise, capacity (rank-major queue,
   as in the reference), then the permutation: assignments grouped by expert, each expert's segment
   padded to a multiple of BLOCK_M so that a row block belongs to one expert (`block_expert`).
2. `moe_up_kernel`: per row block, x rows gathered by token, times the expert's gate and up rows
   (both accumulated in one pass over D), silu(gate) * up written in permuted row order.
3. `moe_down_kernel`: those rows times the expert's down matrix, scattered to one row per
   assignment (token * k + slot).
4. `moe_combine_kernel`: y[t] = sum over kept slots of weight * expert row, in float32, slot order.
The row-block grid is sized for the worst case (T*k + E*(BLOCK_M-1) rows); blocks past the used
rows exit at once, so there is no host synchronisation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mahia.kernels.triton.launch import dot_precision
from mahia.kernels.triton.plan import MMA_NAMES, Arg, Buffer, KernelPlan, cached_plan, execute, launch, pointer, scalar

E4M3_MAX: tl.constexpr = tl.constexpr(448.0)  # the largest finite float8_e4m3fn


@triton.jit
def topk_tile(logits, t_ok, cols, col_ok, slots, K: tl.constexpr, E_PAD: tl.constexpr, K_PAD: tl.constexpr,
              BLOCK_T: tl.constexpr):
    """Softmax over experts, top-K, renormalised: (weights [BLOCK_T, K_PAD], experts [BLOCK_T, K_PAD]).

    Takes the logits loaded (float32 [BLOCK_T, E_PAD], -inf in the padding columns) in the kernel body
    itself: torch's mutation analysis of user-defined Triton kernels (torch/_higher_order_ops/
    triton_kernel_wrap.py) follows a helper call's result back to every argument of the call, so a
    pointer passed into a helper whose result feeds a store address is taken for a written buffer
    (tests/kernels/test_kernels_functionalization.py)."""
    peak = tl.where(t_ok, tl.max(logits, axis=1), 0.0)
    probs = tl.exp(logits - peak[:, None])
    probs = probs / tl.sum(probs, axis=1)[:, None]
    probs = tl.where(col_ok[None, :], probs, -1.0)
    top_vals = tl.zeros((BLOCK_T, K_PAD), dtype=tl.float32)
    top_idx = tl.zeros((BLOCK_T, K_PAD), dtype=tl.int32)
    for r in tl.static_range(K):
        best = tl.max(probs, axis=1)
        # Lowest expert index among ties, as a deterministic rule.
        idx = tl.min(tl.where(probs == best[:, None], cols[None, :], E_PAD), axis=1)
        top_vals = tl.where(slots[None, :] == r, best[:, None], top_vals)
        top_idx = tl.where(slots[None, :] == r, idx[:, None], top_idx)
        probs = tl.where(cols[None, :] == idx[:, None], -1.0, probs)
    return top_vals / tl.sum(top_vals, axis=1)[:, None], top_idx


@triton.jit
def expert_capacity(capacity_factor, valid, num_experts, K: tl.constexpr):
    """Assignments each expert takes when capacity-limited: ceil(capacity_factor * valid * k / E) in
    float64, in the reference's arithmetic order (capacity_factor: the loaded float64 value)."""
    raw = capacity_factor * valid.to(tl.float64) * K / num_experts
    capacity = raw.to(tl.int32)
    capacity += (capacity.to(tl.float64) < raw).to(tl.int32)
    return capacity


@triton.jit
def expert_segments(totals, capacity, BLOCK_M: tl.constexpr):
    """From per-expert assignment counts: (kept, segment starts, segment ends, used rows), each
    segment padded to a multiple of BLOCK_M in the permuted rows."""
    kept = tl.minimum(totals, capacity)
    padded = tl.cdiv(kept, BLOCK_M) * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    return kept, ends - padded, ends, tl.sum(padded, axis=0)


@triton.jit
def store_block_owners(ends, used_rows, col_ok, block_expert_ptr, max_blocks, BLOCK_M: tl.constexpr,
                       BLOCK_B: tl.constexpr):
    """The owner expert of every row block (-1 past the used rows)."""
    for b0 in range(0, max_blocks, BLOCK_B):
        blocks = b0 + tl.arange(0, BLOCK_B)
        first_rows = blocks * BLOCK_M
        owner = tl.sum(((ends[None, :] <= first_rows[:, None]) & col_ok[None, :]).to(tl.int32), axis=1)
        tl.store(block_expert_ptr + blocks, tl.where(first_rows < used_rows, owner, -1), mask=blocks < max_blocks)


@triton.jit
def store_padding(starts, kept, col_ok, sorted_ids_ptr, num_assign, BLOCK_M: tl.constexpr):
    """Sentinel ids (num_assign) in the padding rows of each expert's segment."""
    ends = starts + tl.cdiv(kept, BLOCK_M) * BLOCK_M
    pad_rows = tl.arange(0, BLOCK_M)
    pad_at = starts[:, None] + kept[:, None] + pad_rows[None, :]
    tl.store(sorted_ids_ptr + pad_at, num_assign, mask=col_ok[:, None] & (pad_at < ends[:, None]))


@triton.jit
def moe_route_kernel(logits_ptr, mask_ptr, capacity_factor_ptr, weights_ptr, experts_ptr, queue_ptr,
                     sorted_ids_ptr, block_expert_ptr, num_tokens, num_experts, max_blocks,
                     K: tl.constexpr, E_PAD: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
                     BLOCK_M: tl.constexpr, CAPACITY_LIMITED: tl.constexpr):
    """Routing and permutation of at most BLOCK_T tokens, in one program (decode sizes).
    capacity_factor_ptr (float64 [1]) is read only when CAPACITY_LIMITED (else pass None)."""
    cols = tl.arange(0, E_PAD)
    col_ok = cols < num_experts
    slots = tl.arange(0, K_PAD)
    num_assign = num_tokens * K
    t = tl.arange(0, BLOCK_T)
    t_ok = t < num_tokens
    real = t_ok & (tl.load(mask_ptr + t, mask=t_ok, other=0) != 0)
    logits = tl.load(logits_ptr + t[:, None] * num_experts + cols[None, :], mask=t_ok[:, None] & col_ok[None, :],
                     other=float("-inf")).to(tl.float32)
    logits = tl.where(col_ok[None, :], logits, float("-inf"))
    weights, top_idx = topk_tile(logits, t_ok, cols, col_ok, slots, K, E_PAD, K_PAD, BLOCK_T)
    out_ok = t_ok[:, None] & (slots < K)[None, :]
    tl.store(weights_ptr + t[:, None] * K + slots[None, :], weights, mask=out_ok)
    tl.store(experts_ptr + t[:, None] * K + slots[None, :], top_idx, mask=out_ok)
    capacity = num_assign
    if CAPACITY_LIMITED:
        capacity = expert_capacity(tl.load(capacity_factor_ptr), tl.sum(real.to(tl.int32), axis=0), num_experts, K)

    # Queue position of each assignment at its expert: rank-major, then token order.
    running = tl.zeros((E_PAD,), dtype=tl.int32)
    for r in tl.static_range(K):
        e = tl.sum(tl.where(slots[None, :] == r, top_idx, 0), axis=1)
        onehot = ((e[:, None] == cols[None, :]) & real[:, None]).to(tl.int32)
        position = tl.sum(onehot * (tl.cumsum(onehot, axis=0) - onehot + running[None, :]), axis=1)
        keep = real & (position < capacity)
        tl.store(queue_ptr + t * K + r, tl.where(keep, position, -1), mask=t_ok)
        running += tl.sum(onehot, axis=0)
    kept, starts, ends, used_rows = expert_segments(running, capacity, BLOCK_M)
    store_block_owners(ends, used_rows, col_ok, block_expert_ptr, max_blocks, BLOCK_M, BLOCK_T)
    store_padding(starts, kept, col_ok, sorted_ids_ptr, num_assign, BLOCK_M)
    tl.debug_barrier()
    for r in tl.static_range(K):
        e = tl.sum(tl.where(slots[None, :] == r, top_idx, 0), axis=1)
        position = tl.load(queue_ptr + t * K + r, mask=t_ok, other=-1)
        start = tl.sum(tl.where(e[:, None] == cols[None, :], starts[None, :], 0), axis=1)
        tl.store(sorted_ids_ptr + start + position, t * K + r, mask=t_ok & (position >= 0))


@triton.jit
def moe_topk_kernel(logits_ptr, mask_ptr, weights_ptr, experts_ptr, counts_ptr, valid_ptr, num_tokens, num_experts,
                    K: tl.constexpr, E_PAD: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """Parallel routing, step 1 of 3: top-k per token, and per (rank, token tile) expert counts."""
    tile = tl.program_id(0)
    num_tiles = tl.num_programs(0)
    cols = tl.arange(0, E_PAD)
    col_ok = cols < num_experts
    slots = tl.arange(0, K_PAD)
    t = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < num_tokens
    real = t_ok & (tl.load(mask_ptr + t, mask=t_ok, other=0) != 0)
    logits = tl.load(logits_ptr + t[:, None] * num_experts + cols[None, :], mask=t_ok[:, None] & col_ok[None, :],
                     other=float("-inf")).to(tl.float32)
    logits = tl.where(col_ok[None, :], logits, float("-inf"))
    weights, top_idx = topk_tile(logits, t_ok, cols, col_ok, slots, K, E_PAD, K_PAD, BLOCK_T)
    out_ok = t_ok[:, None] & (slots < K)[None, :]
    tl.store(weights_ptr + t[:, None] * K + slots[None, :], weights, mask=out_ok)
    tl.store(experts_ptr + t[:, None] * K + slots[None, :], top_idx, mask=out_ok)
    tl.store(valid_ptr + tile, tl.sum(real.to(tl.int32), axis=0))
    for r in tl.static_range(K):
        e = tl.sum(tl.where(slots[None, :] == r, top_idx, 0), axis=1)
        counts = tl.sum(((e[:, None] == cols[None, :]) & real[:, None]).to(tl.int32), axis=0)
        tl.store(counts_ptr + (r * num_tiles + tile) * E_PAD + cols, counts)


@triton.jit
def moe_plan_kernel(counts_ptr, valid_ptr, capacity_factor_ptr, offsets_ptr, plan_ptr, block_expert_ptr,
                    num_tiles, num_tokens, num_experts, max_blocks, K: tl.constexpr, E_PAD: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, CAPACITY_LIMITED: tl.constexpr):
    """Parallel routing, step 2 of 3 (one program): each (rank, tile)'s first queue position per
    expert (rank-major, then tile order) into offsets, capacity, segments, block owners.
    plan = [capacity, starts[E_PAD], kept[E_PAD]]. capacity_factor_ptr as in moe_route_kernel."""
    cols = tl.arange(0, E_PAD)
    col_ok = cols < num_experts
    valid = 0
    for i0 in range(0, num_tiles, BLOCK_R):
        i = i0 + tl.arange(0, BLOCK_R)
        valid += tl.sum(tl.load(valid_ptr + i, mask=i < num_tiles, other=0), axis=0)
    capacity = num_tokens * K
    if CAPACITY_LIMITED:
        capacity = expert_capacity(tl.load(capacity_factor_ptr), valid, num_experts, K)
    running = tl.zeros((E_PAD,), dtype=tl.int32)
    for i0 in range(0, K * num_tiles, BLOCK_R):
        i = i0 + tl.arange(0, BLOCK_R)
        rows_ok = (i < K * num_tiles)[:, None]
        counts = tl.load(counts_ptr + i[:, None] * E_PAD + cols[None, :], mask=rows_ok, other=0)
        first = tl.cumsum(counts, axis=0) - counts + running[None, :]
        tl.store(offsets_ptr + i[:, None] * E_PAD + cols[None, :], first, mask=rows_ok)
        running += tl.sum(counts, axis=0)
    kept, starts, ends, used_rows = expert_segments(running, capacity, BLOCK_M)
    store_block_owners(ends, used_rows, col_ok, block_expert_ptr, max_blocks, BLOCK_M, BLOCK_R)
    tl.store(plan_ptr, capacity)
    tl.store(plan_ptr + 1 + cols, starts)
    tl.store(plan_ptr + 1 + E_PAD + cols, kept)


@triton.jit
def moe_scatter_kernel(mask_ptr, experts_ptr, offsets_ptr, plan_ptr, queue_ptr, sorted_ids_ptr, num_tokens,
                       num_experts, K: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
                       BLOCK_M: tl.constexpr):
    """Parallel routing, step 3 of 3: queue position of every assignment, and its permuted row; the
    first program also writes the sentinel ids of the segments' padding rows."""
    tile = tl.program_id(0)
    r = tl.program_id(1)
    num_tiles = tl.num_programs(0)
    cols = tl.arange(0, E_PAD)
    t = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < num_tokens
    real = t_ok & (tl.load(mask_ptr + t, mask=t_ok, other=0) != 0)
    e = tl.load(experts_ptr + t * K + r, mask=t_ok, other=0)
    onehot = ((e[:, None] == cols[None, :]) & real[:, None]).to(tl.int32)
    first = tl.load(offsets_ptr + (r * num_tiles + tile) * E_PAD + cols)
    position = tl.sum(onehot * (tl.cumsum(onehot, axis=0) - onehot + first[None, :]), axis=1)
    keep = real & (position < tl.load(plan_ptr))
    tl.store(queue_ptr + t * K + r, tl.where(keep, position, -1), mask=t_ok)
    starts = tl.load(plan_ptr + 1 + cols)
    start = tl.sum(tl.where(e[:, None] == cols[None, :], starts[None, :], 0), axis=1)
    tl.store(sorted_ids_ptr + start + position, t * K + r, mask=keep)
    if (tile == 0) & (r == 0):
        store_padding(starts, tl.load(plan_ptr + 1 + E_PAD + cols), cols < num_experts, sorted_ids_ptr,
                      num_tokens * K, BLOCK_M)


@triton.jit
def round_to_e4m3(v):
    """v (float32) clamped to +-448 and rounded to the nearest E4M3 value, ties to even: a float32 the cast to
    tl.float8e4nv keeps exactly.

    Why not the cast alone: on the GPU it rounds the same way (cvt.rn.satfinite), but Triton's interpreter, which
    runs these kernels in CI, rounds half up without carrying into the exponent (1.998 -> 1.0: triton 3.9,
    interpreter `_convert_float`). Normal values keep 3 of float32's 23 mantissa bits (the add carries into the
    exponent where it must); below 2**-6 E4M3's values are the multiples of 2**-9, which adding and subtracting
    1.5 * 2**14 (a float32 whose ulp is 2**-9) rounds to."""
    v = tl.minimum(tl.maximum(v, -E4M3_MAX), E4M3_MAX)
    bits = v.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
    subnormal = (v + 24576.0) - 24576.0
    return tl.where(tl.abs(v) < 0.015625, subnormal, normal)


@triton.jit
def moe_quantize_kernel(x_ptr, x_scale_ptr, x_fp8_ptr, numel, BLOCK: tl.constexpr):
    """x_fp8 = E4M3(x / x_scale), x_scale one float32: the experts' FP8 input, quantised once per token."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(x_fp8_ptr + offs, round_to_e4m3(x / tl.load(x_scale_ptr)).to(x_fp8_ptr.dtype.element_ty), mask=ok)


@triton.jit
def grouped_tile(num_blocks_m, num_blocks_n, GROUP_M: tl.constexpr):
    """(row block, column tile) of this program, GROUP_M row blocks at a time (L2 reuse of both)."""
    pid = tl.program_id(0)
    per_group = GROUP_M * num_blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def moe_up_kernel(x_ptr, w1_ptr, w1_scale_ptr, x_scale_ptr, hidden_scale_ptr, sorted_ids_ptr, block_expert_ptr,
                  act_ptr, num_assign, d_model, hidden, stride_we, num_blocks_m, K: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                  W_SCALED: tl.constexpr, MMA: tl.constexpr, DOT_PRECISION: tl.constexpr, A_FP8: tl.constexpr):
    """act[row, n] = silu(x[token] . w1[e, n]) * (x[token] . w1[e, H + n]) for one row block.

    W_SCALED: w1 is FP8 with one scale per output channel, applied to the accumulators (the scale
    of channel n factors out of the sum over D); otherwise pass None for w1_scale_ptr.
    A_FP8 (with W_SCALED): x is FP8 too, quantised by the one scale at x_scale_ptr, so the products run
    on FP8 tensor cores; act is written in FP8, divided by its expert's scale (hidden_scale_ptr [E]).
    Otherwise pass None for both scale pointers."""
    pid_m, pid_n = grouped_tile(num_blocks_m, tl.cdiv(hidden, BLOCK_N), GROUP_M)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + rows)
    row_ok = ids < num_assign
    token = ids // K
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < hidden
    w_base = w1_ptr + expert.to(tl.int64) * stride_we
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d_model, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < d_model
        xs = tl.load(x_ptr + token.to(tl.int64)[:, None] * d_model + k[None, :],
                     mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(MMA)
        wg = tl.load(w_base + n[None, :] * d_model + k[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        wu = tl.load(w_base + (n + hidden)[None, :] * d_model + k[:, None],
                     mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        acc_gate = tl.dot(xs, wg.to(MMA), acc_gate, input_precision=DOT_PRECISION)
        acc_up = tl.dot(xs, wu.to(MMA), acc_up, input_precision=DOT_PRECISION)
    if W_SCALED:
        scale_base = w1_scale_ptr + expert * 2 * hidden
        gate_scale = tl.load(scale_base + n, mask=n_ok, other=0.0)
        up_scale = tl.load(scale_base + hidden + n, mask=n_ok, other=0.0)
        if A_FP8:
            x_scale = tl.load(x_scale_ptr)
            gate_scale *= x_scale
            up_scale *= x_scale
        acc_gate *= gate_scale[None, :]
        acc_up *= up_scale[None, :]
    act = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
    if A_FP8:
        act = round_to_e4m3(act / tl.load(hidden_scale_ptr + expert))
    tl.store(act_ptr + rows.to(tl.int64)[:, None] * hidden + n[None, :], act.to(act_ptr.dtype.element_ty),
             mask=n_ok[None, :])


@triton.jit
def moe_down_kernel(act_ptr, w2_ptr, w2_scale_ptr, hidden_scale_ptr, sorted_ids_ptr, block_expert_ptr, out_ptr,
                    num_assign, d_model, hidden, stride_we, num_blocks_m, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, W_SCALED: tl.constexpr,
                    MMA: tl.constexpr, DOT_PRECISION: tl.constexpr, A_FP8: tl.constexpr):
    """out[assignment, n] = act[row] . w2[e, n] for one row block, scattered to assignment rows
    (W_SCALED: FP8 w2, per-output-channel scale applied to the accumulator; otherwise w2_scale_ptr None;
    A_FP8: act is FP8 too, in units of its expert's hidden_scale; otherwise hidden_scale_ptr None)."""
    pid_m, pid_n = grouped_tile(num_blocks_m, tl.cdiv(d_model, BLOCK_N), GROUP_M)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ids = tl.load(sorted_ids_ptr + rows)
    row_ok = ids < num_assign
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < d_model
    w_base = w2_ptr + expert.to(tl.int64) * stride_we
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < hidden
        a = tl.load(act_ptr + rows.to(tl.int64)[:, None] * hidden + k[None, :], mask=k_ok[None, :], other=0.0)
        w = tl.load(w_base + n[None, :] * hidden + k[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        acc = tl.dot(a.to(MMA), w.to(MMA), acc, input_precision=DOT_PRECISION)
    if W_SCALED:
        scale = tl.load(w2_scale_ptr + expert * d_model + n, mask=n_ok, other=0.0)
        if A_FP8:
            scale *= tl.load(hidden_scale_ptr + expert)
        acc *= scale[None, :]
    tl.store(out_ptr + ids.to(tl.int64)[:, None] * d_model + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def moe_combine_kernel(expert_out_ptr, weights_ptr, queue_ptr, y_ptr, num_tokens, d_model,
                       K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """y[t] = sum over kept slots r (in order) of weights[t, r] * expert_out[t * K + r], float32."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t_ok = t < num_tokens
    d_ok = d < d_model
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for r in tl.static_range(K):
        keep = t_ok & (tl.load(queue_ptr + t * K + r, mask=t_ok, other=-1) >= 0)
        w = tl.load(weights_ptr + t * K + r, mask=keep, other=0.0)
        rows = tl.load(expert_out_ptr + (t.to(tl.int64) * K + r)[:, None] * d_model + d[None, :],
                       mask=keep[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        acc += w[:, None] * rows
    tl.store(y_ptr + t.to(tl.int64)[:, None] * d_model + d[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=t_ok[:, None] & d_ok[None, :])


# AOT entries in plugin order (input pointers, int32 scalars, output pointers). Capacity-limited
# routing (training) and the unscaled/FP8 weights are separate entries, as their pointers differ.
@triton.jit
def moe_route_kernel_entry(logits_ptr, mask_ptr, num_tokens, num_experts, max_blocks, weights_ptr, experts_ptr,
                           queue_ptr, sorted_ids_ptr, block_expert_ptr, K: tl.constexpr, E_PAD: tl.constexpr,
                           K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr,
                           CAPACITY_LIMITED: tl.constexpr):
    """AOT entry of moe_route_kernel (dropless)."""
    tl.static_assert(not CAPACITY_LIMITED, "the AOT routing entry is dropless")
    moe_route_kernel(logits_ptr, mask_ptr, None, weights_ptr, experts_ptr, queue_ptr, sorted_ids_ptr, block_expert_ptr,
                     num_tokens, num_experts, max_blocks, K, E_PAD, K_PAD, BLOCK_T, BLOCK_M, CAPACITY_LIMITED)


@triton.jit
def moe_topk_kernel_entry(logits_ptr, mask_ptr, num_tokens, num_experts, weights_ptr, experts_ptr, counts_ptr,
                          valid_ptr, K: tl.constexpr, E_PAD: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """AOT entry of moe_topk_kernel."""
    moe_topk_kernel(logits_ptr, mask_ptr, weights_ptr, experts_ptr, counts_ptr, valid_ptr, num_tokens, num_experts,
                    K, E_PAD, K_PAD, BLOCK_T)


@triton.jit
def moe_plan_kernel_entry(counts_ptr, valid_ptr, num_tiles, num_tokens, num_experts, max_blocks, offsets_ptr, plan_ptr,
                          block_expert_ptr, K: tl.constexpr, E_PAD: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_M: tl.constexpr, CAPACITY_LIMITED: tl.constexpr):
    """AOT entry of moe_plan_kernel (dropless)."""
    tl.static_assert(not CAPACITY_LIMITED, "the AOT routing entry is dropless")
    moe_plan_kernel(counts_ptr, valid_ptr, None, offsets_ptr, plan_ptr, block_expert_ptr, num_tiles, num_tokens,
                    num_experts, max_blocks, K, E_PAD, BLOCK_R, BLOCK_M, CAPACITY_LIMITED)


@triton.jit
def moe_scatter_kernel_entry(mask_ptr, experts_ptr, offsets_ptr, plan_ptr, num_tokens, num_experts, queue_ptr,
                             sorted_ids_ptr, K: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
                             BLOCK_M: tl.constexpr):
    """AOT entry of moe_scatter_kernel."""
    moe_scatter_kernel(mask_ptr, experts_ptr, offsets_ptr, plan_ptr, queue_ptr, sorted_ids_ptr, num_tokens, num_experts,
                       K, E_PAD, BLOCK_T, BLOCK_M)


@triton.jit
def moe_up_kernel_entry(x_ptr, w1_ptr, sorted_ids_ptr, block_expert_ptr, num_assign, d_model, hidden, stride_we,
                        num_blocks_m, act_ptr, K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, W_SCALED: tl.constexpr, MMA: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, A_FP8: tl.constexpr):
    """AOT entry of moe_up_kernel, weights in the activations' dtype."""
    tl.static_assert(not A_FP8, "the AOT entries take activations in their dtype")
    tl.static_assert(not W_SCALED, "moe_up_kernel_scaled_entry takes the FP8 weights")
    moe_up_kernel(x_ptr, w1_ptr, None, None, None, sorted_ids_ptr, block_expert_ptr, act_ptr, num_assign, d_model,
                  hidden, stride_we, num_blocks_m, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, W_SCALED, MMA,
                  DOT_PRECISION, A_FP8)


@triton.jit
def moe_up_kernel_scaled_entry(x_ptr, w1_ptr, w1_scale_ptr, sorted_ids_ptr, block_expert_ptr, num_assign, d_model,
                               hidden, stride_we, num_blocks_m, act_ptr, K: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                               W_SCALED: tl.constexpr, MMA: tl.constexpr, DOT_PRECISION: tl.constexpr,
                               A_FP8: tl.constexpr):
    """AOT entry of moe_up_kernel, FP8 weights with per-channel scales."""
    tl.static_assert(not A_FP8, "the AOT entries take activations in their dtype")
    moe_up_kernel(x_ptr, w1_ptr, w1_scale_ptr, None, None, sorted_ids_ptr, block_expert_ptr, act_ptr, num_assign,
                  d_model, hidden, stride_we, num_blocks_m, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, W_SCALED, MMA,
                  DOT_PRECISION, A_FP8)


@triton.jit
def moe_down_kernel_entry(act_ptr, w2_ptr, sorted_ids_ptr, block_expert_ptr, num_assign, d_model, hidden, stride_we,
                          num_blocks_m, out_ptr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          GROUP_M: tl.constexpr, W_SCALED: tl.constexpr, MMA: tl.constexpr,
                          DOT_PRECISION: tl.constexpr, A_FP8: tl.constexpr):
    """AOT entry of moe_down_kernel, weights in the activations' dtype."""
    tl.static_assert(not A_FP8, "the AOT entries take activations in their dtype")
    tl.static_assert(not W_SCALED, "moe_down_kernel_scaled_entry takes the FP8 weights")
    moe_down_kernel(act_ptr, w2_ptr, None, None, sorted_ids_ptr, block_expert_ptr, out_ptr, num_assign, d_model,
                    hidden, stride_we, num_blocks_m, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, W_SCALED, MMA,
                    DOT_PRECISION, A_FP8)


@triton.jit
def moe_down_kernel_scaled_entry(act_ptr, w2_ptr, w2_scale_ptr, sorted_ids_ptr, block_expert_ptr, num_assign, d_model,
                                 hidden, stride_we, num_blocks_m, out_ptr, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                                 W_SCALED: tl.constexpr, MMA: tl.constexpr, DOT_PRECISION: tl.constexpr,
                                 A_FP8: tl.constexpr):
    """AOT entry of moe_down_kernel, FP8 weights with per-channel scales."""
    tl.static_assert(not A_FP8, "the AOT entries take activations in their dtype")
    moe_down_kernel(act_ptr, w2_ptr, w2_scale_ptr, None, sorted_ids_ptr, block_expert_ptr, out_ptr, num_assign,
                    d_model, hidden, stride_we, num_blocks_m, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, W_SCALED, MMA,
                    DOT_PRECISION, A_FP8)


@triton.jit
def moe_combine_kernel_entry(expert_out_ptr, weights_ptr, queue_ptr, num_tokens, d_model, y_ptr, K: tl.constexpr,
                             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """AOT entry of moe_combine_kernel."""
    moe_combine_kernel(expert_out_ptr, weights_ptr, queue_ptr, y_ptr, num_tokens, d_model, K, BLOCK_T, BLOCK_D)


# Tile configs per bucket of routed rows (tokens * k), chosen on the H100 (benchmarks/RESULTS.md); the down tiles of
# the last two re-chosen on the H200 at the `base` config's deployed token counts (`python3 benchmarks/moe_tiles.py`,
# 2026-12-01): 139 tokens 0.0415 -> 0.0390 ms, 4184 tokens 0.211 -> 0.196 ms, 65888 tokens 2.649 -> 2.549 ms.
CONFIGS = (
    # (max rows, up: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), down: (BLOCK_N, BLOCK_K, warps, stages))
    (256, {"BLOCK_M": 16, "up": (64, 128, 4, 4), "down": (32, 128, 4, 4)}),
    (4096, {"BLOCK_M": 64, "up": (64, 64, 4, 4), "down": (64, 128, 4, 4)}),
    (None, {"BLOCK_M": 128, "up": (128, 64, 8, 4), "down": (256, 64, 8, 3)}),
)
# FP8 activations and weights (activations_fp8), chosen on the H200 at `base`'s sizes (`python3 benchmarks/moe_tiles.py
# --fp8`, 2026-12-01; benchmarks/RESULTS.md): deeper K tiles, as E4M3 tiles take half the shared memory. The op at
# 65888 tokens 1.812 -> 1.763 ms (bf16 2.532, FP8 weights widened to bf16 4.374), 4184 tokens 0.161 -> 0.150 ms,
# 139 tokens 0.0298 -> 0.0293 ms. The first bucket (up to 128 tokens at top-2) keeps the bf16 tiles, not measured.
CONFIGS_FP8 = (
    (256, CONFIGS[0][1]),
    (4096, {"BLOCK_M": 64, "up": (64, 128, 4, 4), "down": (64, 128, 4, 4)}),
    (None, {"BLOCK_M": 128, "up": (128, 128, 8, 3), "down": (256, 128, 8, 3)}),
)
GROUP_M = 8  # row blocks walked together over all column tiles
ROUTE_TILE = 256  # tokens per program of the parallel routing kernels
ONE_PROGRAM_ROUTING = 1024  # up to this many tokens one routing program does it all (fewer launches)
COMBINE_TOKENS = 8  # tokens per program of the combine kernel
QUANTIZE_BLOCK = 1024  # elements per program of the FP8 input quantisation


def choose_config(num_rows: int, fp8: bool = False) -> dict[str, object]:
    """The tile config for this many routed rows (tokens * k), of FP8 activations if `fp8`."""
    for limit, cfg in CONFIGS_FP8 if fp8 else CONFIGS:
        if limit is None or num_rows <= limit:
            return cfg
    raise AssertionError("unreachable: the last bucket has no limit")


def _fit(tiles: tuple[int, int, int, int], dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, warps, stages) shrunk for float32, whose tiles take twice the shared memory."""
    block_n, block_k, warps, stages = tiles
    if dtype == torch.float32:
        return block_n, min(block_k, 64), warps, min(stages, 2)
    return tiles


def plan(num_tokens: int, d_model: int, hidden: int, num_experts: int, top_k: int, capacity_factor: float,
         dtype: torch.dtype, weight_dtype: torch.dtype | None = None, config: dict[str, object] | None = None,
         logits_dtype: torch.dtype | None = None, activations_fp8: bool = False) -> KernelPlan:
    """Routing (one program up to ONE_PROGRAM_ROUTING tokens, else top-k / plan / scatter), up, down,
    combine: x [T, D] (dtype), router_logits [T, E] (logits_dtype, default dtype), mask [T] (bool), w1 [E, 2H, D],
    w2 [E, D, H] -> y [T, D]. weight_dtype float8_e4m3fn: FP8 weights with float32 per-output-channel
    scales w1_scale [E, 2H] and w2_scale [E, D]. capacity_factor > 0: capacity-limited routing, which
    reads it from the float64 buffer `capacity_factor` [1]. activations_fp8 (FP8 weights only): x is
    quantised to FP8 by the float32 scale `x_scale` [1] (one launch, into `x_fp8`) and the expert hidden
    rows by their expert's `hidden_scale` [E], so both GEMMs run on FP8 tensor cores. Every workspace
    buffer is written by one launch; rows of the permuted buffers past the used row blocks are never
    written nor read."""
    k = min(top_k, num_experts)
    scaled = weight_dtype == torch.float8_e4m3fn
    if activations_fp8 and not scaled:
        raise ValueError("moe_ffn plan: FP8 activations need FP8 (float8_e4m3fn) weights")
    limited = capacity_factor > 0
    cfg = config or choose_config(num_tokens * k, activations_fp8)
    block_m = cfg["BLOCK_M"]
    num_assign = num_tokens * k
    max_rows = triton.cdiv(num_assign + num_experts * (block_m - 1), block_m) * block_m
    max_blocks = max_rows // block_m
    e_pad = max(2, triton.next_power_of_2(num_experts))
    k_pad = max(2, triton.next_power_of_2(k))
    factor = pointer("capacity_factor_ptr") if limited else Arg("capacity_factor_ptr")
    factor_read = ("capacity_factor",) if limited else ()
    routing_entry = "" if not limited else None
    module = "moe_ffn"
    weight = weight_dtype or dtype
    buffers = [Buffer("x", dtype, num_tokens * d_model),
               Buffer("router_logits", logits_dtype or dtype, num_tokens * num_experts),
               Buffer("mask", torch.bool, num_tokens), Buffer("w1", weight, num_experts * 2 * hidden * d_model),
               Buffer("w2", weight, num_experts * d_model * hidden), Buffer("y", dtype, num_tokens * d_model)]
    inputs = ["x", "router_logits", "mask", "w1", "w2"]
    if scaled:
        buffers += [Buffer("w1_scale", torch.float32, num_experts * 2 * hidden),
                    Buffer("w2_scale", torch.float32, num_experts * d_model)]
        inputs += ["w1_scale", "w2_scale"]
    if limited:
        buffers.append(Buffer("capacity_factor", torch.float64, 1))
        inputs.append("capacity_factor")
    if activations_fp8:
        buffers += [Buffer("x_scale", torch.float32, 1), Buffer("hidden_scale", torch.float32, num_experts)]
        inputs += ["x_scale", "hidden_scale"]
    buffers += [Buffer("weights", torch.float32, num_assign), Buffer("experts", torch.int32, num_assign),
                Buffer("queue", torch.int32, num_assign), Buffer("sorted_ids", torch.int32, max_rows),
                Buffer("block_expert", torch.int32, max_blocks)]
    routing = {"K": k, "E_PAD": e_pad, "K_PAD": k_pad}
    steps = []
    logits = pointer("logits_ptr", "router_logits")
    if num_tokens <= ONE_PROGRAM_ROUTING:
        route_block = max(16, triton.next_power_of_2(num_tokens))
        steps.append(launch(
            module, "moe_route_kernel", (1,), 4 if route_block <= 256 else 8, 1,
            {**routing, "BLOCK_T": route_block, "BLOCK_M": block_m, "CAPACITY_LIMITED": limited},
            [logits, pointer("mask_ptr"), factor, pointer("weights_ptr"), pointer("experts_ptr"), pointer("queue_ptr"),
             pointer("sorted_ids_ptr"), pointer("block_expert_ptr"), scalar("num_tokens", num_tokens),
             scalar("num_experts", num_experts), scalar("max_blocks", max_blocks)],
            reads=("router_logits", "mask", *factor_read),
            writes=("weights", "experts", "queue", "sorted_ids", "block_expert"), entry=routing_entry))
    else:
        num_tiles = triton.cdiv(num_tokens, ROUTE_TILE)
        buffers += [Buffer("counts", torch.int32, k * num_tiles * e_pad), Buffer("valid", torch.int32, num_tiles),
                    Buffer("offsets", torch.int32, k * num_tiles * e_pad), Buffer("plan", torch.int32, 1 + 2 * e_pad)]
        steps.append(launch(
            module, "moe_topk_kernel", (num_tiles,), 4, 1, {**routing, "BLOCK_T": ROUTE_TILE},
            [logits, pointer("mask_ptr"), pointer("weights_ptr"), pointer("experts_ptr"), pointer("counts_ptr"),
             pointer("valid_ptr"), scalar("num_tokens", num_tokens), scalar("num_experts", num_experts)],
            reads=("router_logits", "mask"), writes=("weights", "experts", "counts", "valid")))
        steps.append(launch(
            module, "moe_plan_kernel", (1,), 4, 1,
            {"K": k, "E_PAD": e_pad, "BLOCK_R": 1024, "BLOCK_M": block_m, "CAPACITY_LIMITED": limited},
            [pointer("counts_ptr"), pointer("valid_ptr"), factor, pointer("offsets_ptr"), pointer("plan_ptr"),
             pointer("block_expert_ptr"), scalar("num_tiles", num_tiles), scalar("num_tokens", num_tokens),
             scalar("num_experts", num_experts), scalar("max_blocks", max_blocks)],
            reads=("counts", "valid", *factor_read), writes=("offsets", "plan", "block_expert"), entry=routing_entry))
        steps.append(launch(
            module, "moe_scatter_kernel", (num_tiles, k), 4, 1,
            {"K": k, "E_PAD": e_pad, "BLOCK_T": ROUTE_TILE, "BLOCK_M": block_m},
            [pointer("mask_ptr"), pointer("experts_ptr"), pointer("offsets_ptr"), pointer("plan_ptr"),
             pointer("queue_ptr"), pointer("sorted_ids_ptr"), scalar("num_tokens", num_tokens),
             scalar("num_experts", num_experts)],
            reads=("mask", "experts", "offsets", "plan"), writes=("queue", "sorted_ids")))

    act_dtype = torch.float8_e4m3fn if activations_fp8 else dtype
    buffers += [Buffer("act", act_dtype, max_rows * hidden), Buffer("expert_out", dtype, num_assign * d_model)]
    mma = {"MMA": MMA_NAMES[act_dtype], "DOT_PRECISION": dot_precision(dtype)}
    entry = "moe_{}_kernel_scaled_entry" if scaled else "moe_{}_kernel_entry"
    x_buffer = "x"
    if activations_fp8:  # no AOT entry: the TensorRT plugins take FP8 weights with activations in their dtype
        buffers.append(Buffer("x_fp8", torch.float8_e4m3fn, num_tokens * d_model))
        steps.append(launch(
            module, "moe_quantize_kernel", (triton.cdiv(num_tokens * d_model, QUANTIZE_BLOCK),), 4, 1,
            {"BLOCK": QUANTIZE_BLOCK},
            [pointer("x_ptr"), pointer("x_scale_ptr"), pointer("x_fp8_ptr"), scalar("numel", num_tokens * d_model)],
            reads=("x", "x_scale"), writes=("x_fp8",), entry=None))
        x_buffer, entry = "x_fp8", None
    sizes = [scalar("num_assign", num_assign), scalar("d_model", d_model), scalar("hidden", hidden)]

    def scale_args(*names: str) -> list[Arg]:  # the activation-scale pointers: absent unless activations_fp8
        return [pointer(name) if activations_fp8 else Arg(name) for name in names]

    def scale_reads(*names: str) -> tuple[str, ...]:
        return names if activations_fp8 else ()

    bn, bk, warps, stages = _fit(cfg["up"], dtype)
    steps.append(launch(
        module, "moe_up_kernel", (max_blocks * triton.cdiv(hidden, bn),), warps, stages,
        {"K": k, "BLOCK_M": block_m, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": GROUP_M, "W_SCALED": scaled, **mma,
         "A_FP8": activations_fp8},
        [pointer("x_ptr", x_buffer), pointer("w1_ptr"), pointer("w1_scale_ptr") if scaled else Arg("w1_scale_ptr"),
         *scale_args("x_scale_ptr", "hidden_scale_ptr"), pointer("sorted_ids_ptr"), pointer("block_expert_ptr"),
         pointer("act_ptr"), *sizes, scalar("stride_we", 2 * hidden * d_model), scalar("num_blocks_m", max_blocks)],
        reads=(x_buffer, "w1", *(("w1_scale",) if scaled else ()), *scale_reads("x_scale", "hidden_scale"),
               "sorted_ids", "block_expert"), writes=("act",),
        entry=entry and entry.format("up")))
    bn, bk, warps, stages = _fit(cfg["down"], dtype)
    steps.append(launch(
        module, "moe_down_kernel", (max_blocks * triton.cdiv(d_model, bn),), warps, stages,
        {"BLOCK_M": block_m, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": GROUP_M, "W_SCALED": scaled, **mma,
         "A_FP8": activations_fp8},
        [pointer("act_ptr"), pointer("w2_ptr"), pointer("w2_scale_ptr") if scaled else Arg("w2_scale_ptr"),
         *scale_args("hidden_scale_ptr"), pointer("sorted_ids_ptr"), pointer("block_expert_ptr"),
         pointer("out_ptr", "expert_out"), *sizes, scalar("stride_we", d_model * hidden),
         scalar("num_blocks_m", max_blocks)],
        reads=("act", "w2", *(("w2_scale",) if scaled else ()), *scale_reads("hidden_scale"), "sorted_ids",
               "block_expert"), writes=("expert_out",),
        entry=entry and entry.format("down")))
    block_d = min(256, triton.next_power_of_2(d_model))
    steps.append(launch(
        module, "moe_combine_kernel", (triton.cdiv(num_tokens, COMBINE_TOKENS), triton.cdiv(d_model, block_d)), 4, 1,
        {"K": k, "BLOCK_T": COMBINE_TOKENS, "BLOCK_D": block_d},
        [pointer("expert_out_ptr"), pointer("weights_ptr"), pointer("queue_ptr"), pointer("y_ptr"),
         scalar("num_tokens", num_tokens), scalar("d_model", d_model)],
        reads=("expert_out", "weights", "queue"), writes=("y",)))
    plan_inputs = {"num_tokens": num_tokens, "d_model": d_model, "hidden": hidden, "num_experts": num_experts,
                   "top_k": top_k, "capacity_factor": capacity_factor, "dtype": dtype,
                   **({"weight_dtype": weight_dtype} if weight_dtype else {}), **({"config": config} if config else {}),
                   **({"logits_dtype": logits_dtype} if logits_dtype else {}),
                   **({"activations_fp8": True} if activations_fp8 else {})}
    return KernelPlan("moe_ffn", tuple(inputs), ("y",), tuple(buffers), tuple(steps), plan_inputs)


def moe_ffn(x: Tensor, router_logits: Tensor, mask: Tensor, w1: Tensor, w2: Tensor, top_k: int,
            capacity_factor: float, config: dict[str, object] | None = None,
            w1_scale: Tensor | None = None, w2_scale: Tensor | None = None,
            x_scale: Tensor | None = None, hidden_scale: Tensor | None = None) -> Tensor:
    """Launch the kernels: x [T, D], router_logits [T, E], mask [T], w1 [E, 2H, D], w2 [E, D, H].

    With w1_scale [E, 2H] and w2_scale [E, D] (float32), w1 and w2 are float8_e4m3fn weights with
    per-output-channel scales (the FP8 deploy format); the products run in x's dtype, unless x_scale [1]
    and hidden_scale [E] (float32 E4M3 scales of the experts' input and hidden rows) are given too: then
    the activations are quantised to FP8 and the products run on FP8 tensor cores."""
    num_tokens, d_model = x.shape
    num_experts, two_h, _ = w1.shape
    scaled = w1_scale is not None
    if scaled != (w2_scale is not None):
        raise ValueError("moe_ffn: give both w1_scale and w2_scale (FP8 weights) or neither")
    activations_fp8 = x_scale is not None
    if activations_fp8 != (hidden_scale is not None) or (activations_fp8 and not scaled):
        raise ValueError("moe_ffn: FP8 activations take x_scale and hidden_scale, with FP8 weights and their scales")
    y = torch.empty_like(x)
    if num_tokens == 0:
        return y
    tensors = {"x": x.contiguous(), "router_logits": router_logits.contiguous(), "mask": mask.contiguous(),
               "w1": w1.contiguous(), "w2": w2.contiguous(), "y": y}
    if scaled:
        tensors.update(w1_scale=w1_scale.float().contiguous(), w2_scale=w2_scale.float().contiguous())
    if capacity_factor > 0:
        tensors["capacity_factor"] = torch.full((1,), float(capacity_factor), dtype=torch.float64, device=x.device)
    if activations_fp8:
        tensors.update(x_scale=x_scale.float().reshape(1).contiguous(),
                       hidden_scale=hidden_scale.float().reshape(num_experts).contiguous())
    steps = cached_plan(plan, num_tokens, d_model, two_h // 2, num_experts, top_k, capacity_factor, x.dtype,
                 w1.dtype if scaled else None, config,
                 router_logits.dtype if router_logits.dtype != x.dtype else None, activations_fp8)
    execute(steps, tensors)
    return y
