"""Portable ONNX lowerings of the `mahia::` custom ops: onnxscript functions of standard ONNX ops.

Each function has the custom op's signature and is traced by `torch.onnx.export(dynamo=True)`
through its `custom_translation_table`; static arguments (causal, chunk_size, top_k) arrive as
Python values, so their branches resolve at export time. Every lowering computes in float32, as the
references in mahia.kernels.reference do, and is held to them by tests/export/test_export_lowering.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from onnx import TensorProto
from onnxscript import opset21 as op

import mahia.kernels  # noqa: F401  (registers the mahia:: ops this module lowers)

OPSET = 21
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def _i64(*values: int):
    return op.Constant(value_ints=list(values))


def _f32(value: float):
    return op.Constant(value_float=value)


def _dim(x, axis: int):
    """Size of one axis of x as a 1-element int64 tensor."""
    return op.Shape(x, start=axis, end=axis + 1 if axis != -1 else None)


def long_conv_dft(x, filt, causal: bool):
    """FFT long convolution by complex DFT of a power-of-two size n >= 2L (ONNX DFT, opset 20+).

    Any n >= 2L gives the same linear convolution on the kept outputs (see the reference); rounding
    n up to a power of two lets ONNX Runtime use its radix-2 FFT rather than an O(n^2) DFT.
    """
    dtype_like = x
    x = op.Cast(x, to=FLOAT)
    filt = op.Cast(filt, to=FLOAT)
    length = _dim(x, 2)
    # n = 2 ** ceil(log2(2L)) computed in float; a rounding up by one power only costs time.
    two_l = op.Cast(op.Mul(length, _i64(2)), to=FLOAT)
    n = op.Cast(op.Pow(_f32(2.0), op.Ceil(op.Div(op.Log(two_l), _f32(math.log(2.0))))), to=INT64)
    n_scalar = op.Squeeze(n, _i64(0))
    axis = op.Constant(value_int=-2)
    x_c = op.DFT(op.Unsqueeze(x, _i64(-1)), n_scalar, axis, onesided=0)  # [B, D, n, 2]
    f_c = op.DFT(op.Unsqueeze(filt, _i64(-1)), n_scalar, axis, onesided=0)  # [D, n, 2]
    xr, xi = op.Split(x_c, num_outputs=2, axis=-1)
    fr, fi = op.Split(f_c, num_outputs=2, axis=-1)
    real = op.Sub(op.Mul(xr, fr), op.Mul(xi, fi))
    imag = op.Add(op.Mul(xr, fi), op.Mul(xi, fr))
    full = op.DFT(op.Concat(real, imag, axis=-1), n_scalar, axis, inverse=1, onesided=0)
    real_part = op.Squeeze(op.Slice(full, _i64(0), _i64(1), _i64(-1)), _i64(-1))  # [B, D, n]
    start = _i64(0) if causal else op.Sub(length, _i64(1))
    out = op.Slice(real_part, start, op.Add(start, length), _i64(2))
    return op.CastLike(out, dtype_like)


def _cos_sin(phase, n):
    """cos and sin of 2*pi*(phase mod n)/n for an int64 tensor of phases (products of time and bin indices).

    The product is reduced mod n in integers first, so every angle lies in [0, 2*pi) and float32 keeps it
    to ~1e-7 whatever the length. (Gathering them from one period of n values measured slower in ORT.)
    """
    angle = op.Mul(op.Cast(op.Mod(phase, n), to=FLOAT), op.Div(_f32(2.0 * math.pi), op.Cast(n, to=FLOAT)))
    return op.Cos(angle), op.Sin(angle)


def _complex_mul(a_re, a_im, b_re, b_im):
    """(a_re + i a_im) * (b_re + i b_im) as its real and imaginary parts."""
    return op.Sub(op.Mul(a_re, b_re), op.Mul(a_im, b_im)), op.Add(op.Mul(a_re, b_im), op.Mul(a_im, b_re))


def _spectrum(signal, times, bins, n):
    """Re and Im of sum_t signal[..., t] e^{-2 pi i t k / n} at each bin k (times: the t of each sample)."""
    cos, sin = _cos_sin(op.Mul(op.Unsqueeze(times, _i64(1)), bins), n)  # [T, K]
    return op.MatMul(signal, cos), op.MatMul(signal, op.Neg(sin))


def _real_inverse(z_re, z_im, bins, outputs, weight, n):
    """sum_k weight_k Re(Z_k e^{2 pi i k m / n}) at each output m: one inverse real DFT as two MatMuls."""
    cos, sin = _cos_sin(op.Mul(op.Unsqueeze(bins, _i64(1)), outputs), n)  # [K, M]
    return op.Add(op.MatMul(z_re, op.Mul(cos, weight)), op.MatMul(z_im, op.Neg(op.Mul(sin, weight))))


def long_conv_matmul(x, filt, causal: bool):
    """Long convolution as a real DFT of size n = 4P (P = floor(L/2) + 1) written as MatMuls, one radix-2 step deep.

    A dense real DFT as a MatMul costs O(L^2) per row; one radix-2 step halves it. The even and odd time
    samples each take a DFT over the bins k = 0..P (A, B) and the butterfly X[k] = A + B,
    X[n/2 - k] = conj(A - B) gives the whole one-sided spectrum. The filter's spectrum is wanted in the
    same two halves: conj(F[n/2 - k]) is the DFT of (-1)^u f[u] at bin k. Backwards, the even outputs
    need Y[k] + conj(Y[n/2 - k]) and the odd ones Y[k] - conj(Y[n/2 - k]), each one inverse real DFT
    over the P + 1 bins, interleaved at the end. Any n >= 2L - 1 gives the linear convolution on the kept
    outputs (see the reference); two-sided filters keep the outputs from L - 1 on, so the 2P computed
    outputs start at the even offset m0 = L - 1 or L - 2 and, as 2P >= L + 1, cover the L kept ones.
    The DFT matrices are built at run time from the length, once per graph (graph_passes). ONNX Runtime's
    DFT kernel is slower at the lengths this is chosen for (long_conv_lowering).
    """
    dtype_like = x
    x = op.Cast(x, to=FLOAT)
    filt = op.Cast(filt, to=FLOAT)
    zero, one, two = op.Constant(value_int=0), op.Constant(value_int=1), op.Constant(value_int=2)
    length = op.Squeeze(_dim(x, 2), _i64(0))
    half = op.Add(op.Div(length, two), one)  # P
    n = op.Mul(half, op.Constant(value_int=4))
    bins = op.Range(zero, op.Add(half, one), one)  # k = 0..P

    # Even and odd samples of x zero-padded to even length: Split of the innermost pairs measured 1.4x faster
    # in ORT than two strided Slices (benchmarks/ort_patterns.py).
    pairs = op.Div(op.Add(length, one), two)
    padded = op.Pad(x, op.Concat(_i64(0, 0, 0, 0, 0), op.Unsqueeze(op.Sub(op.Mul(pairs, two), length), _i64(0)),
                                 axis=0))
    x_even, x_odd = op.Split(op.Reshape(padded, op.Concat(op.Shape(x, start=0, end=2), _i64(-1, 2), axis=0)),
                             num_outputs=2, axis=-1)
    a_re, a_im = _spectrum(op.Squeeze(x_even, _i64(-1)), op.Range(zero, op.Mul(pairs, two), two), bins, n)
    b_re, b_im = _spectrum(op.Squeeze(x_odd, _i64(-1)), op.Range(one, op.Mul(pairs, two), two), bins, n)
    taps = op.Range(zero, op.Squeeze(_dim(filt, 1), _i64(0)), one)
    alternating = op.Sub(_f32(1.0), op.Mul(_f32(2.0), op.Cast(op.Mod(taps, two), to=FLOAT)))  # (-1)^u
    f_re, f_im = _spectrum(filt, taps, bins, n)
    g_re, g_im = _spectrum(op.Mul(filt, alternating), taps, bins, n)  # conj(F[n/2 - k])
    u_re, u_im = _complex_mul(op.Add(a_re, b_re), op.Add(a_im, b_im), f_re, f_im)  # Y[k]
    v_re, v_im = _complex_mul(op.Sub(a_re, b_re), op.Sub(a_im, b_im), g_re, g_im)  # conj(Y[n/2 - k])

    if causal:  # the kept outputs are m = 0 .. L-1
        first, start = zero, zero
    else:  # the kept outputs are m = L-1 .. 2L-2; the computed ones start at L-1 rounded down to even
        start = op.Mod(op.Sub(length, one), two)
        first = op.Sub(op.Sub(length, one), start)
    end = op.Add(first, op.Mul(half, two))
    edge = op.Or(op.Equal(bins, zero), op.Equal(bins, half))
    weight = op.Unsqueeze(op.Div(op.Where(edge, _f32(1.0), _f32(2.0)), op.Cast(n, to=FLOAT)), _i64(1))  # [P+1, 1]
    y_even = _real_inverse(op.Add(u_re, v_re), op.Add(u_im, v_im), bins, op.Range(first, end, two), weight, n)
    y_odd = _real_inverse(op.Sub(u_re, v_re), op.Sub(u_im, v_im), bins, op.Range(op.Add(first, one), end, two),
                          weight, n)  # [B, D, P] each
    # Interleaved by Concat on a new last axis: as fast in ORT as a Transpose of the stacked halves, and steadier
    # (benchmarks/ort_patterns.py).
    interleaved = op.Concat(op.Unsqueeze(y_even, _i64(-1)), op.Unsqueeze(y_odd, _i64(-1)), axis=-1)
    y = op.Reshape(interleaved, op.Concat(op.Shape(x, start=0, end=2), _i64(-1), axis=0))
    start = op.Unsqueeze(start, _i64(0))
    return op.CastLike(op.Slice(y, start, op.Add(start, op.Unsqueeze(length, _i64(0))), _i64(2)), dtype_like)


def _segment_sum(a):
    """out[..., i, j] = a[..., j+1] + ... + a[..., i] for i >= j, -inf above the diagonal (see the reference).

    Written as a difference of one cumulative sum, as Mamba-2's Triton kernels do: two elementwise passes
    over [.., l, l] where the reference's masked cumulative sum of an expanded copy takes four (that form
    measured 10 % of ONNX Runtime's time on `small` at 8 x 384). The cancellation adds float32 rounding of
    the running sum: a relative error of about 6e-8 times the chunk's summed |a dt| once exponentiated.
    """
    size = _dim(a, -1)
    steps = op.Range(op.Squeeze(_i64(0), _i64(0)), op.Squeeze(size, _i64(0)), op.Squeeze(_i64(1), _i64(0)))
    sums = op.CumSum(a, op.Constant(value_int=-1))
    differences = op.Sub(op.Unsqueeze(sums, _i64(-1)), op.Unsqueeze(sums, _i64(-2)))
    # Adding a small [l, l] mask of 0 / -inf measured 6x faster in ONNX Runtime than a Where on the full tensor
    # (benchmarks/ort_patterns.py).
    causal = op.GreaterOrEqual(op.Unsqueeze(steps, _i64(1)), op.Unsqueeze(steps, _i64(0)))
    return op.Add(differences, op.Where(causal, _f32(0.0), _f32(-math.inf)))


def ssd_scan(x, dt, a, b, c, chunk_size: int):
    """Mamba-2 SSD scan in the chunked matmul form of the reference, as ONNX MatMul/CumSum/Exp."""
    dtype_like = x
    x, dt, a, b, c = (op.Cast(t, to=FLOAT) for t in (x, dt, a, b, c))
    length = _dim(x, 1)
    chunk = _i64(chunk_size)
    pad = op.Mod(op.Sub(chunk, op.Mod(length, chunk)), chunk)
    pads = op.Concat(_i64(0), pad, axis=0)
    along_time = _i64(1)
    x = op.Pad(x, pads, _f32(0.0), along_time)
    dt = op.Pad(dt, pads, _f32(0.0), along_time)
    b = op.Pad(b, pads, _f32(0.0), along_time)
    c = op.Pad(c, pads, _f32(0.0), along_time)

    xs = op.Reshape(op.Mul(x, op.Unsqueeze(dt, _i64(-1))),
                    op.Concat(_i64(0, -1, chunk_size), op.Shape(x, start=2), axis=0))
    a_dt = op.Transpose(op.Reshape(op.Mul(dt, a), op.Concat(_i64(0, -1, chunk_size), op.Shape(dt, start=2), axis=0)),
                        perm=[0, 3, 1, 2])  # b h c l
    chunked = op.Concat(_i64(0, -1, chunk_size), op.Shape(b, start=2), axis=0)
    b = op.Reshape(b, chunked)
    c = op.Reshape(c, chunked)
    a_cumsum = op.CumSum(a_dt, op.Constant(value_int=-1))
    a_last = op.Slice(a_cumsum, _i64(-1), _i64(2**62), _i64(-1))  # b h c 1

    # The reference's einsums, written as batched MatMuls: as Einsum nodes they took 27 % of ONNX
    # Runtime's time on `small` at 1 x 128, and the graph ran 1.5x faster without them. Intermediates stay
    # in a heads-first [b, h, c, ...] layout so each product is one MatMul.
    xs_heads = op.Transpose(xs, perm=[0, 3, 1, 2, 4])  # b h c l p
    decay = op.Exp(_segment_sum(a_dt))  # b h c l s
    scores = op.MatMul(c, op.Transpose(b, perm=[0, 1, 3, 2]))  # b c l s
    y_diag = op.MatMul(op.Mul(op.Unsqueeze(scores, _i64(1)), decay), xs_heads)  # b h c l p

    decay_to_end = op.Exp(op.Sub(a_last, a_cumsum))  # b h c l
    weighted = op.Mul(xs_heads, op.Unsqueeze(decay_to_end, _i64(-1)))
    states = op.MatMul(op.Transpose(weighted, perm=[0, 1, 2, 4, 3]), op.Unsqueeze(b, _i64(1)))  # b h c p n
    states = op.Concat(op.Mul(op.Slice(states, _i64(0), _i64(1), _i64(2)), _f32(0.0)), states, axis=2)
    chunk_ends = op.Pad(op.Squeeze(a_last, _i64(-1)), _i64(1, 0), _f32(0.0), _i64(-1))  # b h c+1
    chunk_decay = op.Exp(_segment_sum(chunk_ends))  # b h z c
    flat = op.Reshape(states, op.Concat(op.Shape(states, start=0, end=3), _i64(-1), axis=0))  # b h c (p n)
    states = op.Reshape(op.MatMul(chunk_decay, flat),
                        op.Concat(op.Shape(chunk_decay, start=0, end=3), op.Shape(states, start=3), axis=0))
    states = op.Slice(states, _i64(0), _i64(-1), _i64(2))  # b h c p n: the state entering each chunk

    y_off = op.Mul(op.MatMul(op.Unsqueeze(c, _i64(1)), op.Transpose(states, perm=[0, 1, 2, 4, 3])),
                   op.Unsqueeze(op.Exp(a_cumsum), _i64(-1)))  # b h c l p
    y = op.Transpose(op.Add(y_diag, y_off), perm=[0, 2, 3, 1, 4])  # b c l h p
    y = op.Reshape(y, op.Concat(_i64(0, -1), op.Shape(x, start=2), axis=0))
    return op.CastLike(op.Slice(y, _i64(0), length, _i64(1)), dtype_like)


def moe_ffn(x, router_logits, mask, w1, w2, top_k: int, capacity_factor: float):
    """Dropless top-k MoE, sparse: each expert runs on exactly the tokens routed to it (exact for inference).

    Routing is the reference's: softmax in float32, top-k, renormalised, masked tokens weighted 0. Then,
    per expert, NonZero finds its tokens, Gather feeds them through the SwiGLU expert and ScatterND(add)
    accumulates the weighted outputs: E / k times fewer expert FLOPs than running every expert on every
    token (the dense combine measured 60 % of ONNX Runtime's time on `base` at 8 x 512).
    """
    if capacity_factor > 0:
        raise NotImplementedError("moe_ffn lowering is dropless only (capacity_factor <= 0, the eval-mode "
                                  f"setting); got capacity_factor={capacity_factor}: export the model in eval()")
    num_experts = int(w1.shape[0])  # the weights are initializers: their shape is static
    probs = op.Softmax(op.Cast(router_logits, to=FLOAT), axis=-1)
    top_probs, experts = op.TopK(probs, _i64(min(top_k, num_experts)), axis=-1, largest=1, sorted=1)
    weights = op.Div(top_probs, op.ReduceSum(top_probs, _i64(-1), keepdims=1))
    dense = op.ScatterElements(op.Mul(probs, _f32(0.0)), experts, weights, axis=1)
    dense = op.Mul(dense, op.Unsqueeze(op.Cast(mask, to=FLOAT), _i64(1)))  # [T, E]; masked tokens get 0
    out = op.Mul(op.Cast(x, to=FLOAT), _f32(0.0))  # [T, D] accumulator
    for expert in range(num_experts):
        index = op.Constant(value_int=expert)
        weight = op.Gather(dense, index, axis=1)  # [T]
        rows = op.Squeeze(op.NonZero(op.Greater(weight, _f32(0.0))), _i64(0))  # the tokens routed here
        hidden = op.MatMul(op.Gather(x, rows, axis=0), op.Transpose(op.Gather(w1, index, axis=0), perm=[1, 0]))
        gate, up = op.Split(hidden, num_outputs=2, axis=-1)
        expert_out = op.MatMul(op.Mul(op.Mul(gate, op.Sigmoid(gate)), up),
                               op.Transpose(op.Gather(w2, index, axis=0), perm=[1, 0]))  # [n, D]
        weighted = op.Mul(op.Cast(expert_out, to=FLOAT), op.Unsqueeze(op.Gather(weight, rows, axis=0), _i64(1)))
        out = op.ScatterND(out, op.Unsqueeze(rows, _i64(1)), weighted, reduction="add")
    return op.CastLike(out, x)


def gate_combine(branches, gate_logits):
    """Meta-gate: float32 softmax over the 3 branch logits, rounded to the branches' dtype, weighted sum."""
    weights = op.CastLike(op.Softmax(op.Cast(gate_logits, to=FLOAT), axis=-1), branches)  # [B, L, 3]
    # [B, L, D, 3] @ [B, L, 3, 1]: ONNX Runtime's broadcast Mul + ReduceSum over the innermost 3 measured
    # 3.5x slower than this batched MatMul at 8 x 389 x 96 (benchmarks/ort_patterns.py).
    return op.Squeeze(op.MatMul(branches, op.Unsqueeze(weights, _i64(-1))), _i64(-1))


# Longest sequence (tokens, tabular ones included) a graph may see for long_conv to lower to MatMuls:
# beyond it ONNX Runtime's DFT is faster (measured, benchmarks/RESULTS.md "long_conv lowerings").
MATMUL_DFT_MAX_LENGTH = 1024


def long_conv_lowering(max_length: int) -> Callable:
    """long_conv's lowering for graphs whose sequences are at most max_length tokens long."""
    return long_conv_matmul if max_length <= MATMUL_DFT_MAX_LENGTH else long_conv_dft


def portable_translations(max_length: int) -> dict[Callable, Callable]:
    """The portable flavour's custom_translation_table for sequences of at most max_length tokens."""
    return {
        torch.ops.mahia.long_conv.default: long_conv_lowering(max_length),
        torch.ops.mahia.ssd_scan.default: ssd_scan,
        torch.ops.mahia.moe_ffn.default: moe_ffn,
        torch.ops.mahia.gate_combine.default: gate_combine,
    }
