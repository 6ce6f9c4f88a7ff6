"""Triton kernels for `mahia::ssd_scan`: the Mamba-2 chunked scan in three launches.

With Q the chunk length, per batch b, chunk c and head h (A = a[h] * dt, cumsum within the chunk):
1. `ssd_chunk_cb`: CB[b, c] = C_c B_c^T, [Q, Q], shared by all heads (one B/C group).
2. `ssd_chunk_states`: one program per (b, h, P-tile, N-tile) walks the chunks in order: it stores
   the state entering chunk c, then adds the chunk's own contribution
   sum_l exp(A_end - A_l) dt_l x_l B_l^T to the decayed running state (chunk states and state
   passing in one pass, so per-chunk states never round-trip through memory).
3. `ssd_chunk_output`: y_l = exp(A_l) C_l S_c^T + sum_{s <= l} CB[l, s] exp(A_l - A_s) dt_s x_s.
The result does not depend on the chunk length (only rounding does), so the kernels use the op's
chunk_size when it is a power of two in [16, 256] and 64 otherwise. Positions past L get dt = 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mahia.kernels.triton.launch import dot_precision
from mahia.kernels.triton.plan import MMA_NAMES, Buffer, KernelPlan, cached_plan, execute, launch, pointer, scalar


@triton.jit
def ssd_chunk_cb_kernel(b_ptr, c_ptr, cb_ptr, length, state, num_chunks,
                        stride_bb, stride_bt, stride_cb, stride_ct,
                        Q: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
                        MMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """cb[b, c, l, s] = sum_n C[b, cQ + l, n] B[b, cQ + s, n] (float32), lower block triangle only."""
    pid_bc = tl.program_id(0)
    blk_l = tl.program_id(1)
    blk_s = tl.program_id(2)
    if blk_s > blk_l:
        return
    batch = pid_bc // num_chunks
    chunk = pid_bc % num_chunks
    rows_l = blk_l * BLOCK + tl.arange(0, BLOCK)
    rows_s = blk_s * BLOCK + tl.arange(0, BLOCK)
    t_l = chunk * Q + rows_l
    t_s = chunk * Q + rows_s
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for n0 in range(0, state, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        cl = tl.load(c_ptr + batch * stride_cb + t_l[:, None] * stride_ct + n[None, :],
                     mask=(t_l < length)[:, None] & (n < state)[None, :], other=0.0)
        bs = tl.load(b_ptr + batch * stride_bb + t_s[None, :] * stride_bt + n[:, None],
                     mask=(t_s < length)[None, :] & (n < state)[:, None], other=0.0)
        acc = tl.dot(cl.to(MMA), bs.to(MMA), acc, input_precision=DOT_PRECISION)
    tl.store(cb_ptr + pid_bc * Q * Q + rows_l[:, None] * Q + rows_s[None, :], acc)


@triton.jit
def ssd_chunk_states_kernel(x_ptr, dt_ptr, a_ptr, b_ptr, states_ptr, length, heads, head_dim, state, num_chunks,
                            stride_xb, stride_xt, stride_xh, stride_dtb, stride_dtt, stride_bb, stride_bt,
                            Q: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                            MMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """states[b, c, h] = state entering chunk c, [P, N] float32, by a sequential pass over chunks."""
    pid_bh = tl.program_id(0)
    batch = pid_bh // heads
    head = pid_bh % heads
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    a = tl.load(a_ptr + head).to(tl.float32)
    pos_q = tl.arange(0, Q)
    x_base = x_ptr + batch * stride_xb + head * stride_xh
    dt_base = dt_ptr + batch * stride_dtb + head
    b_base = b_ptr + batch * stride_bb
    running = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    out_base = states_ptr + (pid_bh // heads * num_chunks * heads + head) * head_dim * state
    for chunk in range(0, num_chunks):
        out = out_base + chunk * heads * head_dim * state
        tl.store(out + p[:, None] * state + n[None, :], running,
                 mask=(p < head_dim)[:, None] & (n < state)[None, :])
        t_all = chunk * Q + pos_q
        dt_all = tl.load(dt_base + t_all * stride_dtt, mask=t_all < length, other=0.0).to(tl.float32)
        total = tl.sum(dt_all * a, axis=0)
        prefix = 0.0
        local = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for q0 in range(0, Q, BLOCK_Q):
            t = chunk * Q + q0 + tl.arange(0, BLOCK_Q)
            t_ok = t < length
            dt = tl.load(dt_base + t * stride_dtt, mask=t_ok, other=0.0).to(tl.float32)
            cums = prefix + tl.cumsum(dt * a, axis=0)
            prefix += tl.sum(dt * a, axis=0)
            weight = tl.exp(total - cums) * dt
            xs = tl.load(x_base + t[None, :] * stride_xt + p[:, None],
                         mask=t_ok[None, :] & (p < head_dim)[:, None], other=0.0).to(tl.float32)
            xs = (xs * weight[None, :]).to(MMA)
            bs = tl.load(b_base + t[:, None] * stride_bt + n[None, :],
                         mask=t_ok[:, None] & (n < state)[None, :], other=0.0)
            local = tl.dot(xs, bs.to(MMA), local, input_precision=DOT_PRECISION)
        running = running * tl.exp(total) + local


@triton.jit
def ssd_chunk_output_kernel(x_ptr, dt_ptr, a_ptr, c_ptr, cb_ptr, states_ptr, y_ptr,
                            length, heads, head_dim, state, num_chunks,
                            stride_xb, stride_xt, stride_xh, stride_dtb, stride_dtt, stride_cb, stride_ct,
                            Q: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                            MMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """y for BLOCK_L positions of one chunk and head: state term + causal intra-chunk term."""
    # Program order (batch, chunk, head, row block): the row blocks of one head run together (they
    # share its entering state and x in L2) and the heads of one chunk next (they share CB).
    pid = tl.program_id(0)
    blocks_l: tl.constexpr = Q // BLOCK_L
    blk_l = pid % blocks_l
    head = (pid // blocks_l) % heads
    chunk = (pid // (blocks_l * heads)) % num_chunks
    batch = pid // (blocks_l * heads * num_chunks)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < head_dim
    a = tl.load(a_ptr + head).to(tl.float32)
    dt_base = dt_ptr + batch * stride_dtb + head
    x_base = x_ptr + batch * stride_xb + head * stride_xh

    # Cumulative decay at the output rows: everything before the block, then the block's own cumsum.
    pos_q = tl.arange(0, Q)
    t_all = chunk * Q + pos_q
    dt_all = tl.load(dt_base + t_all * stride_dtt, mask=t_all < length, other=0.0).to(tl.float32)
    before = tl.sum(tl.where(pos_q < blk_l * BLOCK_L, dt_all * a, 0.0), axis=0)
    rows = blk_l * BLOCK_L + tl.arange(0, BLOCK_L)
    t_l = chunk * Q + rows
    l_ok = t_l < length
    dt_l = tl.load(dt_base + t_l * stride_dtt, mask=l_ok, other=0.0).to(tl.float32)
    cums_l = before + tl.cumsum(dt_l * a, axis=0)

    # State entering the chunk, read through C.
    acc = tl.zeros((BLOCK_L, BLOCK_P), dtype=tl.float32)
    s_base = states_ptr + ((batch * num_chunks + chunk) * heads + head) * head_dim * state
    for n0 in range(0, state, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        cl = tl.load(c_ptr + batch * stride_cb + t_l[:, None] * stride_ct + n[None, :],
                     mask=l_ok[:, None] & (n < state)[None, :], other=0.0)
        st = tl.load(s_base + p[None, :] * state + n[:, None], mask=p_ok[None, :] & (n < state)[:, None], other=0.0)
        acc = tl.dot(cl.to(MMA), st.to(MMA), acc, input_precision=DOT_PRECISION)
    acc = acc * tl.exp(cums_l)[:, None]

    # Causal intra-chunk term, source blocks up to and including the diagonal one.
    cb_base = cb_ptr + (batch * num_chunks + chunk) * Q * Q
    prefix = 0.0
    for blk_s in range(0, blk_l + 1):
        cols = blk_s * BLOCK_L + tl.arange(0, BLOCK_L)
        t_s = chunk * Q + cols
        s_ok = t_s < length
        dt_s = tl.load(dt_base + t_s * stride_dtt, mask=s_ok, other=0.0).to(tl.float32)
        cums_s = prefix + tl.cumsum(dt_s * a, axis=0)
        prefix += tl.sum(dt_s * a, axis=0)
        cb = tl.load(cb_base + rows[:, None] * Q + cols[None, :])
        causal = rows[:, None] >= cols[None, :]
        decay = tl.exp(tl.where(causal, cums_l[:, None] - cums_s[None, :], float("-inf")))
        scores = (cb * decay * dt_s[None, :]).to(MMA)
        xs = tl.load(x_base + t_s[:, None] * stride_xt + p[None, :], mask=s_ok[:, None] & p_ok[None, :], other=0.0)
        acc = tl.dot(scores, xs.to(MMA), acc, input_precision=DOT_PRECISION)

    y_base = y_ptr + batch * stride_xb + head * stride_xh
    tl.store(y_base + t_l[:, None] * stride_xt + p[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=l_ok[:, None] & p_ok[None, :])


@triton.jit
def ssd_chunk_cb_kernel_entry(b_ptr, c_ptr, length, state, num_chunks, stride_bb, stride_bt, stride_cb, stride_ct,
                              cb_ptr, Q: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
                              MMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """AOT entry in plugin order (input pointers, int32 scalars, output pointers)."""
    ssd_chunk_cb_kernel(b_ptr, c_ptr, cb_ptr, length, state, num_chunks, stride_bb, stride_bt, stride_cb, stride_ct,
                        Q, BLOCK, BLOCK_N, MMA, DOT_PRECISION)


@triton.jit
def ssd_chunk_states_kernel_entry(x_ptr, dt_ptr, a_ptr, b_ptr, length, heads, head_dim, state, num_chunks,
                                  stride_xb, stride_xt, stride_xh, stride_dtb, stride_dtt, stride_bb, stride_bt,
                                  states_ptr, Q: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                                  BLOCK_N: tl.constexpr, MMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """AOT entry in plugin order (input pointers, int32 scalars, output pointers)."""
    ssd_chunk_states_kernel(x_ptr, dt_ptr, a_ptr, b_ptr, states_ptr, length, heads, head_dim, state, num_chunks,
                            stride_xb, stride_xt, stride_xh, stride_dtb, stride_dtt, stride_bb, stride_bt,
                            Q, BLOCK_Q, BLOCK_P, BLOCK_N, MMA, DOT_PRECISION)


@triton.jit
def ssd_chunk_output_kernel_entry(x_ptr, dt_ptr, a_ptr, c_ptr, cb_ptr, states_ptr, length, heads, head_dim, state,
                                  num_chunks, stride_xb, stride_xt, stride_xh, stride_dtb, stride_dtt, stride_cb,
                                  stride_ct, y_ptr, Q: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
                                  BLOCK_N: tl.constexpr, MMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """AOT entry in plugin order (input pointers, int32 scalars, output pointers)."""
    ssd_chunk_output_kernel(x_ptr, dt_ptr, a_ptr, c_ptr, cb_ptr, states_ptr, y_ptr, length, heads, head_dim, state,
                            num_chunks, stride_xb, stride_xt, stride_xh, stride_dtb, stride_dtt, stride_cb, stride_ct,
                            Q, BLOCK_L, BLOCK_P, BLOCK_N, MMA, DOT_PRECISION)


def kernel_chunk(chunk_size: int) -> int:
    """The chunk length the kernels use: the op's when a power of two in [16, 256], else 64."""
    if 16 <= chunk_size <= 256 and chunk_size & (chunk_size - 1) == 0:
        return chunk_size
    return 64


