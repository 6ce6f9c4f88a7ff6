"""The Triton kernels against their references, on the CPU under the Triton interpreter.

The one environment switch: TRITON_INTERPRET=1, read by triton when it is first imported (its own
library functions are decorated then) and by triton.jit when it decorates our kernels. This module
sets it before importing triton. If triton was already imported in this process without it (another
test module imported torch.library.triton_op ops first), the kernels cannot run interpreted here:
the tests below skip saying so, and `test_interpreter_suite_in_subprocess` runs this same file in a
fresh interpreter with TRITON_INTERPRET=1. Setting TRITON_INTERPRET=1 for the whole test session
(tests/conftest.py or the Makefile) runs them in-process instead.
Shapes are small (the interpreter runs each program in numpy); inputs are fresh random draws, with
the seed in every failure message; the metric is ||out - ref|| / ||ref|| against float64.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from mahia.kernels import reference  # noqa: E402

INTERPRETED = not isinstance(tl.standard.sum, JITFunction)
if INTERPRETED:
    from mahia.kernels.triton import gate_combine as gate_kernels
    from mahia.kernels.triton import long_conv as conv_kernels
    from mahia.kernels.triton import meta_attention as meta_kernels
    from mahia.kernels.triton import moe_ffn as moe_kernels
    from mahia.kernels.triton import ssd_scan as ssd_kernels

    for _module in (gate_kernels, conv_kernels, meta_kernels, moe_kernels, ssd_kernels):
        if any(isinstance(v, JITFunction) for v in vars(_module).values()):
            importlib.reload(_module)

if INTERPRETED:
    import triton

    @triton.jit
    def round_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):
        """out = E4M3(x) through moe_ffn's round_to_e4m3."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < numel
        rounded = moe_kernels.round_to_e4m3(tl.load(x_ptr + offs, mask=ok, other=0.0))
        tl.store(out_ptr + offs, rounded.to(tl.float8e4nv), mask=ok)

pytestmark_interpreted = pytest.mark.skipif(
    not INTERPRETED, reason="triton was imported before TRITON_INTERPRET=1 was set in this process; "
    "test_interpreter_suite_in_subprocess runs these kernels interpreted")


@pytest.mark.skipif(INTERPRETED, reason="the kernels run interpreted in this process already")
def test_interpreter_suite_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                             "-W", "ignore::UserWarning", __file__], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout, result.stdout[-2000:]


# Relative error bounds per dtype: output rounding dominates (bf16 ~4e-3, fp16 ~5e-4 per element).
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = list(TOLERANCE)


@pytest.fixture
def gen() -> torch.Generator:
    """A generator with a fresh seed (reported on failure through its initial_seed)."""
    g = torch.Generator()
    g.seed()
    return g


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere fails."""
    assert torch.isfinite(out).all(), "non-finite output"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Standard normal draws (times scale) rounded to dtype."""
    return (torch.randn(*shape, generator=gen) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 5), (2, 7, 33), (3, 17, 300)])
@pytestmark_interpreted
def test_gate_combine_matches_reference(gen, dtype, shape):
    batch, length, dim = shape
    branches = randn(gen, batch, length, dim, 3, dtype=dtype)
    logits = randn(gen, batch, length, 3, dtype=dtype, scale=2.0)
    out = gate_kernels.gate_combine(branches, logits)
    ref = reference.gate_combine(branches.double(), logits.double())
    assert out.shape == ref.shape and out.dtype == dtype
    assert rel_error(out, ref) < TOLERANCE[dtype], f"seed {gen.initial_seed()}"


