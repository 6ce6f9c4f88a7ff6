"""Quantized builds of the portable ONNX graph: calibrate on real data, quantize, measure, and return
the graph with every file that documents it (calibration.json, calib.cache, sensitivity table + plot).

This is what the export pipeline's int8 / fp8 / int4 / auto precisions call; it knows nothing of the
pipeline itself: (eager model, fp32 ONNX, precision, options) -> QuantizedBuild.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from mahia.calibration.awq import awq_scales
from mahia.calibration.data import (MIN_CALIBRATION_SAMPLES, CalibrationData, CalibrationDataConfig, CalibrationError,
                                    load_calibration_data)
from mahia.calibration.onnx_names import parameter_index, quantizable_nodes
from mahia.calibration.quantize import QuantizeOptions, int4_nodes, quantize_int4, quantize_qdq, restore_float
from mahia.calibration.ranges import collect_ranges
from mahia.calibration.sensitivity import (LayerSensitivity, MixedPlan, OutputError, layer_sensitivity, output_error,
                                           plan_mixed, run_onnx, sensitivity_json, sensitivity_markdown,
                                           sensitivity_plot)
from mahia.calibration.statistics import MethodConfig
from mahia.calibration.table import (CalibrationTable, build_table, trt_cache_scales, write_table_json,
                                     write_trt_cache)
from mahia.model import MahiaX

QUANTIZED_PRECISIONS = ("int8", "fp8", "int4", "auto")
# Default calibration method per precision, chosen by measurement (benchmarks/quantize.py, RESULTS.md).
DEFAULT_METHOD = {"int8": "mse", "fp8": "mse", "auto": "mse", "int4": "rtn"}
# int4 is weight-only: round to nearest (ONNX Runtime's blocked rounding) or AWQ scales and clips first.
INT4_METHODS = ("rtn", "awq")
# auto: int8 Q/DQ everywhere it fits the budget; layers that do not are kept fp32. Default budget: relative
# logit error on the calibration samples (half the int8 parity budget).
AUTO_BASE_PRECISION = "int8"
AUTO_DEFAULT_BUDGET = 0.05
CALIBRATION_JSON, CALIBRATION_CACHE = "calibration.json", "calib.cache"
SENSITIVITY_JSON, SENSITIVITY_MD, SENSITIVITY_PNG = "sensitivity.json", "sensitivity.md", "sensitivity.png"


@dataclass(frozen=True)
class CalibrationOptions:
    """The user's calibration and quantization settings (`--calib-samples`, `--calib-method`, `--accuracy-budget`)."""

    samples: int = 512
    method: str | None = None  # None: the precision's default (DEFAULT_METHOD)
    percentile: float = 99.99
    num_bins: int = 2048
    batch_size: int = 32
    int4_block_size: int = 128
    accuracy_budget: float | None = None  # auto: max relative logit error on the calibration samples
    sensitivity_samples: int = 32  # calibration samples the per-layer errors are measured on ...
    sensitivity_max_len: int = 128  # ... truncated to this many text tokens (each layer costs one ORT pass)
    sensitivity: bool = True  # measure and plot per-layer sensitivity (auto always does)

    def method_for(self, precision: str) -> MethodConfig:
        """The method config for a precision, validated (an unknown method names the valid ones)."""
        grid = "fp8" if precision == "fp8" else "int8"
        method = self.method or DEFAULT_METHOD.get(precision, "max")
        return MethodConfig(method, self.percentile, self.num_bins, grid=grid)

    def check(self, precision: str) -> None:
        """Raise CalibrationError for settings that do not fit `precision`."""
        if precision not in QUANTIZED_PRECISIONS:
            raise CalibrationError(f"unknown quantized precision {precision!r}; expected one of {QUANTIZED_PRECISIONS}")
        if self.samples < MIN_CALIBRATION_SAMPLES:
            raise CalibrationError(f"too few calibration samples: {self.samples}; at least {MIN_CALIBRATION_SAMPLES} "
                                   "are needed for stable ranges (default 512)")
        if precision == "int4":
            if self.method not in (None, *INT4_METHODS):
                raise CalibrationError(f"int4 is weight-only: its methods are {' and '.join(INT4_METHODS)}, not the "
                                       f"activation range method {self.method!r}")
        else:
            self.method_for(precision)
        if precision != "auto" and self.accuracy_budget is not None:
            raise CalibrationError("--accuracy-budget applies to --precision auto only")


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


