"""The op references against independent, obvious float64 implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mahia import kernels
from mahia.kernels import reference
from tests.conftest import relative_error


def direct_conv(x: torch.Tensor, filt: torch.Tensor, causal: bool) -> torch.Tensor:
    """O(L^2) convolution straight from the definition."""
    length = x.shape[-1]
    y = torch.zeros_like(x)
    for t in range(length):
        for s in range(length):
            if causal and s <= t:
                y[..., t] += filt[:, t - s] * x[..., s]
            elif not causal:
                y[..., t] += filt[:, t - s + length - 1] * x[..., s]
    return y


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 7, 33])
def test_long_conv_matches_direct_convolution(causal: bool, length: int, generator: torch.Generator) -> None:
    x = torch.randn(2, 3, length, dtype=torch.float64, generator=generator)
    filt = torch.randn(3, length if causal else 2 * length - 1, dtype=torch.float64, generator=generator)
    assert relative_error(kernels.long_conv(x, filt, causal), direct_conv(x, filt, causal)) < 1e-12


def test_long_conv_float32_tolerance(generator: torch.Generator) -> None:
    x = torch.randn(2, 4, 129, dtype=torch.float64, generator=generator)
    filt = torch.randn(4, 129, dtype=torch.float64, generator=generator)
    out = kernels.long_conv(x.float(), filt.float(), True)
    assert out.dtype == torch.float32
    assert relative_error(out, direct_conv(x, filt, True)) < 1e-5


def test_fft_length_is_the_smallest_7_smooth_size_from_2l() -> None:
    from mahia.kernels.reference.long_conv import fft_length

    def smooth(n: int) -> bool:
        for prime in (2, 3, 5, 7):
            while n % prime == 0:
                n //= prime
        return n == 1

    for length in range(1, 2100):
        n = fft_length(length)
        assert n >= 2 * length and smooth(n), length
        assert not any(smooth(m) for m in range(2 * length, n)), length
    assert fft_length(2053) == 4116  # 2 * 2053 has the prime factor 2053


@pytest.mark.parametrize("causal", [True, False])
def test_long_conv_any_fft_size_from_2l_is_exact(causal: bool, generator: torch.Generator) -> None:
    # The GPU path convolves at fft_length(L), the CPU one at 2L: both equal the direct convolution.
    from mahia.kernels.reference.long_conv import fft_conv, fft_length

    x = torch.randn(3, 4, 37, generator=generator, dtype=torch.float64)
    filt = torch.randn(4, 37 if causal else 73, generator=generator, dtype=torch.float64)
    want = direct_conv(x, filt, causal)
    for n in (74, fft_length(37), 128):
        assert relative_error(fft_conv(x, filt, causal, n), want) < 1e-12, n


def test_long_conv_rejects_wrong_filter_length() -> None:
    with pytest.raises(ValueError, match=r"filt must be \[D=3, 13\]"):
        reference.long_conv(torch.randn(1, 3, 7), torch.randn(3, 7), False)


def sequential_ssd(x, dt, a, b, c):
    """The recurrence h_t = exp(dt_t a) h_{t-1} + dt_t x_t b_t^T, y_t = h_t c_t, one step at a time."""
    batch, length, heads, head_dim = x.shape
    h = torch.zeros(batch, heads, head_dim, b.shape[-1], dtype=x.dtype)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * a)  # b h
        h = h * decay[..., None, None] + (dt[:, t, :, None, None] * x[:, t, :, :, None]) * b[:, t, None, None, :]
        ys.append(torch.einsum("bhpn,bn->bhp", h, c[:, t]))
    return torch.stack(ys, dim=1)


def ssd_inputs(batch, length, heads, head_dim, state, dtype, generator):
    x = torch.randn(batch, length, heads, head_dim, dtype=dtype, generator=generator)
    dt = F.softplus(torch.randn(batch, length, heads, dtype=dtype, generator=generator) - 1)
    a = -torch.rand(heads, dtype=dtype, generator=generator) * 4 - 0.1
    b = torch.randn(batch, length, state, dtype=dtype, generator=generator)
    c = torch.randn(batch, length, state, dtype=dtype, generator=generator)
    return x, dt, a, b, c


@pytest.mark.parametrize("length,chunk", [(1, 4), (7, 4), (16, 4), (37, 8), (129, 16)])
def test_ssd_chunked_matches_sequential_scan(length: int, chunk: int, generator: torch.Generator) -> None:
    args = ssd_inputs(2, length, 3, 5, 4, torch.float64, generator)
    assert relative_error(kernels.ssd_scan(*args, chunk), sequential_ssd(*args)) < 1e-12


def test_ssd_float32_and_chunk_size_independence(generator: torch.Generator) -> None:
    args = ssd_inputs(1, 50, 2, 4, 3, torch.float64, generator)
    expected = sequential_ssd(*args)
    for chunk in (1, 7, 64):
        out = kernels.ssd_scan(*(t.float() for t in args), chunk)
        assert out.dtype == torch.float32
        assert relative_error(out, expected) < 1e-5


def per_token_moe(x, logits, mask, w1, w2, top_k, hidden=lambda h, e: h):
    """One token at a time: softmax, top-k, renormalise, sum of weighted SwiGLU experts (`hidden(h, e)`: what
    expert e's hidden vector becomes before its down projection)."""
    out = torch.zeros_like(x)
    k = min(top_k, w1.shape[0])
    for t in range(x.shape[0]):
        if not mask[t]:
            continue
        probs = torch.softmax(logits[t], dim=-1)
        top = probs.topk(k)
        for weight, e in zip(top.values / top.values.sum(), top.indices):
            gate, up = (w1[e] @ x[t]).chunk(2)
            out[t] += weight * (w2[e] @ hidden(F.silu(gate) * up, e))
    return out


def moe_inputs(tokens, d_model, hidden, experts, generator, dtype=torch.float64):
    x = torch.randn(tokens, d_model, dtype=dtype, generator=generator)
    logits = torch.randn(tokens, experts, dtype=dtype, generator=generator)
    mask = torch.rand(tokens, generator=generator) > 0.3
    mask[0] = True
    w1 = torch.randn(experts, 2 * hidden, d_model, dtype=dtype, generator=generator) / d_model ** 0.5
    w2 = torch.randn(experts, d_model, hidden, dtype=dtype, generator=generator) / hidden ** 0.5
    return x, logits, mask, w1, w2


@pytest.mark.parametrize("tokens,top_k", [(1, 1), (7, 2), (19, 4), (19, 9)])
def test_moe_matches_per_token_loop(tokens: int, top_k: int, generator: torch.Generator) -> None:
    x, logits, mask, w1, w2 = moe_inputs(tokens, 6, 10, 4, generator)
    out = kernels.moe_ffn(x, logits, mask, w1, w2, top_k, 0.0)
    expected = per_token_moe(x, logits, mask, w1, w2, top_k)
    assert relative_error(out, expected) < 1e-12
    assert torch.all(out[~mask] == 0)


def test_moe_capacity_drops_overflow_in_rank_then_position_order() -> None:
    # 4 tokens, 2 experts, top-1: every token prefers expert 0. Capacity = ceil(1.0 * 4 * 1 / 2) = 2,
    # so tokens 0 and 1 keep expert 0 and tokens 2 and 3 are dropped (output 0, residual only).
    logits = torch.tensor([[3.0, 0.0]] * 4)
    weights, experts, keep = reference.route_tokens(logits, torch.ones(4, dtype=torch.bool), 1, 1.0)
    assert experts[:, 0].tolist() == [0, 0, 0, 0]
    assert keep[:, 0].tolist() == [True, True, False, False]
    assert torch.allclose(weights, torch.ones(4, 1))
    # A masked token takes no capacity: with token 0 masked, capacity is ceil(3 / 2) = 2 -> tokens 1, 2.
    mask = torch.tensor([False, True, True, True])
    _, _, keep = reference.route_tokens(logits, mask, 1, 1.0)
    assert keep[:, 0].tolist() == [False, True, True, False]


def test_moe_top_k_is_clamped_to_number_of_experts(generator: torch.Generator) -> None:
    x, logits, mask, w1, w2 = moe_inputs(5, 4, 8, 3, generator)
    assert torch.equal(kernels.moe_ffn(x, logits, mask, w1, w2, 3, 0.0),
                       kernels.moe_ffn(x, logits, mask, w1, w2, 99, 0.0))


@pytest.mark.parametrize("capacity_factor", [0.1, 1.0, 1.25, 1.5])
def test_moe_capacity_is_the_ceiling_over_real_tokens(capacity_factor: float) -> None:
    # Every token prefers expert 0 (top-1 of 4 experts): it keeps min(valid, ceil(cf * valid * k / E)) of them,
    # rounded as Python's float arithmetic rounds.
    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0]] * 40)
    for valid in range(41):
        mask = (torch.arange(40) < valid).roll(7)
        _, _, keep = reference.route_tokens(logits, mask, 1, capacity_factor)
        assert int(keep.sum()) == min(valid, math.ceil(capacity_factor * valid * 1 / 4)), valid