# Under the interpreter a bf16 rounding truncates (numpy has no bf16): each bf16 output is up to 2^-8 off the
# rounded value, and kv takes three roundings; the GPU check (benchmarks/kernels.py --check) rounds to nearest.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 5, 3), (3, 37, 70, 3), (2, 130, 64, 4)])
@pytestmark_interpreted
def test_hyena_short_conv_matches_reference(gen, dtype, shape):
    batch, length, dim, width = shape
    proj = randn(gen, batch, length, 3 * dim, dtype=dtype)
    weight, bias = randn(gen, width, 3 * dim, scale=0.5), randn(gen, 3 * dim)
    q, kv = meta_kernels.hyena_short_conv(proj, weight, bias)
    want_q, want_kv = reference.hyena_short_conv(proj.double(), weight.double(), bias.double())
    assert q.shape == (batch, length, dim) and kv.shape == (batch, dim, length) and q.dtype == kv.dtype == dtype
    assert rel_error(q, want_q) < TOLERANCE[dtype], f"seed {gen.initial_seed()}"
    assert rel_error(kv, want_kv) < TOLERANCE[dtype], f"seed {gen.initial_seed()}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 5), (3, 37, 70), (2, 130, 64)])
@pytestmark_interpreted
def test_meta_attention_combine_matches_reference(gen, dtype, shape):
    batch, length, dim = shape
    by_token, by_channel = (batch, length, dim), (batch, dim, length)
    args = [randn(gen, *s, dtype=dtype) for s in (by_token, by_channel, by_channel, (dim,), by_token, by_channel)]
    logits = randn(gen, batch, length, 8, dtype=dtype, scale=2.0)[..., :3]  # the padded gate's view
    out = meta_kernels.meta_attention_combine(*args, logits)
    ref = reference.meta_attention_combine(*(t.double() for t in args), logits.double())
    assert out.shape == by_token and out.dtype == dtype
    assert rel_error(out, ref) < TOLERANCE[dtype], f"seed {gen.initial_seed()}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 2, 4), (3, 37, 3, 20), (2, 9, 12, 64)])
@pytestmark_interpreted
def test_ssd_gated_norm_matches_reference(gen, dtype, shape):
    batch, length, heads, head_dim = shape
    inner = heads * head_dim
    y = randn(gen, batch, length, heads, head_dim, dtype=dtype)
    proj = randn(gen, batch, length, 2 * inner + 7, dtype=dtype)  # x and z are views of the projection, as in SSDBranch
    x, z = proj[..., :inner].reshape(batch, length, heads, head_dim), proj[..., inner:2 * inner]
    skip, weight = randn(gen, heads, dtype=dtype), randn(gen, inner, dtype=dtype)
    out = meta_kernels.ssd_gated_norm(y, x, skip, z, weight, 1e-5)
    ref = reference.ssd_gated_norm(y.double(), x.double(), skip.double(), z.double(), weight.double(), 1e-5)
    assert out.shape == (batch, length, inner) and out.dtype == dtype
    assert rel_error(out, ref) < TOLERANCE[dtype], f"seed {gen.initial_seed()}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(1, 3, 1), (2, 3, 17), (3, 2, 64), (2, 2, 300)])
@pytestmark_interpreted
def test_long_conv_matches_reference(gen, dtype, causal, shape):
    batch, channels, length = shape
    x = randn(gen, batch, channels, length, dtype=dtype)
    filt = randn(gen, channels, length if causal else 2 * length - 1, dtype=dtype, scale=length ** -0.5)
    out = conv_kernels.long_conv(x, filt, causal)
    ref = reference.long_conv(x.double(), filt.double(), causal)
    assert rel_error(out, ref) < TOLERANCE[dtype], f"seed {gen.initial_seed()}"


def ssd_inputs(gen, batch, length, heads, head_dim, state, dtype):
    """Inputs in the model's ranges: dt = softplus(.) > 0, a < 0."""
    x = randn(gen, batch, length, heads, head_dim, dtype=dtype)
    dt = F.softplus(randn(gen, batch, length, heads) - 1.0).to(dtype)
    a = -(torch.rand(heads, generator=gen) * 4 + 0.5)
    b = randn(gen, batch, length, state, dtype=dtype, scale=state ** -0.5)
    c = randn(gen, batch, length, state, dtype=dtype, scale=state ** -0.5)
    return x, dt, a, b, c


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [
    (1, 1, 2, 16, 16, 16),    # a single position
    (2, 17, 2, 16, 16, 16),   # a partial second chunk
    (1, 70, 3, 24, 20, 32),   # head_dim and state not powers of two
    (1, 130, 2, 16, 16, 100),  # a chunk size the kernels replace (result does not depend on it)
])
@pytestmark_interpreted
def test_ssd_scan_matches_reference(gen, dtype, shape):
    batch, length, heads, head_dim, state, chunk = shape
    x, dt, a, b, c = ssd_inputs(gen, batch, length, heads, head_dim, state, dtype)
    out = ssd_kernels.ssd_scan(x, dt, a, b, c, chunk)
    ref = reference.ssd_scan(x.double(), dt.double(), a.double(), b.double(), c.double(), chunk)
    assert rel_error(out, ref) < TOLERANCE[dtype], f"seed {gen.initial_seed()}"


