"""Quantized builds of the portable ONNX graph: calibrate on real data, quantize, measure, and return
the graph with every file that documents it (calibration.json, calib.cache, sensitivity table + plot).

This is what the export pipeline's int8 / fp8 / int4 / auto precisions call; it knows nothing of the
pipeline itself: (eager model, fp32 ONNX, recipe, options) -> QuantizedBuild, one handler per recipe type.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from mahia.calibration.awq import awq_scales
from mahia.calibration.data import CalibrationData, CalibrationDataConfig, load_calibration_data
from mahia.calibration.onnx_names import parameter_index, quantizable_nodes
from mahia.calibration.quantize import QuantizeOptions, int4_nodes, quantize_int4, quantize_qdq, restore_float
from mahia.calibration.ranges import collect_ranges
from mahia.calibration.recipes import AutoRecipe, CalibrationOptions, Fp8Recipe, Int4Recipe, Int8Recipe, Recipe
from mahia.calibration.sensitivity import (
    LayerSensitivity,
    MixedPlan,
    OutputError,
    layer_sensitivity,
    output_error,
    plan_mixed,
    run_onnx,
    sensitivity_json,
    sensitivity_markdown,
    sensitivity_plot,
)
from mahia.calibration.table import CalibrationTable, build_table, trt_cache_scales, write_table_json, write_trt_cache
from mahia.model import MahiaX

CALIBRATION_JSON, CALIBRATION_CACHE = "calibration.json", "calib.cache"
SENSITIVITY_JSON, SENSITIVITY_MD, SENSITIVITY_PNG = "sensitivity.json", "sensitivity.md", "sensitivity.png"


@dataclass(frozen=True)
class QuantizedBuild:
    """The quantized graph, the files that go beside it, and notes for the manifest."""

    onnx: onnx.ModelProto
    files: dict[str, bytes] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    table: CalibrationTable | None = None


def _eager_reference(model: MahiaX, data: CalibrationData, samples: int,
                     max_len: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Feeds of the first `samples` calibration rows (text cut to max_len tokens) and eager fp32 logits."""
    feeds, outputs, taken = [], [], 0
    with torch.inference_mode():
        for batch in data.batches:
            if taken >= samples:
                break
            rows = min(samples - taken, batch["input_ids"].shape[0])
            cut = {k: (v[:rows, :max_len] if k in ("input_ids", "attention_mask") else v[:rows]).contiguous()
                   for k, v in batch.items()}
            feeds.append({k: v.numpy() for k, v in cut.items()})
            outputs.append(model(**cut).float().numpy())
            taken += rows
    return feeds, np.concatenate(outputs)


def build_quantized(model: MahiaX, onnx_fp32: onnx.ModelProto, recipe: Recipe,
                    options: CalibrationOptions = CalibrationOptions(),
                    data: CalibrationData | None = None) -> QuantizedBuild:
    """Calibrate `model` on real data and quantize `onnx_fp32` by `recipe` (int8, fp8, int4 or auto)."""
    try:
        handler = _HANDLERS[type(recipe)]
    except KeyError:
        raise TypeError(f"no quantization handler for {type(recipe).__name__}") from None
    started = time.perf_counter()
    if data is None:
        data = load_calibration_data(model.config,
                                     CalibrationDataConfig(options.samples, batch_size=options.batch_size))
    feeds, reference = _eager_reference(model, data, options.sensitivity_samples, options.sensitivity_max_len)
    with tempfile.TemporaryDirectory(prefix="mahia-quantize-") as tmp:
        fp32_path = Path(tmp) / "model.fp32.onnx"
        onnx.save(onnx_fp32, str(fp32_path))
        float_error = output_error(run_onnx(fp32_path, feeds), reference)
        return handler(_Job(model, onnx_fp32, fp32_path, Path(tmp), options, parameter_index(model), feeds, reference,
                            data, started, float_error), recipe)


@dataclass(frozen=True)
class _Job:
    """What every handler starts from: the models, the calibration data and the eager reference on it."""

    model: MahiaX
    onnx_fp32: onnx.ModelProto
    fp32_path: Path
    tmp: Path
    options: CalibrationOptions
    params: dict
    feeds: list
    reference: np.ndarray
    data: CalibrationData
    started: float
    float_error: OutputError


def _build_qdq(job: _Job, recipe: Int8Recipe | Fp8Recipe | AutoRecipe) -> QuantizedBuild:
    """Q/DQ on activations and weights (int8 or fp8); auto keeps the most sensitive layers fp32."""
    qdq = recipe.base if isinstance(recipe, AutoRecipe) else recipe
    method = qdq.range_method()
    ranges = collect_ranges(job.model, job.data, (method.method,), num_bins=qdq.num_bins)
    nodes = quantizable_nodes(job.onnx_fp32, ranges.names(), job.params)
    table = build_table(ranges, nodes, method)
    files = {CALIBRATION_JSON: _table_bytes(table, job.tmp), CALIBRATION_CACHE: _cache_bytes(table, job.tmp)}

    full_path = quantize_qdq(job.fp32_path, table, job.tmp / "model.full.onnx", QuantizeOptions(qdq.precision))
    full = onnx.load(str(full_path))
    nodes_of = {layer: {n for n, l in table.nodes.items() if l == layer} for layer in set(table.nodes.values())}

    def quantize(keep: frozenset[str], out: Path) -> Path:
        kept = set().union(*(nodes_of[layer] for layer in keep)) if keep else set()
        onnx.save(restore_float(full, job.onnx_fp32, kept) if kept else full, str(out))
        return out

    layers = sorted(set(table.nodes.values()))
    mixed = isinstance(recipe, AutoRecipe)
    rows = layer_sensitivity(layers, qdq.precision, quantize, job.feeds, job.reference) \
        if job.options.sensitivity or mixed else []
    plan = None
    if mixed:
        plan, path = plan_mixed(rows, qdq.precision, quantize, job.feeds, job.reference, recipe.budget, job.float_error,
                                job.tmp)
    else:
        path = quantize(frozenset(), job.tmp / f"model.{recipe.precision}.onnx")
    quantized = onnx.load(str(path))
    error = output_error(run_onnx(path, job.feeds), job.reference)
    files.update(_sensitivity_files(rows, plan, f"{job.model.config.name} {recipe.precision}: per-layer sensitivity"))
    notes = _notes(job, recipe, error, table=table, plan=plan,
                   quantized_layers=[l for l in layers if not plan or plan.precisions[l] != "fp32"])
    return QuantizedBuild(quantized, files, notes, table)


