"""`mahia::ssd_scan` as three plugin nodes, the three launches of its plan (one B/C group; a [H]):

    SsdChunkCb(b, c; chunk) -> cb f32 [B, nC, Q, Q]
    SsdChunkStates(x, dt, a, b; chunk) -> states f32 [B, nC, H, P, N]
    SsdChunkOutput(x, dt, a, c, cb, states; chunk) -> y [B, L, H, P]

with x [B, L, H, P], dt [B, L, H], b and c [B, L, N] contiguous, Q = the kernels' chunk for the op's chunk_size
(`kernel_chunk`) and nC = cdiv(L, Q). The references compute float outputs in float64 for float64 inputs, else
float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from mahia.kernels.triton import ssd_scan as kernel
from mahia.kernels.triton.launch import dot_precision
from mahia.kernels.triton.plan import MMA_NAMES
from mahia.plugins_trt.sizes import Algebra, next_power_of_2
from mahia.plugins_trt.specs import FLOAT, POISON_FLOAT, Chain, LaunchFormula, OutputSpec, PluginSpec, Sizes, TensorSpec

DERIVED = (("Q", lambda s, alg: kernel.kernel_chunk(s.chunk)), ("nC", lambda s, alg: alg.cdiv(s.L, s.Q)))


def _tile(stage: str, key: str, size: int) -> int:
    """The plan's tile of a dimension: min(config, max(16, next_power_of_2(size)))."""
    return min(kernel.CONFIG[stage][key], max(16, next_power_of_2(size)))


def _mma(s: Sizes) -> tuple[tuple[str, object], ...]:
    return (("MMA", MMA_NAMES[s.torch_dtype]), ("DOT_PRECISION", dot_precision(s.torch_dtype)))


def _shape_scalars(s: Sizes) -> tuple[tuple[str, object], ...]:
    """length, heads, head_dim, state, num_chunks and the x and dt strides (contiguous)."""
    return (("length", s.L), ("heads", s.H), ("head_dim", s.P), ("state", s.N), ("num_chunks", s.nC),
            ("stride_xb", s.L * (s.H * s.P)), ("stride_xt", s.H * s.P), ("stride_xh", s.P),
            ("stride_dtb", s.L * s.H), ("stride_dtt", s.H))