@pytestmark_interpreted
def test_ssd_scan_takes_the_models_strided_views(gen):
    """The model passes x, b, c as column slices of one projection (non-contiguous rows): found on the H100."""
    batch, length, heads, head_dim, state = 2, 37, 2, 8, 16
    inner = heads * head_dim
    proj = randn(gen, batch, length, inner + 2 * state + 5)
    x, b, c, _ = proj.split([inner, state, state, 5], dim=-1)
    x = x.reshape(batch, length, heads, head_dim)
    assert not x.is_contiguous() and not b.is_contiguous()
    dt = F.softplus(randn(gen, batch, length, heads) - 1.0)
    a = -(torch.rand(heads, generator=gen) * 4 + 0.5)
    out = ssd_kernels.ssd_scan(x, dt, a, b, c, 16)
    ref = reference.ssd_scan(x.double(), dt.double(), a.double(), b.double(), c.double(), 16)
    assert rel_error(out, ref) < TOLERANCE[torch.float32]


def moe_inputs(gen, tokens, d_model, hidden, experts, dtype):
    """x, float32 router logits (no ties, which torch.topk breaks arbitrarily), mask, w1, w2."""
    x = randn(gen, tokens, d_model, dtype=dtype)
    logits = randn(gen, tokens, experts)
    mask = torch.rand(tokens, generator=gen) > 0.25
    mask[0] = True
    w1 = randn(gen, experts, 2 * hidden, d_model, dtype=dtype, scale=d_model ** -0.5)
    w2 = randn(gen, experts, d_model, hidden, dtype=dtype, scale=hidden ** -0.5)
    return x, logits, mask, w1, w2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    # tokens, d_model, hidden, experts, top_k, capacity_factor
    (1, 32, 48, 4, 2, 0.0),
    (7, 32, 48, 4, 4, 0.0),     # top_k = num_experts
    (33, 40, 24, 5, 2, 1.25),   # capacity-limited, odd sizes
    (64, 32, 32, 8, 1, 1.0),
    (300, 16, 16, 3, 3, 0.5),   # many drops, more than one routing chunk
    (20, 16, 16, 3, 5, 0.0),    # top_k > num_experts is clamped
])
@pytestmark_interpreted
def test_moe_ffn_matches_reference(gen, dtype, case):
    tokens, d_model, hidden, experts, top_k, capacity = case
    x, logits, mask, w1, w2 = moe_inputs(gen, tokens, d_model, hidden, experts, dtype)
    out = moe_kernels.moe_ffn(x, logits, mask, w1, w2, top_k, capacity)
    ref = reference.moe_ffn(x.double(), logits.double(), mask, w1.double(), w2.double(), top_k, capacity)
    assert rel_error(out, ref) < TOLERANCE[dtype], f"seed {gen.initial_seed()}"
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask])), "masked tokens must give exactly 0"


def fp8_moe_inputs(gen, case, dtype):
    """x (dtype), float32 router logits, mask, and E4M3 expert weights with their scales: w1_q, s1, w2_q, s2."""
    tokens, d_model, hidden, experts, _ = case
    x, logits, mask, w1, w2 = moe_inputs(gen, tokens, d_model, hidden, experts, torch.float32)
    (w1_q, s1), (w2_q, s2) = reference.quantize_experts_fp8(w1), reference.quantize_experts_fp8(w2)
    return x.to(dtype), logits, mask, w1_q, s1, w2_q, s2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [(7, 32, 48, 4, 2), (40, 48, 32, 8, 8)])
