"""GPU check and timings of the Triton kernels against their references, baselines and the roofline.

    python benchmarks/kernels.py --check            # correctness over the issue's shape grid (PYTHONPATH=. where
                                                    # the project is not installed)
    python benchmarks/kernels.py --bench            # timings, roofline measured in the same run
    python benchmarks/kernels.py --check --bench --sweep --out DIR
    python benchmarks/kernels.py --check --bench --only hyena_short_conv,meta_attention_combine,ssd_gated_norm

Needs a CUDA GPU. Every check draws fresh random inputs, poisons the allocator's free memory with
NaN first (so an output element the kernel never writes shows up), and compares with the float64
reference by ||out - ref|| / ||ref||. Timings are medians of triton.testing.do_bench (CUDA events,
warm-up first); inputs rotate among copies whose total exceeds the L2 cache where they would fit in
it. --sweep times the candidate tile configs behind the committed choices.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import platform
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from mahia import kernels
from mahia.kernels import reference

from common import relative_error as rel_error

TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
L2_BYTES = 50 * 2 ** 20
LOG: list[str] = []
LOG_FILE: list[Path] = []  # set by --out: every line is appended at once, so a killed run keeps its log


def say(line: str) -> None:
    """Print, keep for the results, and append to the log file if one is set."""
    print(line, flush=True)
    LOG.append(line)
    for path in LOG_FILE:
        with path.open("a") as f:
            f.write(line + "\n")


def poison_free_memory() -> None:
    """Fill a large block with NaN and free it, so the next torch.empty likely returns NaN garbage."""
    free, _ = torch.cuda.mem_get_info()
    block = torch.full((min(free // 2, 8 * 2 ** 30) // 4,), float("nan"), device="cuda")
    del block


def bench(fn: Callable[[], object], rep_ms: int = 200) -> float:
    """Median milliseconds of fn, by CUDA events after warm-up."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=50, rep=rep_ms, return_mode="median"))


def rotating(make: Callable[[], tuple], bytes_per_set: int) -> Callable[[], tuple]:
    """A callable returning input sets in turn, enough of them to exceed the L2 cache together."""
    count = max(1, min(8, math.ceil(4 * L2_BYTES / max(bytes_per_set, 1))))
    sets = [make() for _ in range(count)]
    cycle = itertools.cycle(sets)
    return lambda: next(cycle)


# ---------------------------------------------------------------- inputs

def moe_inputs(tokens: int, d_model: int, hidden: int, experts: int, dtype: torch.dtype) -> tuple:
    """x, float32 router logits, mask (a quarter masked when tokens > 1), w1, w2 on the GPU."""
    x = torch.randn(tokens, d_model, device="cuda").to(dtype)
    logits = torch.randn(tokens, experts, device="cuda")
    mask = torch.rand(tokens, device="cuda") > 0.25
    mask[0] = True
    w1 = (torch.randn(experts, 2 * hidden, d_model, device="cuda") * d_model ** -0.5).to(dtype)
    w2 = (torch.randn(experts, d_model, hidden, device="cuda") * hidden ** -0.5).to(dtype)
    return x, logits, mask, w1, w2


def ssd_inputs(batch: int, length: int, heads: int, head_dim: int, state: int, dtype: torch.dtype) -> tuple:
    """x, dt > 0, a < 0, b, c on the GPU, in the model's ranges."""
    x = torch.randn(batch, length, heads, head_dim, device="cuda").to(dtype)
    dt = F.softplus(torch.randn(batch, length, heads, device="cuda") - 3.0).to(dtype)
    a = -torch.exp(torch.linspace(0.0, math.log(16.0), heads, device="cuda"))
    b = (torch.randn(batch, length, state, device="cuda") * state ** -0.5).to(dtype)
    c = (torch.randn(batch, length, state, device="cuda") * state ** -0.5).to(dtype)
    return x, dt, a, b, c


def conv_inputs(batch: int, channels: int, length: int, causal: bool, dtype: torch.dtype) -> tuple:
    """x [B, D, L] and a decaying filter, on the GPU."""
    x = torch.randn(batch, channels, length, device="cuda").to(dtype)
    span = length if causal else 2 * length - 1
    filt = (torch.randn(channels, span, device="cuda") * length ** -0.5).to(dtype)
    return x, filt