def test_moe_routing_reads_no_value_from_the_data(generator: torch.Generator) -> None:
    # The capacity is a tensor, not int() of the real-token count: on a GPU that read would wait for the device
    # once per MoE layer. make_fx with symbolic shapes (on the meta device) raises on any value read from data.
    from torch.fx.experimental.proxy_tensor import make_fx

    _, logits, mask, _, _ = (t.to("meta") for t in moe_inputs(37, 6, 10, 4, generator))
    make_fx(lambda logits, mask: reference.route_tokens(logits, mask, 2, 1.25), tracing_mode="symbolic")(logits, mask)


@pytest.mark.parametrize("op", ["long_conv", "ssd_scan", "moe_ffn"])
def test_ops_gradients_match_finite_differences(op: str, generator: torch.Generator) -> None:
    if op == "long_conv":
        args = (torch.randn(1, 2, 5, dtype=torch.float64, generator=generator),
                torch.randn(2, 9, dtype=torch.float64, generator=generator))
        fn = lambda x, f: kernels.long_conv(x, f, False)  # noqa: E731
    elif op == "ssd_scan":
        args = ssd_inputs(1, 6, 2, 3, 2, torch.float64, generator)
        fn = lambda *t: kernels.ssd_scan(*t, 4)  # noqa: E731
    else:
        x, logits, mask, w1, w2 = moe_inputs(5, 3, 4, 3, generator)
        args = (x, logits, w1, w2)
        fn = lambda x, lg, a, b: kernels.moe_ffn(x, lg, mask, a, b, 2, 0.0)  # noqa: E731
    args = tuple(t.clone().requires_grad_(True) for t in args)
    assert torch.autograd.gradcheck(fn, args)