@pytestmark_interpreted
def test_moe_ffn_fp8_weights_match_reference(gen, dtype, case):
    top_k = case[-1]
    x, logits, mask, w1_q, s1, w2_q, s2 = fp8_moe_inputs(gen, case, dtype)
    out = moe_kernels.moe_ffn(x, logits, mask, w1_q, w2_q, top_k, 0.0, w1_scale=s1, w2_scale=s2)
    w1_ref, w2_ref = (reference.dequantize_experts_fp8(w, s, torch.float64) for w, s in ((w1_q, s1), (w2_q, s2)))
    ref = reference.moe_ffn(x.double(), logits.double(), mask, w1_ref, w2_ref, top_k, 0.0)
    assert rel_error(out, ref) < TOLERANCE[dtype], f"seed {gen.initial_seed()}"


@pytestmark_interpreted
def test_round_to_e4m3_is_the_cast_to_float8_e4m3fn():
    # Every E4M3 value, every midpoint between neighbours (ties go to the even code), values past +-448 (clamped),
    # and random draws from the subnormal range to the largest values.
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = codes[torch.isfinite(codes)].unique()
    values = torch.cat([grid, (grid[1:] + grid[:-1]) / 2, torch.tensor([448.5, 470.0, -1e6, 1e-9]),
                        torch.randn(20000) * torch.logspace(-4, 2.5, 20000)])
    out = torch.empty(values.numel(), dtype=torch.float8_e4m3fn)
    round_kernel[(triton.cdiv(values.numel(), 4096),)](values, out, values.numel(), BLOCK=4096)
    want = values.clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(out.float(), want.float())  # as values: the signs of zeros may differ


@pytest.mark.parametrize("dtype, case", [
    *((dtype, case) for dtype in (torch.bfloat16, torch.float16)
      for case in [(1, 32, 48, 4, 2), (37, 32, 48, 4, 4), (70, 48, 32, 8, 2)]),
    (torch.bfloat16, (1061, 16, 16, 4, 2)),  # 1061 > ONE_PROGRAM_ROUTING: the three-kernel routing
])
@pytestmark_interpreted
def test_moe_ffn_fp8_activations_match_reference(gen, dtype, case):
    top_k = case[-1]
    x, logits, mask, w1_q, s1, w2_q, s2 = fp8_moe_inputs(gen, case, dtype)
    # Calibrated scales as the FP8 export takes them: amax / 448, the input's over all tokens, each expert's hidden
    # rows' over the rows it gets (here from the weight-only reference's hidden rows, an upper bound of them all).
    x_scale = x.float().abs().amax().reshape(1) / 448
    hidden_amax = torch.stack([(F.silu(g) * u).abs().amax() for g, u in
                               (torch.chunk(x.float() @ w.t(), 2, dim=-1) for w in
                                reference.dequantize_experts_fp8(w1_q, s1, torch.float32))])
    hidden_scale = hidden_amax / 448
    cfg = {"BLOCK_M": 16, "up": (16, 16, 4, 1), "down": (16, 16, 4, 1)}
    out = moe_kernels.moe_ffn(x, logits, mask, w1_q, w2_q, top_k, 0.0, config=cfg, w1_scale=s1, w2_scale=s2,
                              x_scale=x_scale, hidden_scale=hidden_scale)
    ref = reference.moe_ffn_fp8(x.double(), logits.double(), mask, w1_q, s1, w2_q, s2, top_k, 0.0, x_scale,
                                hidden_scale)
    # The kernel's hidden rows come from float32 sums in another order: the few that land on the other side of
    # an E4M3 rounding boundary move by one E4M3 step (2^-4 relative), so the bound is E4M3's, not the output's.
    assert rel_error(out, ref) < 2e-2, f"seed {gen.initial_seed()}"
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask])), "masked tokens must give exactly 0"
    weight_only = reference.moe_ffn_fp8(x.double(), logits.double(), mask, w1_q, s1, w2_q, s2, top_k, 0.0)
    assert rel_error(out, weight_only) < 0.1  # and it is the same MoE, to E4M3 precision


