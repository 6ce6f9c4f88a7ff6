"""Triton kernels of the meta-attention's elementwise ends, for backend "cuda": the Hyena short convolution that
feeds the long conv (`mahia::hyena_short_conv`), the gate's weighted sum with the branches' last steps
(`mahia::meta_attention_combine`), and the SSD branch's skip, SiLU gate and RMSNorm (`mahia::ssd_gated_norm`).

Why: half the meta-attention's tensors are [B, D, L] (the long convs run along L) and half [B, L, D] (the GEMMs),
and the elementwise steps between them change layout. Compiled, Inductor tiled those steps in one dimension, so the
[B, D, L] side was read 2 bytes at a time with a stride of L, and it kept the short conv's output in float32. On
the H200 at 32 x 2059 tokens (base config, `benchmarks/forward_kernels.py --deployed`, 2026-12-01) the three kernels
took 8.9 ms of 59.6 ms a forward: the short conv 2.54 ms (a float32 [B, L, 3D] written), the kv transpose 0.96 ms,
the gate's sum 5.36 ms (1.5 TB/s). Here each program holds a [BLOCK_L, BLOCK_D] tile: Triton loads the [B, D, L]
side along L and the [B, L, D] side along D, and exchanges them through shared memory. The SSD's gated norm was a
two-pass Inductor reduction at that size, its gated rows written in float32 and read back: 1.84 ms; here each
program holds whole rows.

All three compute in float32 and round each output once; they have no AOT entry (no TensorRT plugin runs them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mahia.kernels.triton.plan import Buffer, KernelPlan, cached_plan, execute, launch, pointer, scalar


@triton.jit
def tile_indices(BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's (batch as int64, positions, channels) on the grid (L blocks, D blocks, batch)."""
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    feats = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    return tl.program_id(2).to(tl.int64), rows, feats