def test_fp8_expert_weight_scales_map_each_row_onto_the_full_e4m3fn_range(generator: torch.Generator) -> None:
    every_e4m3fn = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    largest = float(every_e4m3fn[torch.isfinite(every_e4m3fn)].max())
    assert largest == 448.0
    w = torch.randn(3, 5, 16, generator=generator) * torch.logspace(-3, 2, 5)[None, :, None]
    w[1, 2] = 0.0
    q, scale = reference.quantize_experts_fp8(w)
    amax = w.abs().amax(dim=-1)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == (3, 5)
    assert torch.equal(scale, torch.where(amax > 0, amax / largest, torch.ones_like(amax)))  # max|row| / 448
    assert torch.equal(q.float().abs().amax(dim=-1), torch.where(amax > 0, largest, 0.0))  # each row's max hits 448
    back = reference.dequantize_experts_fp8(q, scale, torch.float32)
    assert torch.all((back - w).abs() <= 2.0 ** -4 * w.abs() + 2.0 ** -9 * scale[..., None])  # E4M3's half step


def nearest_e4m3(values: torch.Tensor, scale: float) -> torch.Tensor:
    """values snapped to the nearest of the 253 finite E4M3 values times scale (clamped to +-448 of them)."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).double()
    grid = codes[torch.isfinite(codes)].unique()
    units = (values / scale).clamp(-448, 448)
    return grid[(units[..., None] - grid).abs().argmin(dim=-1)] * scale


@pytest.mark.parametrize("tokens,top_k", [(1, 1), (19, 2), (19, 4)])
def test_moe_fp8_activations_round_input_and_hidden_to_e4m3(tokens: int, top_k: int,
                                                           generator: torch.Generator) -> None:
    x, logits, mask, w1, w2 = moe_inputs(tokens, 16, 8, 4, generator)
    (w1_q, s1), (w2_q, s2) = reference.quantize_experts_fp8(w1), reference.quantize_experts_fp8(w2)
    w1_d, w2_d = (reference.dequantize_experts_fp8(w, s, torch.float64) for w, s in ((w1_q, s1), (w2_q, s2)))
    x_scale, hidden_scale = torch.tensor([0.01]), torch.tensor([0.002, 0.004, 0.001, 0.003])  # some clamping
    out = reference.moe_ffn_fp8(x, logits, mask, w1_q, s1, w2_q, s2, top_k, 0.0, x_scale, hidden_scale)
    expected = per_token_moe(nearest_e4m3(x, 0.01), logits, mask, w1_d, w2_d, top_k,
                             hidden=lambda h, e: nearest_e4m3(h, float(hidden_scale[e])))
    assert relative_error(out, expected) < 1e-12
    assert torch.all(out[~mask] == 0)
    with pytest.raises(ValueError, match=r"FP8 activations take x_scale \[1\] and hidden_scale \[4\]"):
        reference.moe_ffn_fp8(x, logits, mask, w1_q, s1, w2_q, s2, top_k, 0.0, x_scale, hidden_scale[:3])
    with pytest.raises(ValueError, match="FP8 activations take"):
        reference.moe_ffn_fp8(x, logits, mask, w1_q, s1, w2_q, s2, top_k, 0.0, x_scale, None)


def depthwise_short_conv(channels: int, width: int, bias: bool = True) -> torch.nn.Conv1d:
    """A Hyena short conv (as HyenaBranch builds it) with random weights and bias."""
    conv = torch.nn.Conv1d(channels, channels, width, groups=channels, padding=width - 1, bias=bias)
    for parameter in conv.parameters():
        torch.nn.init.normal_(parameter)
    return conv


def short_conv_args(conv: torch.nn.Conv1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [w, C], bias [C]) in float32, as backend "cuda" passes them."""
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return conv.weight.detach().float()[:, 0].t(), bias.detach().float()