# Tile sizes (chosen on the H100, see benchmarks/RESULTS.md).
CONFIG = {
    "cb": {"BLOCK": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
    "states": {"BLOCK_Q": 64, "BLOCK_P": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "output": {"BLOCK_L": 64, "BLOCK_P": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2},
}


def plan(batch: int, length: int, heads: int, head_dim: int, state: int, chunk_size: int, dtype: torch.dtype,
         a_dtype: torch.dtype | None = None, strides: dict[str, tuple[int, ...]] | None = None) -> KernelPlan:
    """Three launches: x [B, L, H, P] (contiguous), dt [B, L, H], a [H] (a_dtype, default dtype), b/c [B, L, N]
    -> y [B, L, H, P]. `strides` gives dt, b and c's strides where they are views (last stride 1);
    default contiguous. Workspace: cb [B, chunks, Q, Q] and states [B, chunks, H, P, N], float32."""
    strides = strides or {}
    dt_s = strides.get("dt", (length * heads, heads, 1))
    b_s = strides.get("b", (length * state, state, 1))
    c_s = strides.get("c", (length * state, state, 1))
    x_s = (length * heads * head_dim, heads * head_dim, head_dim)
    q = kernel_chunk(chunk_size)
    num_chunks = triton.cdiv(length, q)
    mma = {"MMA": MMA_NAMES[dtype], "DOT_PRECISION": dot_precision(dtype)}
    sizes = [scalar("length", length)]

    def tile(cfg: dict[str, int], key: str, size: int) -> int:
        return min(cfg[key], max(16, triton.next_power_of_2(size)))

    cfg = CONFIG["cb"]
    block = min(cfg["BLOCK"], q)
    cb_step = launch(
        "ssd_scan", "ssd_chunk_cb_kernel", (batch * num_chunks, q // block, q // block), cfg["num_warps"],
        cfg["num_stages"], {"Q": q, "BLOCK": block, "BLOCK_N": tile(cfg, "BLOCK_N", state), **mma},
        [pointer("b_ptr"), pointer("c_ptr"), pointer("cb_ptr"), *sizes, scalar("state", state),
         scalar("num_chunks", num_chunks), scalar("stride_bb", b_s[0]), scalar("stride_bt", b_s[1]),
         scalar("stride_cb", c_s[0]), scalar("stride_ct", c_s[1])],
        reads=("b", "c"), writes=("cb",))

    cfg = CONFIG["states"]
    blk_p, blk_n = tile(cfg, "BLOCK_P", head_dim), tile(cfg, "BLOCK_N", state)
    shape_args = [*sizes, scalar("heads", heads), scalar("head_dim", head_dim), scalar("state", state),
                  scalar("num_chunks", num_chunks), scalar("stride_xb", x_s[0]), scalar("stride_xt", x_s[1]),
                  scalar("stride_xh", x_s[2]), scalar("stride_dtb", dt_s[0]), scalar("stride_dtt", dt_s[1])]
    states_step = launch(
        "ssd_scan", "ssd_chunk_states_kernel", (batch * heads, triton.cdiv(head_dim, blk_p), triton.cdiv(state, blk_n)),
        cfg["num_warps"], cfg["num_stages"],
        {"Q": q, "BLOCK_Q": min(cfg["BLOCK_Q"], q), "BLOCK_P": blk_p, "BLOCK_N": blk_n, **mma},
        [pointer("x_ptr"), pointer("dt_ptr"), pointer("a_ptr"), pointer("b_ptr"), pointer("states_ptr"), *shape_args,
         scalar("stride_bb", b_s[0]), scalar("stride_bt", b_s[1])],
        reads=("x", "dt", "a", "b"), writes=("states",))

    cfg = CONFIG["output"]
    block_l = min(cfg["BLOCK_L"], q)
    blk_p, blk_n = tile(cfg, "BLOCK_P", head_dim), tile(cfg, "BLOCK_N", state)
    output_step = launch(
        "ssd_scan", "ssd_chunk_output_kernel",
        (batch * num_chunks * heads * (q // block_l), triton.cdiv(head_dim, blk_p)),
        cfg["num_warps"], cfg["num_stages"], {"Q": q, "BLOCK_L": block_l, "BLOCK_P": blk_p, "BLOCK_N": blk_n, **mma},
        [pointer("x_ptr"), pointer("dt_ptr"), pointer("a_ptr"), pointer("c_ptr"), pointer("cb_ptr"),
         pointer("states_ptr"), pointer("y_ptr"), *shape_args, scalar("stride_cb", c_s[0]),
         scalar("stride_ct", c_s[1])],
        reads=("x", "dt", "a", "c", "cb", "states"), writes=("y",))

    def extent(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
        return 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0

    tokens = batch * length * heads * head_dim
    buffers = (Buffer("x", dtype, tokens), Buffer("dt", dtype, extent((batch, length, heads), dt_s)),
               Buffer("a", a_dtype or dtype, heads), Buffer("b", dtype, extent((batch, length, state), b_s)),
               Buffer("c", dtype, extent((batch, length, state), c_s)), Buffer("y", dtype, tokens),
               Buffer("cb", torch.float32, batch * num_chunks * q * q),
               Buffer("states", torch.float32, batch * num_chunks * heads * head_dim * state))
    inputs = {"batch": batch, "length": length, "heads": heads, "head_dim": head_dim, "state": state,
              "chunk_size": chunk_size, "dtype": dtype, **({"a_dtype": a_dtype} if a_dtype else {}),
              **({"strides": strides} if strides else {})}
    return KernelPlan("ssd_scan", ("x", "dt", "a", "b", "c"), ("y",), buffers, (cb_step, states_step, output_step),
                      inputs)


def ssd_scan(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk_size: int) -> Tensor:
    """Launch the three kernels: x [B, L, H, P], dt [B, L, H], a [H], b/c [B, L, N] -> y [B, L, H, P]."""
    batch, length, heads, head_dim = x.shape
    state = b.shape[-1]
    # x must be contiguous: the output kernel writes y with x's strides (the model passes x as a
    # column slice of a projection, whose row stride is wider than heads * head_dim).
    x = x.contiguous()
    dt, a, b, c = (t if t.stride(-1) == 1 else t.contiguous() for t in (dt, a, b, c))
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    strides = {name: tuple(t.stride()) for name, t in (("dt", dt), ("b", b), ("c", c)) if not t.is_contiguous()}
    steps = cached_plan(plan, batch, length, heads, head_dim, state, chunk_size, x.dtype,
                        a.dtype if a.dtype != x.dtype else None, strides)
    execute(steps, {"x": x, "dt": dt, "a": a, "b": b, "c": c, "y": y})
    return y
