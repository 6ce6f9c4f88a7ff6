"""`mahia::moe_ffn` (and `moe_ffn_fp8`) as six plugin nodes: the plan's three-kernel routing (token counts are
dynamic in TensorRT, so never the one-program routing), then the grouped GEMMs and the combine:

    MoeTopk(router_logits [T, E], mask [T] bool; top_k)
        -> weights f32 [T, k], experts i32 [T, k], counts i32 [k, tiles, E_PAD], valid i32 [T]
    MoePlan(counts, valid; top_k, block_m, num_experts) -> offsets i32 [k, tiles, E_PAD], plan i32 [1 + 2 E_PAD],
        block_expert i32 [max_blocks]
    MoeScatter(mask, experts, offsets, plan; top_k, block_m, num_experts) -> queue i32 [T, k], sorted_ids i32 [R]
    MoeUp(x [T, D], w1 [E, 2H, D], sorted_ids, block_expert; top_k, block_m, config) -> act [R, H]
    MoeDown(act, w2 [E, D, H], sorted_ids, block_expert; top_k, block_m, config) -> expert_out [T k, D]
    MoeCombine(expert_out, weights, queue; top_k) -> y [T, D]
    (moe_ffn_fp8: MoeUpFp8 / MoeDownFp8 take FP8 w1 / w2 and their float32 per-channel scales [E, 2H] / [E, D])

k = top_k (already clamped to E), tiles = cdiv(T, ROUTE_TILE), E_PAD = max(2, next_power_of_2(E)),
max_blocks = cdiv(T k + E (block_m - 1), block_m), R = T k + (E + 1)(block_m - 1). Dropless only (inference).

Two sizes are wider than the plan's buffers, because a plugin sees only its inputs' shapes: MoePlan gets no
[T, ...] input, so `valid` is declared [T] (the kernel writes its first `tiles` entries) and carries T; MoeDown
gets none either, so the permuted rows are declared R, linear in T (R // block_m = max_blocks exactly, and
R - block_m < max_rows <= R for the plan's max_rows), and MoeDown reads T k = R - (E + 1)(block_m - 1) back.
The kernels touch only the plan's rows. `block_m` and the tile `config` (an index into the kernels' CONFIGS) are
attributes fixed at export by the kernels' own bucket rule at the profile's opt token count (`chain_attributes`),
never tactics: MoePlan, MoeScatter, MoeUp and MoeDown must agree on block_m.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from mahia.kernels.triton import moe_ffn as kernel
from mahia.kernels.triton.launch import dot_precision
from mahia.kernels.triton.plan import MMA_NAMES
from mahia.plugins_trt.sizes import Algebra, next_power_of_2
from mahia.plugins_trt.specs import (
    FLOAT,
    POISON_FLOAT,
    POISON_INT,
    Chain,
    LaunchFormula,
    OutputSpec,
    PluginSpec,
    Sizes,
    TensorSpec,
)

PLAN_BLOCK_R = 1024  # moe_plan_kernel's BLOCK_R in the plan


def chain_attributes(num_experts: int, top_k: int, opt_tokens: int) -> dict[str, int]:
    """The MoE chain's attributes: top_k clamped to the experts, and the tile config (and its block_m) the kernels
    choose for the profile's opt token count."""
    if num_experts < 1 or top_k < 1 or opt_tokens < 1:
        raise ValueError(f"moe_ffn: num_experts={num_experts}, top_k={top_k}, opt_tokens={opt_tokens}; "
                         "each must be >= 1")
    k = min(top_k, num_experts)
    chosen = kernel.choose_config(opt_tokens * k)
    config = next(i for i, (_, cfg) in enumerate(kernel.CONFIGS) if cfg is chosen)
    return {"top_k": k, "block_m": chosen["BLOCK_M"], "config": config, "num_experts": num_experts}


def _e_pad(num_experts: int) -> int:
    return max(2, next_power_of_2(num_experts))


def _tiles(s: Sizes, alg: Algebra) -> object:
    return alg.cdiv(s.T, kernel.ROUTE_TILE)