@pytest.mark.parametrize("width, bias", [(3, True), (1, True), (4, False)])
@pytest.mark.parametrize("batch, seq", [(1, 37), (3, 37), (1, 1), (3, 1)])
def test_hyena_short_conv_is_the_models_causal_conv_and_product(width: int, bias: bool, batch: int, seq: int,
                                                                generator: torch.Generator) -> None:
    from mahia.model.meta_attention import causal_depthwise_conv

    conv = depthwise_short_conv(12, width, bias)
    proj = torch.randn(batch, seq, 12, generator=generator)
    with torch.inference_mode():
        q, k, v = causal_depthwise_conv(proj.transpose(1, 2), conv).chunk(3, dim=1)
        got_q, got_kv = reference.hyena_short_conv(proj, *short_conv_args(conv))
    assert got_q.shape == (batch, seq, 4) and got_kv.shape == (batch, 4, seq)
    # float32 rounding (measured on this CPU: bitwise equal)
    assert relative_error(got_q, q.transpose(1, 2)) < 1e-6 and relative_error(got_kv, k * v) < 1e-6


def test_hyena_short_conv_rounds_bf16_once_as_the_aten_conv_does(generator: torch.Generator) -> None:
    # Relative error of q to the float64 conv of the same bf16 weights and inputs, measured on this CPU: 1.66e-3 for
    # both the aten conv and the reference (the output's one bf16 rounding); summing the taps in bf16 gives 3.0e-3.
    from mahia.model.meta_attention import causal_depthwise_conv

    conv = depthwise_short_conv(3 * 64, 3).to(torch.bfloat16)
    proj = torch.randn(4, 256, 3 * 64, generator=generator).to(torch.bfloat16)
    with torch.inference_mode():
        exact = causal_depthwise_conv(proj.transpose(1, 2).double(), conv.double())[:, :64].transpose(1, 2)
        aten = causal_depthwise_conv(proj.transpose(1, 2), conv.to(torch.bfloat16))[:, :64].transpose(1, 2)
        q, _ = reference.hyena_short_conv(proj, *short_conv_args(conv))
    assert q.dtype == torch.bfloat16
    assert relative_error(q, exact) < 2e-3 and relative_error(q, exact) <= 1.01 * relative_error(aten, exact)