# ---------------------------------------------------------------- check

def check(only: frozenset[str] | None = None) -> list[dict]:
    """Every op (or those in `only`) against its float64 reference over the issue's grid; one row per case."""
    rows = []

    def guarded(name: str, shape: str, dtype: torch.dtype, compute: Callable[[], tuple[float, str]]) -> None:
        if only is not None and name not in only:
            return
        try:
            err, note = compute()
        except Exception as exc:
            err, note = math.inf, f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        record(name, shape, dtype, err, note)

    def record(name: str, shape: str, dtype: torch.dtype, err: float, extra: str = "") -> None:
        ok = err < TOLERANCE[dtype]
        rows.append({"op": name, "shape": shape, "dtype": str(dtype).replace("torch.", ""), "rel_error": err,
                     "tolerance": TOLERANCE[dtype], "pass": ok, "note": extra})
        say(f"{'PASS' if ok else 'FAIL'} {name:13s} {shape:44s} {str(dtype):15s} err={err:.2e} {extra}")

    def moe_case(tokens, d_model, hidden, top_k, capacity, dtype):
        args = moe_inputs(tokens, d_model, hidden, 8, dtype)
        poison_free_memory()
        out = kernels.moe_ffn(*args, top_k, capacity)
        again = kernels.moe_ffn(*args, top_k, capacity)
        x, logits, mask, w1, w2 = args
        ref = reference.moe_ffn(x.double(), logits.double(), mask, w1.double(), w2.double(), top_k, capacity)
        same = torch.equal(out, again)
        return (rel_error(out, ref) if same else math.inf), ("deterministic" if same else "NOT DETERMINISTIC")

    def fp8_case(tokens, top_k, dtype):
        x, logits, mask, w1, w2 = moe_inputs(tokens, 1024, 2816, 8, torch.float32)
        (w1q, s1), (w2q, s2) = reference.quantize_experts_fp8(w1), reference.quantize_experts_fp8(w2)
        poison_free_memory()
        out = kernels.moe_ffn_fp8(x.to(dtype), logits, mask, w1q, s1, w2q, s2, top_k, 0.0)
        w1d, w2d = reference.dequantize_experts_fp8(w1q, s1, torch.float64), reference.dequantize_experts_fp8(
            w2q, s2, torch.float64)
        ref = reference.moe_ffn(x.to(dtype).double(), logits.double(), mask, w1d, w2d, top_k, 0.0)
        return rel_error(out, ref), "fp8 e4m3 weights"

    def ssd_case(batch, length, heads, chunk, dtype):
        args = ssd_inputs(batch, length, heads, 64, 128, dtype)
        poison_free_memory()
        out = kernels.ssd_scan(*args, chunk)
        return rel_error(out, reference.ssd_scan(*(t.double() for t in args), chunk)), ""

    def conv_case(batch, channels, length, causal, dtype):
        from mahia.kernels.triton import long_conv as conv_kernel  # the kernel at every length (the op picks)

        x, filt = conv_inputs(batch, channels, length, causal, dtype)
        poison_free_memory()
        out = conv_kernel.long_conv(x, filt, causal)
        return rel_error(out, reference.long_conv(x.double(), filt.double(), causal)), ""

    def gate_case(length, dtype):
        branches = torch.randn(2, length, 768, 3, device="cuda").to(dtype)
        logits = (torch.randn(2, length, 3, device="cuda") * 2).to(dtype)
        poison_free_memory()
        out = kernels.gate_combine(branches, logits)
        return rel_error(out, reference.gate_combine(branches.double(), logits.double())), ""

    def short_conv_case(batch, length, dtype):
        proj = torch.randn(batch, length, 3 * 768, device="cuda").to(dtype)
        weight, bias = torch.randn(3, 3 * 768, device="cuda") / 2, torch.randn(3 * 768, device="cuda")
        poison_free_memory()
        q, kv = kernels.hyena_short_conv(proj, weight, bias)
        want_q, want_kv = reference.hyena_short_conv(proj.double(), weight.double(), bias.double())
        return max(rel_error(q, want_q), rel_error(kv, want_kv)), "worse of q and kv"

    def combine_case(batch, length, dtype):
        by_token, by_channel = (batch, length, 768), (batch, 768, length)
        args = [torch.randn(shape, device="cuda").to(dtype) for shape in
                (by_token, by_channel, by_channel, (768,), by_token, by_channel)]
        logits = (torch.randn(batch, length, 8, device="cuda") * 2).to(dtype)[..., :3]  # a padded gate's view
        poison_free_memory()
        out = kernels.meta_attention_combine(*args, logits)
        return rel_error(out, reference.meta_attention_combine(*(t.double() for t in args), logits.double())), ""

    def gated_norm_case(batch, length, dtype):
        y = torch.randn(batch, length, 12, 64, device="cuda").to(dtype)
        proj = torch.randn(batch, length, 1808, device="cuda").to(dtype)  # base's padded SSD projection
        x, z = proj[..., :768].reshape(batch, length, 12, 64), proj[..., 768:1536]
        skip, weight = torch.randn(12, device="cuda").to(dtype), torch.randn(768, device="cuda").to(dtype)
        poison_free_memory()
        out = kernels.ssd_gated_norm(y, x, skip, z, weight, 1e-5)
        want = reference.ssd_gated_norm(y.double(), x.double(), skip.double(), z.double(), weight.double(), 1e-5)
        return rel_error(out, want), "x, z views of a [B, L, 1808] projection"

    dtypes = (torch.bfloat16, torch.float16, torch.float32)
    for dtype, (batch, length) in itertools.product(dtypes, ((1, 1), (3, 37), (2, 523), (32, 2064))):
        guarded("ssd_gated_norm", f"B={batch} L={length} H=12 P=64", dtype,
                lambda: gated_norm_case(batch, length, dtype))
        guarded("hyena_short_conv", f"B={batch} L={length} D=768 w=3", dtype,
                lambda: short_conv_case(batch, length, dtype))
        guarded("meta_attention_combine", f"B={batch} L={length} D=768", dtype,
                lambda: combine_case(batch, length, dtype))
    for dtype, (d_model, hidden), tokens, top_k in itertools.product(
            dtypes, ((768, 2048), (1024, 2816)), (1, 7, 64, 1000, 16384), (1, 2, 8)):
        for capacity in ((0.0, 1.25) if tokens == 1000 else (0.0,)):
            guarded("moe_ffn", f"T={tokens} D={d_model} H={hidden} E=8 k={top_k} cf={capacity}", dtype,
                    lambda: moe_case(tokens, d_model, hidden, top_k, capacity, dtype))
    for dtype, tokens, top_k in itertools.product((torch.bfloat16, torch.float16), (1, 7, 64, 1000, 16384), (2, 8)):
        guarded("moe_ffn_fp8", f"T={tokens} D=1024 H=2816 E=8 k={top_k}", dtype,
                lambda: fp8_case(tokens, top_k, dtype))
    for dtype, length in itertools.product(dtypes, (1, 17, 512, 4096)):
        guarded("ssd_scan", f"B=2 L={length} H=16 P=64 N=128 chunk=256", dtype,
                lambda: ssd_case(2, length, 16, 256, dtype))
        guarded("ssd_scan", f"B=1 L={length} H=12 P=64 N=128 chunk=100", dtype,
                lambda: ssd_case(1, length, 12, 100, dtype))
    for dtype, length, causal in itertools.product(dtypes, (1, 17, 512, 4096), (True, False)):
        for batch, channels in ((2, 768), (1, 1024)):
            guarded("long_conv", f"B={batch} D={channels} L={length} causal={causal}", dtype,
                    lambda: conv_case(batch, channels, length, causal, dtype))
    for dtype, length in itertools.product(dtypes, (1, 17, 512, 4096)):
        guarded("gate_combine", f"B=2 L={length} D=768", dtype, lambda: gate_case(length, dtype))
    return rows


