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
    # exclusive; the last lag of the program's last real output block (columns past num_blocks are masked, and a
    # ragged length such as 517 = 512 + 5 tabular tokens would otherwise loop over lags no column uses)
    lag_hi = tl.minimum(t1_first + NT, num_blocks)

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
    """Tile sizes by shape; no autotuning at call time. 64-step tiles from L = 256 (benchmarks/kernels.py --sweep
    on the H100), 16-step ones below. A program's 128 columns take the batch rows first (up to 32), then output
    blocks (NT <= 16, at least 4): in CUDA-graph replay on the H200 (benchmarks/long_conv_tiles.py, 2026-12-01;
    bf16, 768 channels) NT = 4 is fastest at batch 32 (L = 2048 causal: 0.476 ms against 0.563 at NT = 16,
    two-sided 0.871 against 1.076) and NT = 16 at batch 1 and 8 (2048 causal: 0.107 and 0.149 ms)."""
    block_k = 64 if length >= 256 else 16
    num_blocks = triton.cdiv(length, block_k)
    nt = min(16, triton.next_power_of_2(num_blocks), max(4, 128 // triton.next_power_of_2(batch)))
    return tile_config(batch, length, nt)


def tile_config(batch: int, length: int, nt: int) -> dict[str, int]:
    """The tiles for NT output blocks per program: as many batch rows as fill 128 columns (at least 16)."""
    block_k = 64 if length >= 256 else 16
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


# Toeplitz kernel against torch.fft (the reference), H200, bf16, 768 channels, fft time / Toeplitz time in
# CUDA-graph replay (`do_bench_cudagraph`: the GPU work alone, what backend="cuda" pays), 2026-12-01 05:25 UTC
# (`python3 benchmarks/long_conv_crossover.py --batches 1,8,32`, whole table in benchmarks/RESULTS.md):
#   L                     128    512    1024   2048   2304   2560   3072   4096   8192
#   batch 1    causal     5.74x  1.81x  1.43x  0.81x  0.67x  0.68x  0.72x  0.47x  0.30x
#              two-sided  4.01x  1.05x  0.84x  0.49x  0.44x  0.43x  0.42x  0.28x  0.17x
#   batch 8    causal     8.56x  5.05x  4.45x  2.85x  2.33x  2.56x  2.74x  1.73x  1.01x
#              two-sided  5.89x  2.94x  2.49x  1.55x  1.46x  1.51x  1.46x  0.93x  0.54x
#   batch 32   causal     12.4x  9.19x  5.74x  3.22x  3.70x  3.52x  2.97x  1.81x  1.04x
#              two-sided  8.14x  5.75x  3.21x  1.79x  2.02x  1.89x  1.61x  0.98x  0.55x
# So the kernel runs up to the last measured length where it was faster, torch.fft beyond: causal to 4096 (at 8192
# the two tie), two-sided to 3072. A batch of 1 fills one column in 16 of a program's tiles: causal to 1024,
# two-sided to 512 (517: 0.97x); batch 2 was not timed and takes batch 1's limits, the safe side, since the
# kernel's share of a program grows with the batch. Ragged lengths pay the padding to LENGTH_ALIGNMENT
# (the model's 133 at batch 1: 0.015 ms against 0.004 at 128), which is why backend "cuda" aligns its buckets.
# Eager calls pay ~0.15 ms of host time per Toeplitz launch, which makes torch.fft faster eagerly below L = 1024;
# eager with the Triton ops is launch-bound as a whole, so the choice follows the replayed numbers. Past these
# lengths the way forward is an FFT on tensor cores (FlashFFTConv), not this choice.
TOEPLITZ_MAX_LENGTH = {True: 4096, False: 3072}  # causal -> longest length that runs the kernel (batch >= 3)
TOEPLITZ_MAX_LENGTH_BATCH_1_2 = {True: 1024, False: 512}


def choose_algorithm(length: int, causal: bool, batch: int) -> str:
    """"toeplitz" (this module's kernel, described by plan()) or "fft" (torch.fft, the reference), by length and
    batch."""
    limit = (TOEPLITZ_MAX_LENGTH_BATCH_1_2 if batch <= 2 else TOEPLITZ_MAX_LENGTH)[causal]
    return "toeplitz" if length <= limit else "fft"


# Sequence lengths are padded to a multiple of this before the kernel runs: Triton specialises integer arguments
# divisible by 16, and only then vectorises the loads along a row of x. At the model's odd lengths (517, 2053) the
# unpadded kernel was 2.5-3x slower than at 512 and 2048 with the same number of tiles (long_conv_tiles.py).
LENGTH_ALIGNMENT = 16


def long_conv(x: Tensor, filt: Tensor, causal: bool, config: dict[str, int] | None = None) -> Tensor:
    """Launch the kernel: x [B, D, L], filt [D, L] (causal) or [D, 2L-1] (two-sided) -> [B, D, L].
    (The op, mahia.kernels.ops.long_conv, calls it where choose_algorithm says "toeplitz".)"""
    batch, channels, length = x.shape
    filt_len = length if causal else 2 * length - 1
    if tuple(filt.shape) != (channels, filt_len):
        raise ValueError(f"long_conv: filt has shape {tuple(filt.shape)}, expected ({channels}, {filt_len}) "
                         f"for x {tuple(x.shape)} and causal={causal}")
    padded = triton.cdiv(length, LENGTH_ALIGNMENT) * LENGTH_ALIGNMENT
    if padded != length and x.numel():
        # Zeros after the sequence change no output t < L; the filter's taps are re-indexed for the padded length
        # (two-sided: offset o sits at o + padded - 1), its new taps zero.
        pad = padded - length
        x = torch.nn.functional.pad(x, (0, pad))
        filt = torch.nn.functional.pad(filt, (0, pad) if causal else (pad, pad))
        return long_conv(x, filt, causal, config)[..., :length].contiguous()
    x = x.contiguous()
    filt = filt.contiguous()
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    execute(cached_plan(plan, batch, channels, length, causal, x.dtype, config), {"x": x, "filt": filt, "out": out})
    return out
