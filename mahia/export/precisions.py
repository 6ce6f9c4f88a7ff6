"""The precision registry: one frozen entry per precision, with its parity budget, formats and build.

Adding a precision is adding one `Precision` (and its build function) through `register`; the CLI's
`--precision` choices are this registry's names, so it only offers precisions that are built here.
A build function receives the pipeline's fp32 products (eager model, portable fp32 ONNX, a way to
torch.export the model at a dtype) and returns this precision's graphs. A quantized precision names its
calibration recipe type (mahia.calibration.recipes), which says what its quantization is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import onnx
import torch

from mahia.calibration.recipes import (
    AutoRecipe,
    CalibrationOptions,
    Fp8Recipe,
    Int4Recipe,
    Int8Recipe,
    Recipe,
    RecipeType,
)
from mahia.export.config import TaskBudget
from mahia.export.formats import formats as registered_formats
from mahia.export.fp16 import fp16_block_list, to_float16
from mahia.model import MahiaX


@dataclass(frozen=True)
class BuildContext:
    """What a precision's build function may use; every field is produced by an earlier stage."""

    model: MahiaX  # eager fp32 model in eval mode: the parity reference
    onnx_fp32: onnx.ModelProto | None  # portable fp32 ONNX (None when no format needs it)
    export_program: Callable[[torch.dtype], torch.export.ExportedProgram]  # torch.export at a dtype
    formats: tuple[str, ...]  # the formats this run writes (a subset of the precision's)
    recipe: Recipe | None = None  # quantized precisions: the recipe of this run
    calibration: CalibrationOptions = CalibrationOptions()  # quantized precisions: calibration data and sensitivity


@dataclass(frozen=True)
class Built:
    """A precision's graphs plus notes for the manifest and report (e.g. ops kept in fp32)."""

    onnx: onnx.ModelProto | None = None
    program: torch.export.ExportedProgram | None = None
    notes: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)  # extra artifact files (calibration tables, plots)
    flavours: Mapping[str, onnx.ModelProto] = field(default_factory=dict)  # graphs of the other ONNX flavours


@dataclass(frozen=True)
class Precision:
    """One deployable precision: its parity budget against eager fp32, what it produces, how it is built."""

    name: str
    summary: str
    formats: tuple[str, ...]
    atol: float
    rtol: float
    max_rel_error: float  # budget on ||out - ref|| / ||ref|| of the logits at every shape point
    build: Callable[[BuildContext], Built]
    task_budget: TaskBudget  # accuracy drop and argmax agreement on the test split (trained models)
    recipe: RecipeType | None = None  # quantized precisions: their calibration recipe type

    def __post_init__(self) -> None:
        known = tuple(registered_formats())
        unknown = [f for f in self.formats if f not in known]
        if not self.formats or unknown:
            raise ValueError(f"precision {self.name!r}: formats must be a non-empty subset of {known}, "
                             f"got {self.formats}")

    @property
    def stage_name(self) -> str:
        """Shown in progress and manifest: "quantize" for quantized precisions, else "build"."""
        return "build" if self.recipe is None else "quantize"


def build_fp32(ctx: BuildContext) -> Built:
    """fp32: the portable ONNX as lowered, and the fp32 ExportedProgram."""
    program = ctx.export_program(torch.float32) if "pt2" in ctx.formats else None
    return Built(onnx=ctx.onnx_fp32, program=program)


def build_fp16(ctx: BuildContext) -> Built:
    """fp16 ONNX (to_float16): float16 weights and activations, fp32 inputs/outputs, blocked ops, the RMSNorms and
    the SSD scans and gated norms kept in fp32."""
    if ctx.onnx_fp32 is None:
        raise ValueError("fp16 builds ONNX only: the portable fp32 ONNX is missing")
    converted, kept_fp32 = to_float16(ctx.onnx_fp32)
    blocked = fp16_block_list()
    present = sorted({n.op_type for n in ctx.onnx_fp32.graph.node} & set(blocked))
    return Built(onnx=converted, notes={"fp32_ops": present, "converter": "onnxruntime.transformers.float16",
                                        "block_list": blocked, "fp32_nodes": len(kept_fp32)})


def build_bf16(ctx: BuildContext) -> Built:
    """bf16: the model's weights and activations in bfloat16, as a torch.export program (.pt2)."""
    return Built(program=ctx.export_program(torch.bfloat16))