# ---------------------------------------------------------------- baselines

def route_torch(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax, top-k, renormalise (dropless)."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), experts


def moe_grouped_mm(x, logits, mask, w1, w2, top_k):
    """Baseline: torch._grouped_mm over tokens sorted by expert (dropless)."""
    num_experts = w1.shape[0]
    weights, experts = route_torch(logits, top_k)
    weights = weights * mask[:, None]
    flat = experts.reshape(-1)
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    offsets = counts.cumsum(0).to(torch.int32)
    rows = x[order // top_k]
    gate_up = torch._grouped_mm(rows, w1.transpose(1, 2), offs=offsets)
    gate, up = gate_up.chunk(2, dim=-1)
    expert_out = torch._grouped_mm(F.silu(gate) * up, w2.transpose(1, 2), offs=offsets)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    out.index_add_(0, order // top_k, expert_out.float() * weights.reshape(-1)[order, None])
    return out.to(x.dtype)


def moe_dense_masked(x, logits, mask, w1, w2, top_k):
    """Baseline: every expert on every token, combined with a dense (mostly zero) routing matrix."""
    weights, experts = route_torch(logits, top_k)
    dense = torch.zeros(logits.shape, dtype=torch.float32, device=x.device).scatter(1, experts, weights)
    dense = dense * mask[:, None]
    gate_up = torch.einsum("td,ehd->eth", x, w1)
    gate, up = gate_up.chunk(2, dim=-1)
    out = torch.einsum("eth,edh->etd", F.silu(gate) * up, w2)
    return torch.einsum("etd,te->td", out.float(), dense).to(x.dtype)


# ---------------------------------------------------------------- bench

def roofline() -> tuple[float, float]:
    """(HBM bytes/s from a 1 GiB device copy counting read + write, bf16 FLOP/s of an 8192^3 matmul)."""
    src = torch.randn(2 ** 28, device="cuda")  # 1 GiB of float32
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src))
    bandwidth = 2 * src.numel() * 4 / (copy_ms * 1e-3)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_ms = bench(lambda: a @ b)
    peak = 2 * 8192 ** 3 / (mm_ms * 1e-3)
    say(f"roofline: copy 1 GiB {copy_ms:.3f} ms -> {bandwidth / 1e12:.2f} TB/s; "
        f"8192^3 bf16 matmul {mm_ms:.3f} ms -> {peak / 1e12:.0f} TFLOP/s")
    return bandwidth, peak


def row(rows: list[dict], kernel: str, shape: str, impl: str, ms: float, bytes_moved: float, flops: float,
        bandwidth: float, peak: float) -> None:
    """Record one timing with its roofline fractions."""
    hbm = bytes_moved / (ms * 1e-3) / bandwidth
    comp = flops / (ms * 1e-3) / peak
    rows.append({"kernel": kernel, "shape": shape, "impl": impl, "ms": ms, "hbm_fraction": hbm,
                 "peak_fraction": comp})
    say(f"{kernel:12s} {shape:34s} {impl:28s} {ms:9.4f} ms  HBM {100 * hbm:5.1f}%  peak {100 * comp:5.1f}%")


def graph_bench(fn: Callable[[], object], rep_ms: int = 200) -> float:
    """Median milliseconds of fn in CUDA-graph replay (how backend "cuda" runs it: no launch cost), after one plain
    call (which compiles a torch.compile'd fn outside the capture)."""
    import triton.testing

    fn()
    return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))


