"""`mahia::long_conv` as one plugin node: LongConv(x [B, D, L], filt [D, F]; causal) -> out [B, D, L], F = L
(causal) or 2L - 1 (two-sided).

The Toeplitz kernel runs at every length: TensorRT parses DFT only from 11.2 and the op's FFT path is torch's.
Its tile config is chosen by the kernels' bucket rule from (batch, length), both dynamic, so here the configs
are autotune tactics: TensorRT times each at the profile's opt shape and keeps the fastest. Every config is
correct at every shape (the grid follows the sizes), which tests/plugins_trt/test_plugins_trt_reference.py checks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mahia.kernels import reference
from mahia.kernels.triton import long_conv as kernel
from mahia.kernels.triton.launch import dot_precision
from mahia.kernels.triton.plan import MMA_NAMES
from mahia.plugins_trt.sizes import Algebra
from mahia.plugins_trt.specs import FLOAT, Chain, LaunchFormula, OutputSpec, PluginSpec, Sizes, TensorSpec

# Tactic i + 1 runs the kernel's one-launch config choice at TACTIC_POINTS[i] (batch, length): the short (16-step) and
# long (64-step) tiles, each for one and for eight batch rows per program.
TACTIC_POINTS = ((1, 64), (8, 64), (1, 512), (8, 512))
CONFIGS = tuple(kernel.gather_config(batch, length) for batch, length in TACTIC_POINTS)


def config_name(cfg: Mapping[str, int]) -> str:
    """A tactic's name, e.g. K16-NT4-N32."""
    return f"K{cfg['BLOCK_K']}-NT{cfg['NT']}-N{cfg['BLOCK_N']}"


def tactic_config(tactic: int) -> dict[str, int]:
    """The tile config of an autotune tactic (1-based)."""
    if not 1 <= tactic <= len(CONFIGS):
        raise ValueError(f"LongConv: tactic {tactic} is not one of 1..{len(CONFIGS)} "
                         f"({', '.join(map(config_name, CONFIGS))})")
    return dict(CONFIGS[tactic - 1])


def _filt_len(s: Sizes, alg: Algebra) -> object:
    return s.L if s.causal else s.L * 2 - 1


def _launch(s: Sizes, alg: Algebra) -> LaunchFormula:
    cfg = tactic_config(s.tactic)
    num_blocks = alg.cdiv(s.L, cfg["BLOCK_K"])
    rows_per_program = cfg["BLOCK_N"] // cfg["NT"]
    dtype = s.torch_dtype
    return LaunchFormula(
        "long_conv", "long_conv_kernel_entry",
        (s.D, alg.cdiv(num_blocks, cfg["NT"]), alg.cdiv(s.B, rows_per_program)), cfg["num_warps"], cfg["num_stages"],
        (("CAUSAL", bool(s.causal)), ("SHIFTED_COPIES", False), ("BLOCK_K", cfg["BLOCK_K"]), ("NT", cfg["NT"]),
         ("BLOCK_N", cfg["BLOCK_N"]), ("MMA", MMA_NAMES[dtype]), ("DOT_PRECISION", dot_precision(dtype))),
        (("batch", s.B), ("length", s.L), ("filt_len", s.F), ("filt_shift", 0 if s.causal else s.L - 1),
         ("stride_xb", s.L * s.D), ("stride_xd", s.L), ("stride_fd", s.F)))


def _check(s: Sizes) -> None:
    if s.causal not in (0, 1):
        raise ValueError(f"LongConv: attribute causal={s.causal}, expected 0 or 1")


def _reference(s: Sizes, t: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"out": reference.long_conv(t["x"], t["filt"], bool(s.causal))}


LONG_CONV = PluginSpec(
    name="LongConv", op="long_conv", kernel="long_conv_kernel",
    inputs=(TensorSpec("x", "x_ptr", ("B", "D", "L"), (FLOAT,)), TensorSpec("filt", "filt_ptr", ("D", "F"), (FLOAT,))),
    outputs=(OutputSpec("out", "out_ptr", ("B", "D", "L"), FLOAT),),
    attrs=("causal",), static=("D",), derived=(("F", _filt_len),), launch=_launch,
    plan=lambda s: kernel.plan(s.B, s.D, s.L, bool(s.causal), s.torch_dtype, tactic_config(s.tactic)),
    reference=_reference, tactics=tuple(config_name(c) for c in CONFIGS), check=_check)

SPECS = (LONG_CONV,)
CHAIN = Chain("long_conv", ("x", "filt"), "out", SPECS, lambda causal: {"causal": int(bool(causal))})