def build_quantized_onnx(ctx: BuildContext) -> Built:
    """A quantized precision: calibrate the eager model on real data and quantize the portable ONNX by the run's
    recipe (mahia.calibration.build), with calibration.json, calib.cache and the sensitivity table/plot."""
    from mahia.calibration.build import build_quantized

    if ctx.recipe is None:
        raise ValueError("a quantized build needs its recipe")
    if ctx.onnx_fp32 is None:
        raise ValueError(f"{ctx.recipe.precision} builds ONNX only: the portable fp32 ONNX is missing")
    result = build_quantized(ctx.model, ctx.onnx_fp32, ctx.recipe, ctx.calibration)
    return Built(onnx=result.onnx, notes=result.notes, files=result.files)


_REGISTRY: dict[str, Precision] = {}
# The TensorRT formats every ONNX-producing precision can write (README "TensorRT"; bf16 has no ONNX build).
TRT_FORMATS = ("trt", "rtx-engine", "engine")


def register(precision: Precision) -> Precision:
    """Add a precision to the registry (names are unique)."""
    if precision.name in _REGISTRY:
        raise ValueError(f"precision {precision.name!r} is already registered")
    _REGISTRY[precision.name] = precision
    return precision


def precisions() -> Mapping[str, Precision]:
    """Every registered precision, by name, in registration order."""
    return MappingProxyType(_REGISTRY)


def get_precision(name: str) -> Precision:
    """The named precision, or a ValueError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; expected one of {', '.join(_REGISTRY)}") from None


# Task budgets (trained models, test split): the quantized ones are the goals of the calibration issue
# (fp8 0.1, int8 0.3, int4 0.7 accuracy points); float precisions get at most a single-point drop. The
# agreement floors allow the flips a drop of that size implies, doubled (flips can cancel in accuracy).
register(Precision("fp32", "float32 ONNX and ExportedProgram", ("onnx", "pt2", *TRT_FORMATS), atol=1e-5, rtol=1e-4,
                   max_rel_error=1e-5, build=build_fp32, task_budget=TaskBudget(0.05, 0.999)))
register(Precision("fp16", "float16 ONNX (fp32 I/O; ops without fp16 CPU kernels stay fp32)",
                   ("onnx", *TRT_FORMATS), atol=1e-2,
                   rtol=1e-2, max_rel_error=1e-2, build=build_fp16, task_budget=TaskBudget(0.1, 0.998)))
register(Precision("bf16", "bfloat16 ExportedProgram", ("pt2",), atol=1e-2, rtol=5e-2, max_rel_error=1e-2,
                   build=build_bf16, task_budget=TaskBudget(0.1, 0.998)))
# Quantized precisions (mahia.calibration). Parity budgets: a few times the worst relative logit error
# measured on the trained default at the parity points (benchmarks/RESULTS.md, "Calibration and quantized
# exports").
register(Precision("int8", "int8 Q/DQ ONNX (symmetric, per-channel weights, integer MatMuls on ORT CPU)",
                   ("onnx", *TRT_FORMATS), atol=0.5, rtol=0.2, max_rel_error=0.1, build=build_quantized_onnx,
                   task_budget=TaskBudget(0.3, 0.994), recipe=Int8Recipe))
register(Precision("fp8", "fp8 E4M3FN Q/DQ ONNX (emulated on ORT CPU)", ("onnx", *TRT_FORMATS), atol=0.1, rtol=0.1,
                   max_rel_error=0.03, build=build_quantized_onnx, task_budget=TaskBudget(0.1, 0.998),
                   recipe=Fp8Recipe))
register(Precision("int4", "int4 weight-only blocked ONNX (opset-21 blocked DequantizeLinear)",
                   ("onnx", *TRT_FORMATS), atol=0.2,
                   rtol=0.2, max_rel_error=0.05, build=build_quantized_onnx, task_budget=TaskBudget(0.7, 0.986),
                   recipe=Int4Recipe))
register(Precision("auto", "mixed int8/fp32 ONNX: most sensitive layers kept fp32 until --accuracy-budget",
                   ("onnx", *TRT_FORMATS), atol=0.5, rtol=0.2, max_rel_error=0.1, build=build_quantized_onnx,
                   task_budget=TaskBudget(0.3, 0.994), recipe=AutoRecipe))