def timed(rows, kernel, shape, impl, fn, bytes_moved, flops, bandwidth, peak, measure=bench) -> None:
    """Time fn with `measure` (bench or graph_bench) and record it, or record why it could not run."""
    try:
        ms = measure(fn)
    except Exception as exc:  # a baseline that fails on this torch is reported, not hidden
        say(f"{kernel:12s} {shape:34s} {impl:28s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        rows.append({"kernel": kernel, "shape": shape, "impl": impl, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return
    row(rows, kernel, shape, impl, ms, bytes_moved, flops, bandwidth, peak)


def bench_all(bandwidth: float, peak: float, only: frozenset[str] | None = None) -> list[dict]:
    """The issue's timing table (or the rows of the ops in `only`)."""
    rows: list[dict] = []
    wanted = lambda op: only is None or op in only  # noqa: E731
    if wanted("moe_ffn"):
        bench_moe(rows, bandwidth, peak)
    if wanted("ssd_scan"):
        bench_ssd(rows, bandwidth, peak)
    if wanted("long_conv"):
        bench_long_conv(rows, bandwidth, peak)
    if wanted("gate_combine"):
        bench_gate_combine(rows, bandwidth, peak)
    bench_meta_attention_ends(rows, bandwidth, wanted)
    return rows


def bench_moe(rows: list[dict], bandwidth: float, peak: float) -> None:
    """mahia::moe_ffn (bf16 and FP8 weights) against the per-expert loop, a dense masked form and _grouped_mm."""
    dtype = torch.bfloat16
    import triton.testing

    d_model, hidden, experts, top_k = 1024, 2816, 8, 2
    compiled = torch.compile(moe_grouped_mm, dynamic=False)
    for tokens in (16, 64, 1024, 16384):
        x, logits, _, w1, w2 = moe_inputs(tokens, d_model, hidden, experts, dtype)
        mask = torch.ones(tokens, dtype=torch.bool, device="cuda")
        used = int(torch.unique(route_torch(logits, top_k)[1]).numel())
        weight_bytes = used * 3 * hidden * d_model * 2
        bytes_moved = weight_bytes + 2 * tokens * d_model * 2
        flops = 2 * tokens * top_k * 3 * hidden * d_model
        shape = f"T={tokens} E=8 k=2 D=1024 H=2816"
        args = (x, logits, mask, w1, w2)
        timed(rows, "moe_ffn", shape, "triton (mahia::moe_ffn)", lambda: kernels.moe_ffn(*args, top_k, 0.0),
              bytes_moved, flops, bandwidth, peak)
        if tokens <= 1024:
            try:
                graph_ms = float(triton.testing.do_bench_cudagraph(lambda: kernels.moe_ffn(*args, top_k, 0.0),
                                                                   rep=200, return_mode="median"))
                row(rows, "moe_ffn", shape, "triton, CUDA graph replay", graph_ms, bytes_moved, flops, bandwidth, peak)
            except Exception as exc:
                say(f"moe_ffn CUDA graph timing failed: {type(exc).__name__}: {exc}")
            timed(rows, "moe_ffn", shape, "per-expert loop (reference)",
                  lambda: reference.moe_ffn(*args, top_k, 0.0), bytes_moved, flops, bandwidth, peak)
            timed(rows, "moe_ffn", shape, "dense all-experts masked",
                  lambda: moe_dense_masked(*args, top_k), bytes_moved, flops, bandwidth, peak)
        timed(rows, "moe_ffn", shape, "torch._grouped_mm", lambda: moe_grouped_mm(*args, top_k),
              bytes_moved, flops, bandwidth, peak)
        (w1q, s1), (w2q, s2) = reference.quantize_experts_fp8(w1), reference.quantize_experts_fp8(w2)
        fp8_args = (x, logits, mask, w1q, s1, w2q, s2)
        fp8_bytes = weight_bytes // 2 + 2 * tokens * d_model * 2
        timed(rows, "moe_ffn", shape, "triton FP8 weights (moe_ffn_fp8)",
              lambda: kernels.moe_ffn_fp8(*fp8_args, top_k, 0.0), fp8_bytes, flops, bandwidth, peak)
        if tokens <= 1024:
            try:
                graph_ms = float(triton.testing.do_bench_cudagraph(lambda: kernels.moe_ffn_fp8(*fp8_args, top_k, 0.0),
                                                                   rep=200, return_mode="median"))
                row(rows, "moe_ffn", shape, "triton FP8, CUDA graph replay", graph_ms, fp8_bytes, flops, bandwidth,
                    peak)
            except Exception as exc:
                say(f"moe_ffn_fp8 CUDA graph timing failed: {type(exc).__name__}: {exc}")
        if tokens == 16384:  # the compiled baseline; each token count would recompile
            timed(rows, "moe_ffn", shape, "torch.compile(_grouped_mm)", lambda: compiled(*args, top_k),
                  bytes_moved, flops, bandwidth, peak)


def bench_ssd(rows: list[dict], bandwidth: float, peak: float) -> None:
    """mahia::ssd_scan against its fp32 eager reference."""
    dtype = torch.bfloat16
    batch, length, heads, head_dim, state, chunk = 8, 4096, 16, 64, 128, 256
    make = lambda: ssd_inputs(batch, length, heads, head_dim, state, dtype)  # noqa: E731
    io_bytes = 2 * (2 * batch * length * heads * head_dim + 2 * batch * length * state + batch * length * heads)
    # Useful FLOPs: causal halves of C B^T and of the intra-chunk product, chunk states, state output.
    flops = (batch * length * chunk * state + batch * heads * length * chunk * head_dim
             + 4 * batch * heads * length * head_dim * state)
    nxt = rotating(make, io_bytes)
    shape = "B=8 L=4096 H=16 P=64 N=128 Q=256"
    timed(rows, "ssd_scan", shape, "triton (mahia::ssd_scan)", lambda: kernels.ssd_scan(*nxt(), chunk),
          io_bytes, flops, bandwidth, peak)
    ref_args = tuple(t.float() for t in make())
    timed(rows, "ssd_scan", shape, "reference, fp32 eager",
          lambda ref_args=ref_args: reference.ssd_scan(*ref_args, chunk), io_bytes, flops, bandwidth, peak)
    del ref_args  # the fp32 copies are freed here, as the lambda that bound them is gone


def bench_long_conv(rows: list[dict], bandwidth: float, peak: float) -> None:
    """The Toeplitz kernel, mahia::long_conv's by-length choice and torch.fft."""
    dtype = torch.bfloat16
    from mahia.kernels.triton import long_conv as conv_kernel

    for length in (1024, 2048, 4096):
        for causal in (True, False):
            batch, channels = 8, 1024
            io_bytes = 2 * (2 * batch * channels * length + channels * (length if causal else 2 * length - 1))
            flops = 2 * batch * channels * length * length // (2 if causal else 1)
            nxt = rotating(lambda: conv_inputs(batch, channels, length, causal, dtype), io_bytes)
            shape = f"B=8 D=1024 L={length} {'causal' if causal else 'two-sided'}"
            timed(rows, "long_conv", shape, "triton Toeplitz kernel",
                  lambda: conv_kernel.long_conv(*nxt(), causal), io_bytes, flops, bandwidth, peak)
            timed(rows, "long_conv", shape, "mahia::long_conv (by length)",
                  lambda: kernels.long_conv(*nxt(), causal), io_bytes, flops, bandwidth, peak)
            timed(rows, "long_conv", shape, "torch.fft (reference)",
                  lambda: reference.long_conv(*nxt(), causal), io_bytes, flops, bandwidth, peak)


def bench_gate_combine(rows: list[dict], bandwidth: float, peak: float) -> None:
    """mahia::gate_combine against the eager weighted sum."""
    dtype = torch.bfloat16
    batch, length, dim = 8, 4096, 1024
    io_bytes = 2 * (4 * batch * length * dim + 3 * batch * length)
    make = lambda: (torch.randn(batch, length, dim, 3, device="cuda", dtype=dtype),  # noqa: E731
                    torch.randn(batch, length, 3, device="cuda", dtype=dtype))
    nxt = rotating(make, io_bytes)
    shape = "B=8 L=4096 D=1024"
    timed(rows, "gate_combine", shape, "triton (mahia::gate_combine)", lambda: kernels.gate_combine(*nxt()),
          io_bytes, 0, bandwidth, peak)
    timed(rows, "gate_combine", shape, "eager (MetaAttention inline)", lambda: reference.gate_combine(*nxt()),
          io_bytes, 0, bandwidth, peak)


def bench_meta_attention_ends(rows: list[dict], bandwidth: float, wanted: Callable[[str], bool]) -> None:
    """The meta-attention's three elementwise kernels at base's width and the deployed bucket lengths of 8 x 512 and
    32 x 2048 (528 and 2064 positions), in graph replay, against their references eager and torch.compile'd (what
    Inductor made of the same arithmetic). Bytes moved: each tensor read or written once, at 2 bytes an element."""
    dtype, dim = torch.bfloat16, 768
    for batch, length in ((8, 528), (32, 2064)):
        elements = batch * length * dim
        if wanted("hyena_short_conv"):  # proj [B, L, 3D] in; q [B, L, D] and kv [B, D, L] out
            make = lambda: (torch.randn(batch, length, 3 * dim, device="cuda").to(dtype),  # noqa: E731
                            torch.randn(3, 3 * dim, device="cuda") / 2, torch.randn(3 * dim, device="cuda"))
            ends_rows(rows, "hyena_short_conv", f"B={batch} L={length} D={dim} w=3", make, 10 * elements,
                      bandwidth, kernels.hyena_short_conv, reference.hyena_short_conv)
        if wanted("meta_attention_combine"):  # five [B, L, D]-sized inputs, the gate's logits; one output
            def make():
                by_token, by_channel = (batch, length, dim), (batch, dim, length)
                args = [torch.randn(shape, device="cuda").to(dtype) for shape in
                        (by_token, by_channel, by_channel, (dim,), by_token, by_channel)]
                return (*args, (torch.randn(batch, length, 8, device="cuda") * 2).to(dtype)[..., :3])
            ends_rows(rows, "meta_attention_combine", f"B={batch} L={length} D={dim}", make, 12 * elements,
                      bandwidth, kernels.meta_attention_combine, reference.meta_attention_combine)
        if wanted("ssd_gated_norm"):  # y, x, z in ([B, L, D] each; x and z views of the projection); one output
            def make():
                proj = torch.randn(batch, length, 1808, device="cuda").to(dtype)  # base's padded SSD projection
                return (torch.randn(batch, length, 12, 64, device="cuda").to(dtype),
                        proj[..., :dim].reshape(batch, length, 12, 64), torch.randn(12, device="cuda").to(dtype),
                        proj[..., dim:2 * dim], torch.randn(dim, device="cuda").to(dtype), 1e-5)
            ends_rows(rows, "ssd_gated_norm", f"B={batch} L={length} H=12 P=64", make, 8 * elements,
                      bandwidth, kernels.ssd_gated_norm, reference.ssd_gated_norm)


def ends_rows(rows, kernel, shape, make, bytes_moved, bandwidth, op, ref) -> None:
    """One op's three rows: the Triton kernel, its reference eager and compiled, on rotating inputs."""
    nxt = rotating(make, bytes_moved)
    compiled = torch.compile(ref, dynamic=False)
    for impl, fn in (("triton (mahia::" + kernel + ")", op), ("reference, eager", ref),
                     ("torch.compile(reference)", compiled)):
        timed(rows, kernel, shape, impl, lambda fn=fn: fn(*nxt()), bytes_moved, 0, bandwidth, 1.0, graph_bench)


def profile(bandwidth: float, peak: float) -> list[dict]:
    """Per-kernel GPU times (torch.profiler) of the ops at the issue's sizes, to see what bounds each."""
    dtype = torch.bfloat16
    cases = {
        "moe_ffn T=16": (lambda a: lambda: kernels.moe_ffn(*a, 2, 0.0))(moe_inputs(16, 1024, 2816, 8, dtype)),
        "moe_ffn T=16384": (lambda a: lambda: kernels.moe_ffn(*a, 2, 0.0))(moe_inputs(16384, 1024, 2816, 8, dtype)),
        "ssd_scan B=8 L=4096": (lambda a: lambda: kernels.ssd_scan(*a, 256))(ssd_inputs(8, 4096, 16, 64, 128, dtype)),
        "long_conv L=4096": (lambda a: lambda: kernels.long_conv(*a, True))(conv_inputs(8, 1024, 4096, True, dtype)),
    }
    for name, fn in cases.items():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        say(f"profile {name} (10 calls)")
        try:
            say(prof.key_averages().table(sort_by="device_time_total", row_limit=8))
        except Exception:
            say(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))
    return []