def _cb_launch(s: Sizes, alg: Algebra) -> LaunchFormula:
    cfg = kernel.CONFIG["cb"]
    block = min(cfg["BLOCK"], s.Q)
    return LaunchFormula("ssd_scan", "ssd_chunk_cb_kernel_entry", (s.B * s.nC, s.Q // block, s.Q // block),
                         cfg["num_warps"], cfg["num_stages"],
                         (("Q", s.Q), ("BLOCK", block), ("BLOCK_N", _tile("cb", "BLOCK_N", s.N)), *_mma(s)),
                         (("length", s.L), ("state", s.N), ("num_chunks", s.nC), ("stride_bb", s.L * s.N),
                          ("stride_bt", s.N), ("stride_cb", s.L * s.N), ("stride_ct", s.N)))


def _states_launch(s: Sizes, alg: Algebra) -> LaunchFormula:
    cfg = kernel.CONFIG["states"]
    block_p, block_n = _tile("states", "BLOCK_P", s.P), _tile("states", "BLOCK_N", s.N)
    return LaunchFormula("ssd_scan", "ssd_chunk_states_kernel_entry",
                         (s.B * s.H, alg.cdiv(s.P, block_p), alg.cdiv(s.N, block_n)), cfg["num_warps"],
                         cfg["num_stages"],
                         (("Q", s.Q), ("BLOCK_Q", min(cfg["BLOCK_Q"], s.Q)), ("BLOCK_P", block_p), ("BLOCK_N", block_n),
                          *_mma(s)),
                         (*_shape_scalars(s), ("stride_bb", s.L * s.N), ("stride_bt", s.N)))


def _output_launch(s: Sizes, alg: Algebra) -> LaunchFormula:
    cfg = kernel.CONFIG["output"]
    block_l = min(cfg["BLOCK_L"], s.Q)
    block_p, block_n = _tile("output", "BLOCK_P", s.P), _tile("output", "BLOCK_N", s.N)
    return LaunchFormula("ssd_scan", "ssd_chunk_output_kernel_entry",
                         (s.B * s.nC * (s.H * (s.Q // block_l)), alg.cdiv(s.P, block_p), 1), cfg["num_warps"],
                         cfg["num_stages"],
                         (("Q", s.Q), ("BLOCK_L", block_l), ("BLOCK_P", block_p), ("BLOCK_N", block_n), *_mma(s)),
                         (*_shape_scalars(s), ("stride_cb", s.L * s.N), ("stride_ct", s.N)))


def _plan(s: Sizes) -> object:
    """The op's plan (SsdChunkCb sees no x: any heads and head_dim give its launch)."""
    a_dtype = torch.float32 if s.dtypes.get("a") == "float32" and s.torch_dtype != torch.float32 else None
    return kernel.plan(s.B, s.L, s.values.get("H", 1), s.values.get("P", 16), s.N, s.chunk, s.torch_dtype, a_dtype)


def _work(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _chunked(t: torch.Tensor, s: Sizes, work: torch.dtype) -> torch.Tensor:
    """[B, L, ...] -> [B, nC, Q, ...] in the work dtype, zero past L (the kernels mask those positions)."""
    pad = s.nC * s.Q - s.L
    t = F.pad(t.to(work), (0, 0) * (t.dim() - 2) + (0, pad))
    return t.reshape(s.B, s.nC, s.Q, *t.shape[2:])


def _decay_sums(s: Sizes, t: Mapping[str, torch.Tensor], work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(dt [B, nC, Q, H], inclusive cumulative sums of dt * a within each chunk [B, nC, Q, H])."""
    dt = _chunked(t["dt"], s, work)
    return dt, (dt * t["a"].to(work)).cumsum(dim=2)


def _cb_reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cb[b, c, l, s] = C_l . B_s over the chunk; only the lower triangle of BLOCK x BLOCK blocks is written."""
    work = _work(t["b"])
    cb = torch.einsum("bcln,bcsn->bcls", _chunked(t["c"], s, work), _chunked(t["b"], s, work))
    block_of = torch.arange(s.Q, device=cb.device) // min(kernel.CONFIG["cb"]["BLOCK"], s.Q)
    return {"cb": cb.masked_fill(block_of[None, :] > block_of[:, None], POISON_FLOAT)}


def _states_reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """states[b, c, h] = the state entering chunk c (zero for the first)."""
    work = _work(t["x"])
    dt, cums = _decay_sums(s, t, work)
    total = cums[:, :, -1]  # [B, nC, H]
    weight = torch.exp(total[:, :, None] - cums) * dt
    contrib = torch.einsum("bclh,bclhp,bcln->bchpn", weight, _chunked(t["x"], s, work), _chunked(t["b"], s, work))
    states = torch.empty_like(contrib)
    running = torch.zeros_like(contrib[:, 0])
    for chunk in range(s.nC):
        states[:, chunk] = running
        running = running * torch.exp(total[:, chunk])[..., None, None] + contrib[:, chunk]
    return {"states": states}


def _output_reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """y_l = exp(A_l) C_l . states_c + sum_{s <= l} cb[l, s] exp(A_l - A_s) dt_s x_s within the chunk."""
    work = _work(t["x"])
    dt, cums = _decay_sums(s, t, work)
    x = _chunked(t["x"], s, work)
    y_state = torch.einsum("bcln,bchpn->bclhp", _chunked(t["c"], s, work), t["states"].to(work))
    y_state = y_state * torch.exp(cums)[..., None]
    causal = torch.ones(s.Q, s.Q, dtype=torch.bool, device=x.device).tril()[None, None, :, :, None]
    diff = torch.where(causal, cums[:, :, :, None, :] - cums[:, :, None, :, :], -torch.inf)  # [B, nC, l, s, H]
    # where(), not a product: the cb blocks above the diagonal are never written (NaN here) and never read.
    scores = torch.where(causal, t["cb"].to(work)[..., None] * torch.exp(diff) * dt[:, :, None], 0.0)
    y = y_state + torch.einsum("bclsh,bcshp->bclhp", scores, x)
    return {"y": y.reshape(s.B, s.nC * s.Q, s.H, s.P)[:, :s.L]}


X = TensorSpec("x", "x_ptr", ("B", "L", "H", "P"), (FLOAT,))
DT = TensorSpec("dt", "dt_ptr", ("B", "L", "H"), (FLOAT,))
A = TensorSpec("a", "a_ptr", ("H",), (FLOAT, "float32"))
B_IN = TensorSpec("b", "b_ptr", ("B", "L", "N"), (FLOAT,))
C_IN = TensorSpec("c", "c_ptr", ("B", "L", "N"), (FLOAT,))
COMMON = dict(op="ssd_scan", attrs=("chunk",), static=("H", "P", "N"), derived=DERIVED)

SSD_CHUNK_CB = PluginSpec(
    name="SsdChunkCb", kernel="ssd_chunk_cb_kernel", inputs=(B_IN, C_IN),
    outputs=(OutputSpec("cb", "cb_ptr", ("B", "nC", "Q", "Q"), "float32",
                        "blocks [l, s] of min(64, Q) rows with s-block <= l-block"),),
    launch=_cb_launch, plan=_plan, reference=_cb_reference, **COMMON)
SSD_CHUNK_STATES = PluginSpec(
    name="SsdChunkStates", kernel="ssd_chunk_states_kernel", inputs=(X, DT, A, B_IN),
    outputs=(OutputSpec("states", "states_ptr", ("B", "nC", "H", "P", "N"), "float32"),),
    launch=_states_launch, plan=_plan, reference=_states_reference, **COMMON)
SSD_CHUNK_OUTPUT = PluginSpec(
    name="SsdChunkOutput", kernel="ssd_chunk_output_kernel",
    inputs=(X, DT, A, C_IN, TensorSpec("cb", "cb_ptr", ("B", "nC", "Q", "Q"), ("float32",)),
            TensorSpec("states", "states_ptr", ("B", "nC", "H", "P", "N"), ("float32",))),
    outputs=(OutputSpec("y", "y_ptr", ("B", "L", "H", "P"), FLOAT),),
    launch=_output_launch, plan=_plan, reference=_output_reference, **COMMON)

SPECS = (SSD_CHUNK_CB, SSD_CHUNK_STATES, SSD_CHUNK_OUTPUT)
CHAIN = Chain("ssd_scan", ("x", "dt", "a", "b", "c"), "y", SPECS, lambda chunk_size: {"chunk": int(chunk_size)})