@pytest.mark.parametrize("capacity", [0.0, 1.25])
@pytestmark_interpreted
def test_moe_parallel_routing_matches_reference(gen, capacity):
    # More tokens than one routing program takes: the top-k / plan / scatter kernels.
    tokens = moe_kernels.ONE_PROGRAM_ROUTING + 37
    x, logits, mask, w1, w2 = moe_inputs(gen, tokens, 16, 16, 4, torch.float32)
    cfg = {"BLOCK_M": 128, "up": (16, 16, 4, 1), "down": (16, 16, 4, 1)}
    out = moe_kernels.moe_ffn(x, logits, mask, w1, w2, 2, capacity, config=cfg)
    ref = reference.moe_ffn(x.double(), logits.double(), mask, w1.double(), w2.double(), 2, capacity)
    assert rel_error(out, ref) < TOLERANCE[torch.float32], f"seed {gen.initial_seed()}"


@pytest.mark.parametrize("block_m", [16, 64])
@pytestmark_interpreted
def test_moe_kernels_are_deterministic_and_tile_independent(gen, block_m):
    x, logits, mask, w1, w2 = moe_inputs(gen, 50, 32, 32, 4, torch.float32)
    cfg = {"BLOCK_M": block_m, "up": (16, 16, 4, 1), "down": (16, 32, 4, 1)}
    first = moe_kernels.moe_ffn(x, logits, mask, w1, w2, 2, 1.25, config=cfg)
    again = moe_kernels.moe_ffn(x, logits, mask, w1, w2, 2, 1.25, config=cfg)
    assert torch.equal(first, again)
    ref = reference.moe_ffn(x.double(), logits.double(), mask, w1.double(), w2.double(), 2, 1.25)
    assert rel_error(first, ref) < TOLERANCE[torch.float32], f"seed {gen.initial_seed()}"


@pytestmark_interpreted
def test_long_conv_tile_configs_agree(gen):
    x = randn(gen, 3, 2, 70)
    filt = randn(gen, 2, 70, scale=0.1)
    ref = reference.long_conv(x.double(), filt.double(), True)
    for cfg in ({"BLOCK_K": 16, "NT": 2, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1},
                {"BLOCK_K": 32, "NT": 4, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}):
        assert rel_error(conv_kernels.long_conv(x, filt, True, config=cfg), ref) < 2e-5, cfg


@pytestmark_interpreted
@pytest.mark.parametrize("causal", [True, False])
def test_long_conv_every_nt_at_a_ragged_length(gen, causal):
    # 133 = 128 words + 5 tabular tokens: 9 blocks of 16, so the first program of NT 2, 4, 8 and 16 holds
    # fewer real output blocks than NT (its columns before block 0 are masked).
    x = randn(gen, 3, 2, 133)
    filt = randn(gen, 2, 133 if causal else 265, scale=0.1)
    ref = reference.long_conv(x.double(), filt.double(), causal)
    for nt in (1, 2, 4, 8, 16):
        cfg = conv_kernels.tile_config(3, 133, nt)
        assert rel_error(conv_kernels.long_conv(x, filt, causal, config=cfg), ref) < 2e-5, cfg


@pytestmark_interpreted
@pytest.mark.parametrize("causal", [True, False])
def test_long_conv_shifted_copies_match_the_element_gather(gen, causal):
    # 530 positions (padded to 544: 9 blocks of 64, the remainder first): the tiles read as vectors from the
    # shifted copies and the element-gathered ones, at NT 2, 8 and 16, both within fp32 rounding of float64.
    x = randn(gen, 3, 2, 530)
    filt = randn(gen, 2, 530 if causal else 1059, scale=0.05)
    ref = reference.long_conv(x.double(), filt.double(), causal)
    assert conv_kernels.choose_config(3, 530)["SHIFTED_COPIES"] == 1
    for nt in (2, 8, 16):
        for copies in (False, True):
            cfg = conv_kernels.tile_config(3, 530, nt, shifted_copies=copies)
            assert rel_error(conv_kernels.long_conv(x, filt, causal, config=cfg), ref) < 2e-5, cfg
