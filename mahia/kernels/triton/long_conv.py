"""Triton kernel for `mahia::long_conv`: direct long convolution as block-Toeplitz matmuls.

Split time into blocks of K. For one channel, output block t1 is sum over block lags delta of
H_delta @ x_block(t1 - delta), where H_delta[i, j] = filt[delta*K + i - j (+ L - 1 if two-sided)] is
a K x K Toeplitz tile. A program owns one channel and NT consecutive output blocks for a group of
batch rows; the columns of its matmul are (batch, output block) pairs, so each Toeplitz tile (read
from the L1-resident filter) is reused across BLOCK_N columns and the products run on tensor cores.
Work is L^2 * B per channel (half of it for a causal filter) instead of the FFT's O(L log L), but on
tensor cores and in one pass over memory, which wins for L <= 4096 (numbers in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mahia.kernels.triton.launch import dot_precision
from mahia.kernels.triton.plan import MMA_NAMES, Buffer, KernelPlan, cached_plan, execute, launch, pointer, scalar


@triton.jit
def long_conv_kernel(x_ptr, filt_ptr, out_ptr, batch, length, filt_len, filt_shift,
                     stride_xb, stride_xd, stride_fd,
                     CAUSAL: tl.constexpr, BLOCK_K: tl.constexpr, NT: tl.constexpr, BLOCK_N: tl.constexpr,
                     MMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """y[b, d, t] = sum_s filt[d, t - s + filt_shift] * x[b, d, s] over the filter's support."""
    d = tl.program_id(0)
    t1_first = tl.program_id(1) * NT
    b_first = tl.program_id(2) * (BLOCK_N // NT)
    num_blocks = tl.cdiv(length, BLOCK_K)

    rows = tl.arange(0, BLOCK_K)  # position inside a time block (t2 for outputs, s2 for inputs)
    cols = tl.arange(0, BLOCK_N)
    col_b = b_first + cols // NT
    col_t1 = t1_first + cols % NT
    col_ok = col_b < batch
    x_base = x_ptr + d * stride_xd + col_b * stride_xb  # [BLOCK_N]
    f_base = filt_ptr + d * stride_fd
    toeplitz = rows[:, None] - rows[None, :]  # i - j

    if CAUSAL:
        lag_lo = 0
    else:
        lag_lo = t1_first - num_blocks + 1
    lag_hi = t1_first + NT  # exclusive; source block t1 - delta must be >= 0 for some column

    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for delta in range(lag_lo, lag_hi):
        f_idx = delta * BLOCK_K + toeplitz + filt_shift
        tile = tl.load(f_base + f_idx, mask=(f_idx >= 0) & (f_idx < filt_len), other=0.0)
        src = (col_t1 - delta) * BLOCK_K  # [BLOCK_N] first source position of each column
        s = src[None, :] + rows[:, None]
        xs = tl.load(x_base[None, :] + s, mask=col_ok[None, :] & (s >= 0) & (s < length), other=0.0)
        acc = tl.dot(tile.to(MMA), xs.to(MMA), acc, input_precision=DOT_PRECISION)

    t = col_t1[None, :] * BLOCK_K + rows[:, None]
    tl.store(out_ptr + d * stride_xd + col_b[None, :] * stride_xb + t, acc.to(out_ptr.dtype.element_ty),
             mask=col_ok[None, :] & (t < length))


@triton.jit
def long_conv_kernel_entry(x_ptr, filt_ptr, batch, length, filt_len, filt_shift, stride_xb, stride_xd, stride_fd,
                           out_ptr, CAUSAL: tl.constexpr, BLOCK_K: tl.constexpr, NT: tl.constexpr,
                           BLOCK_N: tl.constexpr, MMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """AOT entry in plugin order (input pointers, int32 scalars, output pointers)."""
    long_conv_kernel(x_ptr, filt_ptr, out_ptr, batch, length, filt_len, filt_shift, stride_xb, stride_xd, stride_fd,
                     CAUSAL, BLOCK_K, NT, BLOCK_N, MMA, DOT_PRECISION)


def choose_config(batch: int, length: int) -> dict[str, int]:
    """Tile sizes by shape bucket; no autotuning at call time. The L >= 256 bucket was chosen by
    benchmarks/kernels.py --sweep on the H100; short sequences use 16-step tiles (not tuned)."""
    block_k = 64 if length >= 256 else 16
    num_blocks = triton.cdiv(length, block_k)
    nt = min(16, triton.next_power_of_2(num_blocks))
    rows_per_program = max(1, min(triton.next_power_of_2(batch), 128 // nt))
    block_n = max(16, nt * rows_per_program)
    return {"BLOCK_K": block_k, "NT": nt, "BLOCK_N": block_n, "num_warps": 4 if block_k * block_n <= 4096 else 8,
            "num_stages": 2}


def plan(batch: int, channels: int, length: int, causal: bool, dtype: torch.dtype,
         config: dict[str, int] | None = None) -> KernelPlan:
    """One launch: x [B, D, L] and filt [D, L] (causal) or [D, 2L-1] (two-sided), contiguous -> out [B, D, L]."""
    cfg = config or choose_config(batch, length)
    filt_len = length if causal else 2 * length - 1
    num_blocks = triton.cdiv(length, cfg["BLOCK_K"])
    rows_per_program = cfg["BLOCK_N"] // cfg["NT"]
    grid = (channels, triton.cdiv(num_blocks, cfg["NT"]), triton.cdiv(batch, rows_per_program))
    constexprs = {"CAUSAL": causal, "BLOCK_K": cfg["BLOCK_K"], "NT": cfg["NT"], "BLOCK_N": cfg["BLOCK_N"],
                  "MMA": MMA_NAMES[dtype], "DOT_PRECISION": dot_precision(dtype)}
    step = launch("long_conv", "long_conv_kernel", grid, cfg["num_warps"], cfg["num_stages"], constexprs,
                  [pointer("x_ptr"), pointer("filt_ptr"), pointer("out_ptr"), scalar("batch", batch),
                   scalar("length", length), scalar("filt_len", filt_len),
                   scalar("filt_shift", 0 if causal else length - 1), scalar("stride_xb", channels * length),
                   scalar("stride_xd", length), scalar("stride_fd", filt_len)],
                  reads=("x", "filt"), writes=("out",))
    buffers = (Buffer("x", dtype, batch * channels * length), Buffer("filt", dtype, channels * filt_len),
               Buffer("out", dtype, batch * channels * length))
    return KernelPlan("long_conv", ("x", "filt"), ("out",), buffers, (step,),
                      {"batch": batch, "channels": channels, "length": length, "causal": causal, "dtype": dtype,
                       **({"config": dict(config)} if config else {})})


# Toeplitz kernel against torch.fft (the reference), H200, bf16, batch 8, 768 channels, medians of do_bench
# (benchmarks/kernel_plans_gpu.py --sections conv), fft time / Toeplitz time:
#   L          512    1024   2048   4096   8192
#   causal     0.71x  1.20x  2.28x  1.68x  0.98x
#   two-sided  0.49x  0.58x  1.57x  0.94x  0.54x
# So the kernel runs where it was faster, lo < L <= hi, and torch.fft at the other measured lengths
# (L >= 512). Below 512 nothing was measured on the H200: the kernel stays (one launch, against
# torch.fft's five). The 3x goal needs an FFT on tensor cores (FlashFFTConv), not this choice.
TOEPLITZ_WINDOW = {True: (512, 4096), False: (1024, 2048)}  # causal -> (lo, hi)
SHORTEST_MEASURED = 512


def choose_algorithm(length: int, causal: bool) -> str:
    """"toeplitz" (this module's kernel, described by plan()) or "fft" (torch.fft, the reference), by length."""
    lo, hi = TOEPLITZ_WINDOW[causal]
    return "toeplitz" if length < SHORTEST_MEASURED or lo < length <= hi else "fft"


def long_conv(x: Tensor, filt: Tensor, causal: bool, config: dict[str, int] | None = None) -> Tensor:
    """Launch the kernel: x [B, D, L], filt [D, L] (causal) or [D, 2L-1] (two-sided) -> [B, D, L].
    (The op, mahia.kernels.ops.long_conv, calls it where choose_algorithm says "toeplitz".)"""
    batch, channels, length = x.shape
    filt_len = length if causal else 2 * length - 1
    if tuple(filt.shape) != (channels, filt_len):
        raise ValueError(f"long_conv: filt has shape {tuple(filt.shape)}, expected ({channels}, {filt_len}) "
                         f"for x {tuple(x.shape)} and causal={causal}")
    x = x.contiguous()
    filt = filt.contiguous()
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    execute(cached_plan(plan, batch, channels, length, causal, x.dtype, config), {"x": x, "filt": filt, "out": out})
    return out