def test_meta_attention_combine_is_the_gates_softmax_sum_of_the_branches(generator: torch.Generator) -> None:
    batch, length, dim = 3, 37, 5
    q, ssd = (torch.randn(batch, length, dim, dtype=torch.float64, generator=generator) for _ in range(2))
    hyena_conv, kv, fourier_conv = (torch.randn(batch, dim, length, dtype=torch.float64, generator=generator)
                                    for _ in range(3))
    skip = torch.randn(dim, dtype=torch.float64, generator=generator)
    logits = torch.randn(batch, length, 3, dtype=torch.float64, generator=generator) * 3
    got = reference.meta_attention_combine(q, hyena_conv, kv, skip, ssd, fourier_conv, logits)
    for b, t, d in [(0, 0, 0), (2, 36, 4), (1, 17, 2)]:
        weights = [math.exp(logits[b, t, j]) for j in range(3)]
        hyena = q[b, t, d] * (hyena_conv[b, d, t] + skip[d] * kv[b, d, t])
        x = fourier_conv[b, d, t]
        fourier = 0.5 * x * (1 + math.erf(x / math.sqrt(2)))
        want = (weights[0] * hyena + weights[1] * ssd[b, t, d] + weights[2] * fourier) / sum(weights)
        assert abs(float(got[b, t, d]) - want) < 1e-12 * max(1.0, abs(want))
    with pytest.raises(ValueError, match=r"kv must be \[3, 5, 37\]"):
        reference.meta_attention_combine(q, hyena_conv, kv.transpose(1, 2), skip, ssd, fourier_conv, logits)


def test_ssd_gated_norm_is_the_ssd_branchs_skip_gate_and_norm(generator: torch.Generator) -> None:
    from mahia.model.config import get_config
    from mahia.model.meta_attention import SSDBranch

    branch = SSDBranch(get_config("tiny")).double()
    for parameter in (branch.skip, branch.norm.weight):
        torch.nn.init.normal_(parameter, generator=generator)
    u = torch.randn(3, 37, get_config("tiny").d_model, dtype=torch.float64, generator=generator)
    with torch.no_grad():
        y, x, z = branch.scan(u)
        got = branch.out_proj(reference.ssd_gated_norm(y, x, branch.skip, z, branch.norm.weight, branch.norm.eps))
        assert relative_error(got, branch(u)) < 1e-6  # RMSNorm normalises in float32 even for float64 inputs
    with pytest.raises(ValueError, match=r"skip must be \["):
        reference.ssd_gated_norm(y, x, branch.skip[:1], z, branch.norm.weight, branch.norm.eps)