def _build_int4(job: _Job, recipe: Int4Recipe) -> QuantizedBuild:
    """Weight-only blocked int4 of the 2-D MatMul weights, AWQ scales first if the recipe says so."""
    model_proto = onnx.load(str(job.fp32_path))
    nodes = int4_nodes(model_proto, job.params)
    layers = sorted({n.layer for n in nodes})
    awq = awq_scales(model_proto, nodes, job.data.numpy_batches(), recipe.block_size) if recipe.awq else []

    def quantize(keep: frozenset[str], out: Path) -> Path:
        return quantize_int4(job.fp32_path, out, recipe.block_size, job.params, keep_float_layers=keep, awq=awq)

    rows = layer_sensitivity(layers, "int4", quantize, job.feeds, job.reference) if job.options.sensitivity else []
    path = quantize(frozenset(), job.tmp / "model.int4.onnx")
    error = output_error(run_onnx(path, job.feeds), job.reference)
    files = _sensitivity_files(rows, None, f"{job.model.config.name} int4 (block {recipe.block_size}): per-layer "
                                           "sensitivity")
    notes = _notes(job, recipe, error, quantized_layers=layers)
    notes["int4"] = {"block_size": recipe.block_size, "format": "blocked DequantizeLinear (opset 21), weight-only",
                     "tool": "onnxruntime MatMulNBitsQuantizer (QDQ)",
                     "kept_float": "sensitive layers (routers, gates, filters, head)"}
    if awq:
        notes["int4"]["awq"] = {
            "matmuls": len(awq), "mean_layer_error_rounding": float(np.mean([a.error_rounding for a in awq])),
            "mean_layer_error_awq": float(np.mean([a.error_awq for a in awq])),
            "alpha": {a.node: a.alpha for a in sorted(awq, key=lambda a: a.node)}}
    return QuantizedBuild(onnx.load(str(path)), files, notes)


# One handler per recipe type (torchao's pattern of a handler per config type).
_HANDLERS: dict[type, Callable[[_Job, Any], QuantizedBuild]] = {
    Int8Recipe: _build_qdq, Fp8Recipe: _build_qdq, AutoRecipe: _build_qdq, Int4Recipe: _build_int4}


def _table_bytes(table: CalibrationTable, tmp: Path) -> bytes:
    return write_table_json(table, tmp / CALIBRATION_JSON).read_bytes()


def _cache_bytes(table: CalibrationTable, tmp: Path) -> bytes:
    return write_trt_cache(trt_cache_scales(table), tmp / CALIBRATION_CACHE).read_bytes()


def _sensitivity_files(rows: list[LayerSensitivity], plan: MixedPlan | None, title: str) -> dict[str, bytes]:
    if not rows:
        return {}
    return {SENSITIVITY_JSON: (json.dumps(sensitivity_json(rows, plan), indent=1) + "\n").encode(),
            SENSITIVITY_MD: sensitivity_markdown(rows, plan).encode(),
            SENSITIVITY_PNG: sensitivity_plot(rows, title, plan)}


def _notes(job: _Job, recipe: Recipe, error: OutputError, table: CalibrationTable | None = None,
           plan: MixedPlan | None = None, quantized_layers: list[str] | None = None) -> dict:
    range_method = recipe.base if isinstance(recipe, AutoRecipe) else recipe
    data = job.data
    notes = {
        "calibration": {"samples": data.samples, "split": data.split, "data_hash": data.content_hash,
                        "method": recipe.calib_method,
                        "percentile": range_method.percentile
                        if isinstance(range_method, (Int8Recipe, Fp8Recipe)) and range_method.method == "percentile"
                        else None,
                        "tensors": len(table.tensors) if table else 0},
        "quantized_layers": quantized_layers or [],
        "calibration_set_error": {"samples": min(job.options.sensitivity_samples, data.samples), **asdict(error),
                                  "fp32_onnx": asdict(job.float_error)},
        "libraries": {"ranges": "eager hooks + onnxruntime HistogramCollector (percentile, entropy); max and MSE here",
                      "qdq": "onnxruntime.quantization.quantize_static (QDQ) with per-tensor scale overrides",
                      "int4": "onnxruntime MatMulNBitsQuantizer (QDQ format); AWQ scale and clip search here"},
        "seconds": round(time.perf_counter() - job.started, 2),
    }
    if plan is not None:
        notes["mixed"] = {"budget": plan.budget, "precisions": plan.precisions, "steps": [list(s) for s in plan.steps]}
    return notes