def sweep(bandwidth: float, peak: float) -> list[dict]:
    """Time candidate tile configs per shape bucket (the committed CONFIGs are chosen from these).

    Launchers called directly (not through the op) go through wrap_triton's traced-call path, which
    adds host time per launch in eager; the op switches that off, and so does this sweep.
    """
    from torch._library.triton import set_wrap_triton_enabled

    with set_wrap_triton_enabled(False):
        return _sweep(bandwidth, peak)


def _sweep(bandwidth: float, peak: float) -> list[dict]:
    """The sweep itself (see sweep)."""

    from mahia.kernels.triton import long_conv as conv_k
    from mahia.kernels.triton import moe_ffn as moe_k
    from mahia.kernels.triton import ssd_scan as ssd_k

    rows: list[dict] = []
    dtype = torch.bfloat16
    small_up = [(64, 128, 4, 4), (128, 128, 4, 4), (64, 256, 4, 3), (32, 256, 4, 4), (32, 128, 4, 6)]
    small_down = [(32, 128, 4, 4), (64, 128, 4, 4), (32, 256, 4, 3), (16, 256, 4, 4), (64, 64, 4, 5)]
    big = [(128, (128, 64, 8, 4), (128, 128, 8, 3)), (128, (64, 64, 8, 4), (128, 64, 8, 3)),
           (64, (128, 64, 4, 4), (128, 64, 4, 4)), (128, (128, 32, 8, 5), (128, 64, 8, 4)),
           (64, (64, 64, 4, 4), (64, 64, 4, 4))]
    for tokens in (16, 64, 1024, 16384):
        args = moe_inputs(tokens, 1024, 2816, 8, dtype)
        args = (args[0], args[1], torch.ones_like(args[2]), args[3], args[4])
        if tokens <= 64:
            cands = [{"BLOCK_M": 16, "up": u, "down": small_down[0]} for u in small_up]
            cands += [{"BLOCK_M": 16, "up": small_up[0], "down": d} for d in small_down[1:]]
        else:
            cands = [{"BLOCK_M": m, "up": u, "down": d} for m, u, d in big]
        for cfg in cands:
            fn = (lambda c: lambda: moe_k.moe_ffn(*args, 2, 0.0, config=c))(cfg)
            if tokens <= 1024:
                timed(rows, "moe sweep", f"T={tokens} graph", json.dumps(cfg), fn, 1, 1, bandwidth, peak, graph_bench)
            else:
                timed(rows, "moe sweep", f"T={tokens}", json.dumps(cfg), fn, 1, 1, bandwidth, peak)
    x, filt = conv_inputs(8, 1024, 4096, True, dtype)
    for cfg in ({"BLOCK_K": 64, "NT": 16, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
                {"BLOCK_K": 64, "NT": 16, "BLOCK_N": 128, "num_warps": 8, "num_stages": 4}):
        timed(rows, "conv sweep", "L=4096", json.dumps(cfg), lambda: conv_k.long_conv(x, filt, True, config=cfg),
              1, 1, bandwidth, peak)
    args = ssd_inputs(8, 4096, 16, 64, 128, dtype)
    original = json.loads(json.dumps(ssd_k.CONFIG))
    variants = [{}, {"output": {"BLOCK_N": 128}}, {"output": {"num_warps": 8}}, {"output": {"BLOCK_L": 128}},
                {"output": {"BLOCK_L": 128, "num_warps": 8}}, {"output": {"num_stages": 3}},
                {"states": {"BLOCK_N": 32}}, {"states": {"BLOCK_N": 128}}, {"states": {"num_stages": 2}},
                {"states": {"BLOCK_N": 32}, "output": {"BLOCK_N": 128}}]
    for change in variants:
        for part, values in change.items():
            ssd_k.CONFIG[part].update(values)
        timed(rows, "ssd sweep", "B=8 L=4096", json.dumps(change), lambda: ssd_k.ssd_scan(*args, 256),
              1, 1, bandwidth, peak)
        for part in ssd_k.CONFIG:
            ssd_k.CONFIG[part].clear()
            ssd_k.CONFIG[part].update(original[part])
    return rows


def environment() -> dict:
    """Device and software versions for the record."""
    import triton

    props = torch.cuda.get_device_properties(0)
    return {"date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "command": " ".join([Path(sys.executable).name] + sys.argv)}


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--profile", action="store_true", help="per-kernel GPU times (torch.profiler)")
    parser.add_argument("--only", default=None, help="--check, --bench: these ops only (comma-separated names)")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and log.txt here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernels.py needs a CUDA GPU (none is visible)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        LOG_FILE.append(args.out / "log.txt")
    env = environment()
    say(json.dumps(env))
    result: dict = {"environment": env}
    failures = 0
    try:
        if args.bench or args.sweep or args.profile:
            bandwidth, peak = roofline()
            result["roofline"] = {"hbm_bytes_per_s": bandwidth, "bf16_flops_per_s": peak}
        only = frozenset(args.only.split(",")) if args.only else None
        for wanted, name, fn in ((args.bench, "bench", lambda b, p: bench_all(b, p, only)),
                                 (args.profile, "profile", profile), (args.sweep, "sweep", sweep)):
            if wanted:
                try:
                    result[name] = fn(bandwidth, peak)
                except Exception:
                    say(traceback.format_exc())
                    failures += 1
        if args.check:
            result["check"] = check(only)
            failed = sum(not r["pass"] for r in result["check"])
            failures += failed
            say(f"check: {len(result['check']) - failed} passed, {failed} failed")
    except Exception:
        say(traceback.format_exc())
        failures += 1
    finally:
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