def build_quantized(model: MahiaX, onnx_fp32: onnx.ModelProto, precision: str,
                    options: CalibrationOptions = CalibrationOptions(), data: CalibrationData | None = None) -> QuantizedBuild:
    """Calibrate `model` on real data and quantize `onnx_fp32` to `precision` (int8, fp8, int4 or auto)."""
    options.check(precision)
    started = time.perf_counter()
    if data is None:
        data = load_calibration_data(model.config, CalibrationDataConfig(options.samples, batch_size=options.batch_size))
    params = parameter_index(model)
    feeds, reference = _eager_reference(model, data, options.sensitivity_samples, options.sensitivity_max_len)
    with tempfile.TemporaryDirectory(prefix="mahia-quantize-") as tmp:
        fp32_path = Path(tmp) / "model.fp32.onnx"
        onnx.save(onnx_fp32, str(fp32_path))
        float_error = output_error(run_onnx(fp32_path, feeds), reference)
        if precision == "int4":
            return _build_int4(model, fp32_path, Path(tmp), options, params, feeds, reference, data, started, float_error)
        qdq_precision = AUTO_BASE_PRECISION if precision == "auto" else precision
        method = options.method_for(qdq_precision if precision != "auto" else "auto")
        ranges = collect_ranges(model, data, (method.method,), num_bins=options.num_bins)
        nodes = quantizable_nodes(onnx_fp32, ranges.names(), params)
        table = build_table(ranges, nodes, method)
        files = {CALIBRATION_JSON: _table_bytes(table, Path(tmp)), CALIBRATION_CACHE: _cache_bytes(table, Path(tmp))}

        full = onnx.load(str(quantize_qdq(fp32_path, table, Path(tmp) / "model.full.onnx", QuantizeOptions(qdq_precision))))
        nodes_of = {layer: {n for n, l in table.nodes.items() if l == layer} for layer in set(table.nodes.values())}

        def quantize(keep: frozenset[str], out: Path) -> Path:
            kept = set().union(*(nodes_of[layer] for layer in keep)) if keep else set()
            onnx.save(restore_float(full, onnx_fp32, kept) if kept else full, str(out))
            return out

        layers = sorted(set(table.nodes.values()))
        rows = layer_sensitivity(layers, qdq_precision, quantize, feeds, reference) \
            if options.sensitivity or precision == "auto" else []
        plan = None
        if precision == "auto":
            budget = options.accuracy_budget if options.accuracy_budget is not None else AUTO_DEFAULT_BUDGET
            plan, path = plan_mixed(rows, qdq_precision, quantize, feeds, reference, budget, float_error, Path(tmp))
        else:
            path = quantize(frozenset(), Path(tmp) / f"model.{precision}.onnx")
        quantized = onnx.load(str(path))
        error = output_error(run_onnx(path, feeds), reference)
        files.update(_sensitivity_files(rows, plan, f"{model.config.name} {precision}: per-layer sensitivity"))
        notes = _notes(precision, data, options, error, float_error, started, method=method, table=table, plan=plan,
                       quantized_layers=[l for l in layers if not plan or plan.precisions[l] != "fp32"])
        return QuantizedBuild(quantized, files, notes, table)


def _build_int4(model: MahiaX, fp32_path: Path, tmp: Path, options: CalibrationOptions, params: dict, feeds: list,
                reference: np.ndarray, data: CalibrationData, started: float, float_error: OutputError) -> QuantizedBuild:
    model_proto = onnx.load(str(fp32_path))
    nodes = int4_nodes(model_proto, params)
    layers = sorted({n.layer for n in nodes})
    method = options.method or DEFAULT_METHOD["int4"]
    awq = awq_scales(model_proto, nodes, data.numpy_batches(), options.int4_block_size) if method == "awq" else []

    def quantize(keep: frozenset[str], out: Path) -> Path:
        return quantize_int4(fp32_path, out, options.int4_block_size, params, keep_float_layers=keep, awq=awq)

    rows = layer_sensitivity(layers, "int4", quantize, feeds, reference) if options.sensitivity else []
    path = quantize(frozenset(), tmp / "model.int4.onnx")
    error = output_error(run_onnx(path, feeds), reference)
    files = _sensitivity_files(rows, None, f"{model.config.name} int4 (block {options.int4_block_size}): per-layer sensitivity")
    notes = _notes("int4", data, options, error, float_error, started, method=method, quantized_layers=layers)
    notes["int4"] = {"block_size": options.int4_block_size, "format": "blocked DequantizeLinear (opset 21), weight-only",
                     "tool": "onnxruntime MatMulNBitsQuantizer (QDQ)", "kept_float": "sensitive layers (routers, gates, filters, head)"}
    if awq:
        notes["int4"]["awq"] = {
            "matmuls": len(awq), "mean_layer_error_rounding": float(np.mean([a.error_rounding for a in awq])),
            "mean_layer_error_awq": float(np.mean([a.error_awq for a in awq])),
            "alpha": {a.node: a.alpha for a in sorted(awq, key=lambda a: a.node)}}
    return QuantizedBuild(onnx.load(str(path)), files, notes)


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


def _notes(precision: str, data: CalibrationData, options: CalibrationOptions, error: OutputError,
           float_error: OutputError, started: float, method: MethodConfig | str,
           table: CalibrationTable | None = None, plan: MixedPlan | None = None,
           quantized_layers: list[str] | None = None) -> dict:
    notes = {
        "calibration": {"samples": data.samples, "split": data.split, "data_hash": data.content_hash,
                        "method": method.method if isinstance(method, MethodConfig) else method,
                        "percentile": method.percentile if isinstance(method, MethodConfig) and method.method == "percentile"
                        else None,
                        "tensors": len(table.tensors) if table else 0},
        "quantized_layers": quantized_layers or [],
        "calibration_set_error": {"samples": min(options.sensitivity_samples, data.samples), **asdict(error),
                                  "fp32_onnx": asdict(float_error)},
        "libraries": {"ranges": "eager hooks + onnxruntime HistogramCollector (percentile, entropy); max and MSE here",
                      "qdq": "onnxruntime.quantization.quantize_static (QDQ) with per-tensor scale overrides",
                      "int4": "onnxruntime MatMulNBitsQuantizer (QDQ format); AWQ scale and clip search here"},
        "seconds": round(time.perf_counter() - started, 2),
    }
    if plan is not None:
        notes["mixed"] = {"budget": plan.budget, "precisions": plan.precisions, "steps": [list(s) for s in plan.steps]}
    return notes