def _max_blocks(s: Sizes, alg: Algebra) -> object:
    return alg.cdiv(s.T * s.top_k + s.num_experts * (s.block_m - 1), s.block_m)


def _rows(s: Sizes, alg: Algebra) -> object:
    """R: the permuted rows as declared (see the module docstring)."""
    return s.T * s.top_k + (s.num_experts + 1) * (s.block_m - 1)


def _check_k(s: Sizes) -> None:
    if not 1 <= s.top_k <= s.num_experts:
        raise ValueError(f"{s.spec.name}: top_k={s.top_k} must be in 1..num_experts={s.num_experts}")


def _check_config(s: Sizes) -> None:
    _check_k(s)
    if not 0 <= s.config < len(kernel.CONFIGS):
        raise ValueError(f"{s.spec.name}: config={s.config} is not an index of the kernels' {len(kernel.CONFIGS)} "
                         "tile configs")
    expected = kernel.CONFIGS[s.config][1]["BLOCK_M"]
    if s.block_m != expected:
        raise ValueError(f"{s.spec.name}: block_m={s.block_m} but tile config {s.config} has BLOCK_M {expected}")


def _check_block_m(s: Sizes) -> None:
    _check_k(s)
    if s.block_m not in {cfg["BLOCK_M"] for _, cfg in kernel.CONFIGS}:
        raise ValueError(f"{s.spec.name}: block_m={s.block_m} is not a BLOCK_M of the kernels' tile configs")


def _plan(s: Sizes) -> object:
    """The op's plan at these sizes (three-kernel routing only where plan() chooses it: the tests lower
    kernel.ONE_PROGRAM_ROUTING to compare at every token count)."""
    values = s.values
    dtype = s.torch_dtype if s.dtype else torch.float32
    scaled = "w1_scale" in s.dtypes or "w2_scale" in s.dtypes
    block_m = values.get("block_m")
    config = (kernel.CONFIGS[values["config"]][1] if "config" in values else
              next((cfg for _, cfg in kernel.CONFIGS if cfg["BLOCK_M"] == block_m), None))
    return kernel.plan(s.T if "T" in values else s.TK // s.top_k, values.get("D", 16), values.get("H", 16),
                       values.get("E", values.get("num_experts", s.top_k)), s.top_k, 0.0, dtype,
                       torch.float8_e4m3fn if scaled else None, config)


