"""`mahia::gate_combine` as one plugin node: GateCombine(branches [B, L, D, 3], logits [B, L, 3]) -> out [B, L, D]."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mahia.kernels import reference
from mahia.kernels.triton import gate_combine as kernel
from mahia.plugins_trt.sizes import Algebra
from mahia.plugins_trt.specs import FLOAT, Chain, LaunchFormula, OutputSpec, PluginSpec, Sizes, TensorSpec


def _launch(s: Sizes, alg: Algebra) -> LaunchFormula:
    cfg = kernel.CONFIG
    tokens = s.B * s.L
    return LaunchFormula("gate_combine", "gate_combine_kernel_entry",
                         (alg.cdiv(tokens, cfg["BLOCK_T"]), alg.cdiv(s.D, cfg["BLOCK_D"]), 1), cfg["num_warps"], 1,
                         (("BLOCK_T", cfg["BLOCK_T"]), ("BLOCK_D", cfg["BLOCK_D"])),
                         (("num_tokens", tokens), ("dim", s.D)))


def _reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"out": reference.gate_combine(t["branches"], t["logits"])}


GATE_COMBINE = PluginSpec(
    name="GateCombine", op="gate_combine", kernel="gate_combine_kernel",
    inputs=(TensorSpec("branches", "branches_ptr", ("B", "L", "D", "3"), (FLOAT,)),
            TensorSpec("logits", "logits_ptr", ("B", "L", "3"), (FLOAT,))),
    outputs=(OutputSpec("out", "out_ptr", ("B", "L", "D"), FLOAT),),
    attrs=(), static=("D",), derived=(), launch=_launch,
    plan=lambda s: kernel.plan(s.B * s.L, s.D, s.torch_dtype),
    reference=_reference)

SPECS = (GATE_COMBINE,)
CHAIN = Chain("gate_combine", ("branches", "logits"), "out", SPECS, lambda: {})