@triton.jit
def hyena_short_conv_kernel(proj_ptr, weight_ptr, bias_ptr, q_ptr, kv_ptr, length, dim,
                            WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """q = conv(proj)[:, :D] as [B, L, D], kv = conv(proj)[:, D:2D] * conv(proj)[:, 2D:] as [B, D, L]; conv is the
    causal depthwise conv of width WIDTH over proj [B, L, 3D]: c[t] = bias + sum_j weight[j] * proj[t - WIDTH + 1 + j],
    summed in that order in float32, each channel rounded to the output dtype before the product (as the model)."""
    batch, rows, feats = tile_indices(BLOCK_L, BLOCK_D)
    feat_ok = feats < dim
    channels = 3 * dim
    proj_ptr += batch * length * channels
    acc_q = tl.zeros((BLOCK_L, BLOCK_D), tl.float32) + tl.load(bias_ptr + feats, mask=feat_ok)[None, :]
    acc_k = tl.zeros((BLOCK_L, BLOCK_D), tl.float32) + tl.load(bias_ptr + dim + feats, mask=feat_ok)[None, :]
    acc_v = tl.zeros((BLOCK_L, BLOCK_D), tl.float32) + tl.load(bias_ptr + 2 * dim + feats, mask=feat_ok)[None, :]
    for j in tl.static_range(WIDTH):
        src = rows - (WIDTH - 1) + j
        ok = ((src >= 0) & (src < length))[:, None] & feat_ok[None, :]
        tile = proj_ptr + src[:, None] * channels + feats[None, :]
        taps = weight_ptr + j * channels + feats
        acc_q += tl.load(taps, mask=feat_ok)[None, :] * tl.load(tile, mask=ok, other=0.0).to(tl.float32)
        acc_k += tl.load(taps + dim, mask=feat_ok)[None, :] * tl.load(tile + dim, mask=ok, other=0.0).to(tl.float32)
        acc_v += tl.load(taps + 2 * dim, mask=feat_ok)[None, :] * \
            tl.load(tile + 2 * dim, mask=ok, other=0.0).to(tl.float32)
    out_ty = q_ptr.dtype.element_ty
    k = acc_k.to(out_ty).to(tl.float32)
    v = acc_v.to(out_ty).to(tl.float32)
    ok = (rows < length)[:, None] & feat_ok[None, :]
    tl.store(q_ptr + batch * length * dim + rows[:, None] * dim + feats[None, :], acc_q.to(out_ty), mask=ok)
    tl.store(kv_ptr + batch * dim * length + feats[None, :] * length + rows[:, None], (k * v).to(out_ty), mask=ok)


@triton.jit
def meta_attention_combine_kernel(q_ptr, hyena_conv_ptr, kv_ptr, skip_ptr, ssd_ptr, fourier_conv_ptr, logits_ptr,
                                  out_ptr, length, dim, logits_stride,
                                  BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """out [B, L, D] = w0 * q * (hyena_conv + skip * kv) + w1 * ssd + w2 * gelu(fourier_conv), w = softmax(logits);
    q, ssd [B, L, D]; hyena_conv, kv, fourier_conv [B, D, L]; logits rows of `logits_stride` elements, 3 used."""
    batch, rows, feats = tile_indices(BLOCK_L, BLOCK_D)
    row_ok = rows < length
    ok = row_ok[:, None] & (feats < dim)[None, :]

    logit_rows = logits_ptr + (batch * length + rows) * logits_stride
    logit0 = tl.load(logit_rows, mask=row_ok, other=0.0).to(tl.float32)
    logit1 = tl.load(logit_rows + 1, mask=row_ok, other=0.0).to(tl.float32)
    logit2 = tl.load(logit_rows + 2, mask=row_ok, other=0.0).to(tl.float32)
    peak = tl.maximum(tl.maximum(logit0, logit1), logit2)
    exp0, exp1, exp2 = tl.exp(logit0 - peak), tl.exp(logit1 - peak), tl.exp(logit2 - peak)
    total = exp0 + exp1 + exp2

    by_token = batch * length * dim + rows[:, None] * dim + feats[None, :]  # [B, L, D] tensors
    by_channel = batch * dim * length + feats[None, :] * length + rows[:, None]  # [B, D, L] tensors
    q = tl.load(q_ptr + by_token, mask=ok, other=0.0).to(tl.float32)
    ssd = tl.load(ssd_ptr + by_token, mask=ok, other=0.0).to(tl.float32)
    hyena_conv = tl.load(hyena_conv_ptr + by_channel, mask=ok, other=0.0).to(tl.float32)
    kv = tl.load(kv_ptr + by_channel, mask=ok, other=0.0).to(tl.float32)
    fourier_conv = tl.load(fourier_conv_ptr + by_channel, mask=ok, other=0.0).to(tl.float32)
    skip = tl.load(skip_ptr + feats, mask=feats < dim, other=0.0).to(tl.float32)

    hyena = q * (hyena_conv + skip[None, :] * kv)
    fourier = 0.5 * fourier_conv * (1.0 + tl.math.erf(fourier_conv * 0.7071067811865476))
    out = ((exp0 / total)[:, None] * hyena + (exp1 / total)[:, None] * ssd) + (exp2 / total)[:, None] * fourier
    tl.store(out_ptr + by_token, out.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def ssd_gated_norm_kernel(y_ptr, x_ptr, z_ptr, skip_ptr, weight_ptr, out_ptr, num_tokens, inner, head_dim, x_stride,
                          z_stride, EPS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[t] = g * rsqrt(mean(g^2) + EPS) * weight with g = (y[t] + skip[head] * x[t]) * silu(z[t]), for BLOCK_T
    tokens; y rows of `inner` elements, x and z rows of x_stride and z_stride; each whole row is held in registers."""
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < inner
    ok = (rows < num_tokens)[:, None] & col_ok[None, :]
    y = tl.load(y_ptr + rows[:, None] * inner + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + rows[:, None] * z_stride + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    skip = tl.load(skip_ptr + cols // head_dim, mask=col_ok, other=0.0).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    gated = (y + skip[None, :] * x) * (z / (1.0 + tl.exp(-z)))
    inv_rms = 1.0 / tl.sqrt(tl.sum(gated * gated, axis=1) / inner + EPS)
    out = gated * inv_rms[:, None] * weight[None, :]
    tl.store(out_ptr + rows[:, None] * inner + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=ok)


# Tiles of 64 x 64: each row of a [B, D, L] tile is 128 contiguous bytes.
CONFIG = {"BLOCK_L": 64, "BLOCK_D": 64, "num_warps": 4}


def short_conv_plan(batch: int, length: int, dim: int, width: int, dtype: torch.dtype) -> KernelPlan:
    """One launch: proj [B, L, 3D] (dtype), weight [width, 3D] and bias [3D] (float32) -> q [B, L, D], kv [B, D, L]."""
    cfg = CONFIG
    grid = (triton.cdiv(length, cfg["BLOCK_L"]), triton.cdiv(dim, cfg["BLOCK_D"]), batch)
    step = launch("meta_attention", "hyena_short_conv_kernel", grid, cfg["num_warps"], 1,
                  {"WIDTH": width, "BLOCK_L": cfg["BLOCK_L"], "BLOCK_D": cfg["BLOCK_D"]},
                  [pointer("proj_ptr"), pointer("weight_ptr"), pointer("bias_ptr"), pointer("q_ptr"),
                   pointer("kv_ptr"), scalar("length", length), scalar("dim", dim)],
                  reads=("proj", "weight", "bias"), writes=("q", "kv"), entry=None)
    tokens = batch * length
    buffers = (Buffer("proj", dtype, tokens * 3 * dim), Buffer("weight", torch.float32, width * 3 * dim),
               Buffer("bias", torch.float32, 3 * dim), Buffer("q", dtype, tokens * dim),
               Buffer("kv", dtype, tokens * dim))
    return KernelPlan("hyena_short_conv", ("proj", "weight", "bias"), ("q", "kv"), buffers, (step,),
                      {"batch": batch, "length": length, "dim": dim, "width": width, "dtype": dtype})


def combine_plan(batch: int, length: int, dim: int, logits_stride: int, dtype: torch.dtype,
                 logits_dtype: torch.dtype) -> KernelPlan:
    """One launch: the branch tensors (dtype, see the kernel) and logits [B * L rows of logits_stride] -> out."""
    cfg = CONFIG
    grid = (triton.cdiv(length, cfg["BLOCK_L"]), triton.cdiv(dim, cfg["BLOCK_D"]), batch)
    names = ("q", "hyena_conv", "kv", "skip", "ssd", "fourier_conv", "logits")
    step = launch("meta_attention", "meta_attention_combine_kernel", grid, cfg["num_warps"], 1,
                  {"BLOCK_L": cfg["BLOCK_L"], "BLOCK_D": cfg["BLOCK_D"]},
                  [*(pointer(f"{name}_ptr") for name in names), pointer("out_ptr"), scalar("length", length),
                   scalar("dim", dim), scalar("logits_stride", logits_stride)],
                  reads=names, writes=("out",), entry=None)
    tokens = batch * length
    buffers = (*(Buffer(name, dtype, tokens * dim) for name in names[:3]), Buffer("skip", dtype, dim),
               *(Buffer(name, dtype, tokens * dim) for name in names[4:6]),
               Buffer("logits", logits_dtype, tokens * logits_stride), Buffer("out", dtype, tokens * dim))
    return KernelPlan("meta_attention_combine", names, ("out",), buffers, (step,),
                      {"batch": batch, "length": length, "dim": dim, "logits_stride": logits_stride, "dtype": dtype,
                       "logits_dtype": logits_dtype})


NORM_TOKENS = 4  # rows of the gated norm per program (whole rows of `inner` elements each)


def gated_norm_plan(num_tokens: int, inner: int, head_dim: int, x_stride: int, z_stride: int, eps: float,
                    dtype: torch.dtype) -> KernelPlan:
    """One launch: y [T, inner], x and z (rows of x_stride, z_stride), skip [inner / head_dim], weight [inner]
    -> out [T, inner]."""
    block_c = triton.next_power_of_2(inner)
    step = launch("meta_attention", "ssd_gated_norm_kernel", (triton.cdiv(num_tokens, NORM_TOKENS),),
                  4 if block_c <= 1024 else 8, 1, {"EPS": eps, "BLOCK_T": NORM_TOKENS, "BLOCK_C": block_c},
                  [pointer("y_ptr"), pointer("x_ptr"), pointer("z_ptr"), pointer("skip_ptr"), pointer("weight_ptr"),
                   pointer("out_ptr"), scalar("num_tokens", num_tokens), scalar("inner", inner),
                   scalar("head_dim", head_dim), scalar("x_stride", x_stride), scalar("z_stride", z_stride)],
                  reads=("y", "x", "z", "skip", "weight"), writes=("out",), entry=None)
    rows = max(num_tokens - 1, 0)
    buffers = (Buffer("y", dtype, num_tokens * inner), Buffer("x", dtype, rows * x_stride + inner),
               Buffer("z", dtype, rows * z_stride + inner), Buffer("skip", dtype, inner // head_dim),
               Buffer("weight", dtype, inner), Buffer("out", dtype, num_tokens * inner))
    return KernelPlan("ssd_gated_norm", ("y", "x", "z", "skip", "weight"), ("out",), buffers, (step,),
                      {"num_tokens": num_tokens, "inner": inner, "head_dim": head_dim, "x_stride": x_stride,
                       "z_stride": z_stride, "eps": eps, "dtype": dtype})


def hyena_short_conv(proj: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Launch the kernel: proj [B, L, 3D], weight [width, 3D], bias [3D] -> q [B, L, D], kv [B, D, L]."""
    batch, length, channels = proj.shape
    dim = channels // 3
    proj = proj.contiguous()
    q = proj.new_empty(batch, length, dim)
    kv = proj.new_empty(batch, dim, length)
    if q.numel() == 0:
        return q, kv
    execute(cached_plan(short_conv_plan, batch, length, dim, weight.shape[0], proj.dtype),
            {"proj": proj, "weight": weight.float().contiguous(), "bias": bias.float().contiguous(), "q": q, "kv": kv})
    return q, kv


def meta_attention_combine(q: Tensor, hyena_conv: Tensor, kv: Tensor, skip: Tensor, ssd: Tensor,
                           fourier_conv: Tensor, gate_logits: Tensor) -> Tensor:
    """Launch the kernel (shapes as in its docstring; gate_logits [B, L, 3] of any float dtype, or a view of wider
    rows) -> [B, L, D]."""
    batch, length, dim = q.shape
    out = q.new_empty(batch, length, dim)
    if out.numel() == 0:
        return out
    logits = gate_logits.reshape(batch * length, 3)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    tensors = {"q": q.contiguous(), "hyena_conv": hyena_conv.contiguous(), "kv": kv.contiguous(),
               "skip": skip.to(q.dtype).contiguous(), "ssd": ssd.contiguous(),
               "fourier_conv": fourier_conv.contiguous(), "logits": logits, "out": out}
    execute(cached_plan(combine_plan, batch, length, dim, logits.stride(0), q.dtype, logits.dtype), tensors)
    return out


def ssd_gated_norm(y: Tensor, x: Tensor, skip: Tensor, z: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Launch the kernel: y, x [B, L, H, P] (x may be a view of wider rows), skip [H], z [B, L, H * P] (a view of
    wider rows too), weight [H * P] -> [B, L, H * P]."""
    batch, length, heads, head_dim = y.shape
    inner = heads * head_dim
    out = y.new_empty(batch, length, inner)
    if out.numel() == 0:
        return out
    tokens = batch * length
    x_rows, z_rows = (t.reshape(tokens, inner) for t in (x, z))  # views of the projection's rows where they are
    x_rows, z_rows = (t if t.stride(1) == 1 else t.contiguous() for t in (x_rows, z_rows))
    execute(cached_plan(gated_norm_plan, tokens, inner, head_dim, x_rows.stride(0), z_rows.stride(0), eps, y.dtype),
            {"y": y.contiguous(), "x": x_rows, "z": z_rows, "skip": skip.to(y.dtype).contiguous(),
             "weight": weight.to(y.dtype).contiguous(), "out": out})
    return out