def _work(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _by_tile(t: torch.Tensor, tiles: int) -> torch.Tensor:
    """[T, ...] -> [tiles, ROUTE_TILE, ...], zero past T."""
    pad = tiles * kernel.ROUTE_TILE - t.shape[0]
    return F.pad(t, (0, 0) * (t.dim() - 1) + (0, pad)).reshape(tiles, kernel.ROUTE_TILE, *t.shape[1:])


# --- MoeTopk -------------------------------------------------------------------------------------------------

def _topk_launch(s: Sizes, alg: Algebra) -> LaunchFormula:
    return LaunchFormula("moe_ffn", "moe_topk_kernel_entry", (s.tiles, 1, 1), 4, 1,
                         (("K", s.top_k), ("E_PAD", s.E_PAD), ("K_PAD", s.K_PAD), ("BLOCK_T", kernel.ROUTE_TILE)),
                         (("num_tokens", s.T), ("num_experts", s.E)))


def _topk_reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Softmax, top-k (lowest expert among ties), renormalised; per (rank, tile) expert counts of real tokens."""
    probs = torch.softmax(t["router_logits"].to(_work(t["router_logits"])), dim=-1)
    values, experts = [], []
    for _ in range(s.top_k):
        best, index = probs.max(dim=-1)  # the first maximal index
        values.append(best)
        experts.append(index)
        probs = probs.scatter(1, index[:, None], -1.0)
    weights = torch.stack(values, dim=1)
    experts = torch.stack(experts, dim=1)
    real = t["mask"].bool()
    onehot = F.one_hot(experts, s.E_PAD) * real[:, None, None]  # [T, k, E_PAD]
    valid = torch.full((s.T,), POISON_INT, dtype=torch.int32, device=real.device)
    valid[:s.tiles] = _by_tile(real.int(), s.tiles).sum(dim=1)
    return {"weights": weights / weights.sum(dim=1, keepdim=True), "experts": experts.int(),
            "counts": _by_tile(onehot, s.tiles).sum(dim=1).permute(1, 0, 2).int(), "valid": valid}


MOE_TOPK = PluginSpec(
    name="MoeTopk", op="moe_ffn", kernel="moe_topk_kernel",
    inputs=(TensorSpec("router_logits", "logits_ptr", ("T", "E"), (FLOAT,)),
            TensorSpec("mask", "mask_ptr", ("T",), ("bool",))),
    outputs=(OutputSpec("weights", "weights_ptr", ("T", "top_k"), "float32"),
             OutputSpec("experts", "experts_ptr", ("T", "top_k"), "int32"),
             OutputSpec("counts", "counts_ptr", ("top_k", "tiles", "E_PAD"), "int32"),
             OutputSpec("valid", "valid_ptr", ("T",), "int32", "the first tiles entries")),
    attrs=("top_k",), static=("E",),
    derived=(("num_experts", lambda s, alg: s.E), ("tiles", _tiles), ("E_PAD", lambda s, alg: _e_pad(s.E)),
             ("K_PAD", lambda s, alg: max(2, next_power_of_2(s.top_k)))),
    launch=_topk_launch, plan=_plan, reference=_topk_reference,
    check=_check_k)


# --- MoePlan -------------------------------------------------------------------------------------------------

def _plan_kernel_launch(s: Sizes, alg: Algebra) -> LaunchFormula:
    return LaunchFormula("moe_ffn", "moe_plan_kernel_entry", (1, 1, 1), 4, 1,
                         (("K", s.top_k), ("E_PAD", s.E_PAD), ("BLOCK_R", PLAN_BLOCK_R), ("BLOCK_M", s.block_m),
                          ("CAPACITY_LIMITED", False)),
                         (("num_tiles", s.tiles), ("num_tokens", s.T), ("num_experts", s.num_experts),
                          ("max_blocks", s.max_blocks)))


def _plan_reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Queue offsets of each (rank, tile) per expert (rank-major), segments padded to block_m, block owners."""
    flat = t["counts"].reshape(s.top_k * s.tiles, s.E_PAD).long()
    capacity = s.T * s.top_k  # dropless
    kept = flat.sum(dim=0).clamp(max=capacity)
    padded = (kept + s.block_m - 1) // s.block_m * s.block_m
    ends = padded.cumsum(dim=0)
    first_rows = torch.arange(s.max_blocks, device=flat.device) * s.block_m
    owner = (ends[None, :s.num_experts] <= first_rows[:, None]).sum(dim=1)
    plan = torch.cat([torch.tensor([capacity], device=flat.device), ends - padded, kept])
    return {"offsets": (flat.cumsum(dim=0) - flat).reshape(t["counts"].shape).int(), "plan": plan.int(),
            "block_expert": torch.where(first_rows < padded.sum(), owner, -1).int()}


MOE_PLAN = PluginSpec(
    name="MoePlan", op="moe_ffn", kernel="moe_plan_kernel",
    inputs=(TensorSpec("counts", "counts_ptr", ("top_k", "tiles", "E_PAD"), ("int32",)),
            TensorSpec("valid", "valid_ptr", ("T",), ("int32",))),
    outputs=(OutputSpec("offsets", "offsets_ptr", ("top_k", "tiles", "E_PAD"), "int32"),
             OutputSpec("plan", "plan_ptr", ("plan_len",), "int32"),
             OutputSpec("block_expert", "block_expert_ptr", ("max_blocks",), "int32")),
    attrs=("top_k", "block_m", "num_experts"), static=(),
    derived=(("tiles", _tiles), ("E_PAD", lambda s, alg: _e_pad(s.num_experts)),
             ("plan_len", lambda s, alg: 1 + 2 * s.E_PAD), ("max_blocks", _max_blocks)),
    launch=_plan_kernel_launch, plan=_plan, reference=_plan_reference,
    check=_check_block_m)


# --- MoeScatter ----------------------------------------------------------------------------------------------

def _scatter_launch(s: Sizes, alg: Algebra) -> LaunchFormula:
    return LaunchFormula("moe_ffn", "moe_scatter_kernel_entry", (s.tiles, s.top_k, 1), 4, 1,
                         (("K", s.top_k), ("E_PAD", s.E_PAD), ("BLOCK_T", kernel.ROUTE_TILE), ("BLOCK_M", s.block_m)),
                         (("num_tokens", s.T), ("num_experts", s.num_experts)))


def _scatter_reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Queue position of every assignment (-1: not kept) and its permuted row; sentinel T k in the padding rows."""
    real = t["mask"].bool()
    plan = t["plan"].long()
    capacity, starts, kept = plan[0], plan[1:1 + s.E_PAD], plan[1 + s.E_PAD:]
    num_assign = s.T * s.top_k
    queue = torch.empty(s.T, s.top_k, dtype=torch.int32, device=real.device)
    sorted_ids = torch.full((s.R,), POISON_INT, dtype=torch.int32, device=real.device)
    for r in range(s.top_k):
        experts = t["experts"][:, r].long()
        onehot = _by_tile(F.one_hot(experts, s.E_PAD) * real[:, None], s.tiles)  # [tiles, ROUTE_TILE, E_PAD]
        before = onehot.cumsum(dim=1) - onehot + t["offsets"][r].long()[:, None, :]
        position = (before * onehot).sum(dim=-1).reshape(-1)[:s.T]
        keep = real & (position < capacity)
        queue[:, r] = torch.where(keep, position, -1)
        assignment = torch.arange(s.T, device=real.device) * s.top_k + r
        sorted_ids[(starts[experts] + position)[keep]] = assignment[keep].int()
    for e in range(s.num_experts):
        first = int(starts[e] + kept[e])
        sorted_ids[first:int(starts[e]) + -(-int(kept[e]) // s.block_m) * s.block_m] = num_assign
    return {"queue": queue, "sorted_ids": sorted_ids}


MOE_SCATTER = PluginSpec(
    name="MoeScatter", op="moe_ffn", kernel="moe_scatter_kernel",
    inputs=(TensorSpec("mask", "mask_ptr", ("T",), ("bool",)),
            TensorSpec("experts", "experts_ptr", ("T", "top_k"), ("int32",)),
            TensorSpec("offsets", "offsets_ptr", ("top_k", "tiles", "E_PAD"), ("int32",)),
            TensorSpec("plan", "plan_ptr", ("plan_len",), ("int32",))),
    outputs=(OutputSpec("queue", "queue_ptr", ("T", "top_k"), "int32"),
             OutputSpec("sorted_ids", "sorted_ids_ptr", ("R",), "int32", "rows of the used row blocks")),
    attrs=("top_k", "block_m", "num_experts"), static=(),
    derived=(("tiles", _tiles), ("E_PAD", lambda s, alg: _e_pad(s.num_experts)),
             ("plan_len", lambda s, alg: 1 + 2 * s.E_PAD), ("R", _rows)),
    launch=_scatter_launch, plan=_plan,
    reference=_scatter_reference, check=_check_block_m)


# --- MoeUp, MoeDown (and their FP8 variants) -----------------------------------------------------------------

def _gemm_launch(s: Sizes, alg: Algebra, stage: str, scaled: bool) -> LaunchFormula:
    cfg = kernel.CONFIGS[s.config][1]
    block_n, block_k, warps, stages = kernel._fit(cfg[stage], s.torch_dtype)  # the plan's float32 tile rule
    columns = s.H if stage == "up" else s.D
    entry = f"moe_{stage}_kernel_scaled_entry" if scaled else f"moe_{stage}_kernel_entry"
    top_k = (("K", s.top_k),) if stage == "up" else ()
    return LaunchFormula(
        "moe_ffn", entry, (s.max_blocks * alg.cdiv(columns, block_n), 1, 1), warps, stages,
        (*top_k, ("BLOCK_M", s.block_m), ("BLOCK_N", block_n), ("BLOCK_K", block_k), ("GROUP_M", kernel.GROUP_M),
         ("W_SCALED", scaled), ("MMA", MMA_NAMES[s.torch_dtype]), ("DOT_PRECISION", dot_precision(s.torch_dtype)),
         ("A_FP8", False)),
        (("num_assign", s.TK), ("d_model", s.D), ("hidden", s.H),
         ("stride_we", 2 * s.H * s.D if stage == "up" else s.D * s.H), ("num_blocks_m", s.max_blocks)))


def _expert_rows(s: Sizes, t: Mapping[str, torch.Tensor], expert: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(permuted rows of the blocks this expert owns, their assignment ids)."""
    blocks = torch.nonzero(t["block_expert"] == expert).flatten()
    rows = (blocks[:, None] * s.block_m + torch.arange(s.block_m, device=blocks.device)).flatten()
    return rows, t["sorted_ids"][rows].long()


def _weight(t: Mapping[str, torch.Tensor], name: str, expert: int, work: torch.dtype) -> torch.Tensor:
    """An expert's weight matrix in the work dtype (times its per-output-channel scale for FP8)."""
    w = t[name][expert].to(work)
    scale = t.get(f"{name}_scale")
    return w if scale is None else w * scale[expert].to(work)[:, None]


def _up_reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """act[row] = silu(x[token] w_gate^T) * (x[token] w_up^T) for the rows of owned blocks (0 for padding rows)."""
    work = _work(t["x"])
    act = torch.full((s.R, s.H), POISON_FLOAT, dtype=work, device=t["x"].device)
    for e in range(s.E):
        rows, ids = _expert_rows(s, t, e)
        ok = ids < s.TK
        xs = torch.where(ok[:, None], t["x"][torch.where(ok, ids // s.top_k, 0)].to(work), 0.0)
        gate, up = (xs @ _weight(t, "w1", e, work).t()).split(s.H, dim=1)
        act[rows] = F.silu(gate) * up
    return {"act": act}


def _down_reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """expert_out[assignment] = act[row] w2^T for the rows of owned blocks that hold an assignment."""
    work = _work(t["act"])
    out = torch.full((s.TK, s.D), POISON_FLOAT, dtype=work, device=t["act"].device)
    for e in range(s.E):
        rows, ids = _expert_rows(s, t, e)
        ok = ids < s.TK
        out[ids[ok]] = t["act"][rows[ok]].to(work) @ _weight(t, "w2", e, work).t()
    return {"expert_out": out}


def _gemm_spec(stage: str, scaled: bool) -> PluginSpec:
    weight = "w1" if stage == "up" else "w2"
    weight_dims = ("E", "2H", "D") if stage == "up" else ("E", "D", "H")
    first = (TensorSpec("x", "x_ptr", ("T", "D"), (FLOAT,)) if stage == "up" else
             TensorSpec("act", "act_ptr", ("R", "H"), (FLOAT,)))
    weights = (TensorSpec(weight, f"{weight}_ptr", weight_dims, ("float8_e4m3fn" if scaled else FLOAT,)),)
    if scaled:
        weights += (TensorSpec(f"{weight}_scale", f"{weight}_scale_ptr", weight_dims[:2], ("float32",)),)
    if stage == "up":
        derived = (("num_experts", lambda s, alg: s.E), ("TK", lambda s, alg: s.T * s.top_k), ("R", _rows),
                   ("max_blocks", lambda s, alg: s.R // s.block_m))
        output = OutputSpec("act", "act_ptr", ("R", "H"), FLOAT, "rows of the used row blocks")
    else:  # no [T, ...] input: T k from the declared rows
        derived = (("num_experts", lambda s, alg: s.E), ("TK", lambda s, alg: s.R - (s.E + 1) * (s.block_m - 1)),
                   ("max_blocks", lambda s, alg: s.R // s.block_m))
        output = OutputSpec("expert_out", "out_ptr", ("TK", "D"), FLOAT, "rows of kept assignments")
    name = f"Moe{stage.capitalize()}{'Fp8' if scaled else ''}"
    return PluginSpec(
        name=name, op="moe_ffn_fp8" if scaled else "moe_ffn", kernel=f"moe_{stage}_kernel",
        inputs=(first, *weights, TensorSpec("sorted_ids", "sorted_ids_ptr", ("R",), ("int32",)),
                TensorSpec("block_expert", "block_expert_ptr", ("max_blocks",), ("int32",))),
        outputs=(output,), attrs=("top_k", "block_m", "config"), static=("E", "D", "H"), derived=derived,
        launch=lambda s, alg: _gemm_launch(s, alg, stage, scaled),
        plan=_plan,
        reference=_up_reference if stage == "up" else _down_reference, check=_check_config)


MOE_UP, MOE_DOWN = _gemm_spec("up", False), _gemm_spec("down", False)
MOE_UP_FP8, MOE_DOWN_FP8 = _gemm_spec("up", True), _gemm_spec("down", True)


# --- MoeCombine ----------------------------------------------------------------------------------------------

def _combine_launch(s: Sizes, alg: Algebra) -> LaunchFormula:
    block_d = min(256, next_power_of_2(s.D))
    return LaunchFormula("moe_ffn", "moe_combine_kernel_entry",
                         (alg.cdiv(s.T, kernel.COMBINE_TOKENS), alg.cdiv(s.D, block_d), 1), 4, 1,
                         (("K", s.top_k), ("BLOCK_T", kernel.COMBINE_TOKENS), ("BLOCK_D", block_d)),
                         (("num_tokens", s.T), ("d_model", s.D)))


def _combine_reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """y[t] = sum over kept slots r of weights[t, r] * expert_out[t k + r], in slot order."""
    work = _work(t["expert_out"])
    y = torch.zeros(s.T, s.D, dtype=work, device=t["expert_out"].device)
    tokens = torch.arange(s.T, device=y.device)
    for r in range(s.top_k):
        keep = (t["queue"][:, r] >= 0)[:, None]
        y += torch.where(keep, t["weights"][:, r, None].to(work) * t["expert_out"][tokens * s.top_k + r].to(work), 0.0)
    return {"y": y}


MOE_COMBINE = PluginSpec(
    name="MoeCombine", op="moe_ffn", kernel="moe_combine_kernel",
    inputs=(TensorSpec("expert_out", "expert_out_ptr", ("TK", "D"), (FLOAT,)),
            TensorSpec("weights", "weights_ptr", ("T", "top_k"), ("float32",)),
            TensorSpec("queue", "queue_ptr", ("T", "top_k"), ("int32",))),
    outputs=(OutputSpec("y", "y_ptr", ("T", "D"), FLOAT),),
    attrs=("top_k",), static=("D",), derived=(("TK", lambda s, alg: s.T * s.top_k),),
    launch=_combine_launch, plan=_plan, reference=_combine_reference)

ROUTING = (MOE_TOPK, MOE_PLAN, MOE_SCATTER)
SPECS = (*ROUTING, MOE_UP, MOE_DOWN, MOE_COMBINE, MOE_UP_FP8, MOE_DOWN_FP8)
CHAIN = Chain("moe_ffn", ("x", "router_logits", "mask", "w1", "w2"), "y",
              (*ROUTING, MOE_UP, MOE_DOWN, MOE_COMBINE), chain_attributes)
CHAIN_FP8 = Chain("moe_ffn_fp8", ("x", "router_logits", "mask", "w1", "w1_scale", "w2", "w2_scale"), "y",
                  (*ROUTING, MOE_UP_FP8, MOE_DOWN_FP8, MOE_COMBINE), chain_attributes)
