"""Activation-aware int4 weight scaling (AWQ-style): a per-input-channel scale search before blocked rounding.

AWQ (Lin et al., 2023) protects the weight rows that meet large activations: W' = diag(s) W with
s = mean|x|^alpha per input channel, the activation divided by s at run time, and alpha chosen per layer
to minimise the layer's output error ||x W - (x / s) Q(s W)|| on calibration activations (alpha = 0 is
plain rounding, so the search never picks worse than it on that objective); then, as AWQ's clip search,
each block and column of W' is clipped where that lowers its share of the output error. ONNX Runtime's
weight quantizers offer round-to-nearest, GPTQ and HQQ; NVIDIA ModelOpt's ONNX AWQ (awq_clip) did worse
than this on MAHIA-X and its awq_lite fails without cupy (benchmarks/RESULTS.md), so it is written here:
the activations come from ONNX Runtime (the MatMul inputs added as graph outputs, as its calibrators
do), the search is numpy, the graph edit scales the weight initializer and puts a Mul by 1/s in front of
the MatMul; ONNX Runtime's MatMulNBitsQuantizer then rounds the scaled weights as it does for plain int4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mahia.calibration.data import CalibrationError
from mahia.calibration.onnx_names import QuantizableNode

ALPHA_GRID = tuple(i / 20 for i in range(21))
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
MAX_ROWS = 2048  # activation rows per MatMul the error is measured on (the first ones seen)


@dataclass(frozen=True)
class ActivationSample:
    """Per-input-channel mean |x| over every calibration row, and the first rows themselves."""

    mean_abs: np.ndarray  # [K]
    rows: np.ndarray  # [R, K]


@dataclass(frozen=True)
class AwqScale:
    """The scale chosen for one MatMul's weight and the layer errors that chose it."""

    node: str
    alpha: float
    scales: np.ndarray  # [K]: the weight's rows are multiplied by it, the activation divided
    weight: np.ndarray  # [K, N]: the weight times s, clipped per block: what the int4 rounding gets
    error_rounding: float  # relative output error of plain blocked rounding (alpha = 0, no clip)
    error_awq: float  # ... with the chosen scale and clip


def blocked_int4(weight: np.ndarray, block_size: int) -> np.ndarray:
    """Symmetric blocked int4 round trip of a [K, N] MatMul weight along K, as ONNX Runtime's MatMulNBits does it.

    Per block of `block_size` rows and column, the entry of largest magnitude v maps to -8: scale = v / -8,
    q = clip(round(w / scale), -8, 7) (measured on ONNX Runtime 1.32's QDQ output). K is zero-padded to a
    whole number of blocks.
    """
    rows, cols = weight.shape
    padded = np.zeros((-(-rows // block_size) * block_size, cols), np.float64)
    padded[:rows] = weight
    blocks = padded.reshape(-1, block_size, cols)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None, :], axis=1)
    scale = peak / -8.0
    safe = np.where(scale == 0, 1.0, scale)
    quantized = np.clip(np.round(blocks / safe), -8, 7) * scale
    return quantized.reshape(-1, cols)[:rows]


def clip_weight(weight: np.ndarray, rows: np.ndarray, block_size: int,
                ratios: Sequence[float] = CLIP_RATIOS) -> np.ndarray:
    """Per block and column, clip the weight to ratio x its largest magnitude where that lowers the block's
    output error.

    The block's error is ||x_block (w - Q(clip(w)))|| over the sample rows: clipping trades the rounding
    of the block's other entries against the clipped outliers (AWQ's clip search); ratio 1 is no clip.
    """
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float64)
    padded[:k] = weight
    x = np.zeros((len(rows), blocks * block_size), np.float64)
    x[:, :k] = rows
    peak = np.abs(padded.reshape(blocks, block_size, n)).max(axis=1)  # [blocks, n]
    best_error = np.full((blocks, n), np.inf)
    best_ratio = np.ones((blocks, n))
    for ratio in ratios:
        limit = np.repeat(peak * ratio, block_size, axis=0)
        clipped = np.clip(padded, -limit, limit)
        residual = padded - blocked_int4(clipped, block_size)
        error = np.stack([np.linalg.norm(x[:, b * block_size:(b + 1) * block_size]
                                         @ residual[b * block_size:(b + 1) * block_size], axis=0)
                          for b in range(blocks)])
        better = error < best_error
        best_error[better], best_ratio[better] = error[better], ratio
    limit = np.repeat(peak * best_ratio, block_size, axis=0)
    return np.clip(padded, -limit, limit)[:k]


def search_scale(node: str, sample: ActivationSample, weight: np.ndarray, block_size: int,
                 grid: Sequence[float] = ALPHA_GRID) -> AwqScale:
    """AWQ for one [K, N] weight: the alpha in `grid` whose s = mean|x|^alpha rounds best, then the clip search."""
    x = sample.rows.astype(np.float64)
    w = weight.astype(np.float64)
    want = x @ w
    norm = max(float(np.linalg.norm(want)), 1e-30)
    magnitude = np.maximum(sample.mean_abs.astype(np.float64), 1e-8)
    errors, candidates = {}, {}
    for alpha in grid:
        scales = magnitude ** alpha
        scales /= np.sqrt(scales.max() * scales.min())  # centred on 1: the rounding grid sees no overall shift
        errors[alpha] = float(np.linalg.norm((x / scales) @ blocked_int4(w * scales[:, None], block_size)
                                             - want)) / norm
        candidates[alpha] = scales
    alpha = min(errors, key=errors.get)
    scales = candidates[alpha]
    clipped = clip_weight(w * scales[:, None], x / scales, block_size)
    error = float(np.linalg.norm((x / scales) @ blocked_int4(clipped, block_size) - want)) / norm
    return AwqScale(node, alpha, scales.astype(np.float32), clipped.astype(np.float32),
                    errors.get(0.0, float("nan")), error)


def collect_activations(model: onnx.ModelProto, activations: Sequence[str], feeds: Sequence[dict[str, np.ndarray]],
                        max_rows: int = MAX_ROWS) -> dict[str, ActivationSample]:
    """Run the float graph with the named tensors as extra outputs; per tensor, mean |x| per channel and rows."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(a) for a in activations if a not in existing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    rows: dict[str, list[np.ndarray]] = {a: [] for a in activations}
    for feed in feeds:
        for name, value in zip(activations, session.run(list(activations), feed)):
            flat = np.asarray(value, np.float32).reshape(-1, value.shape[-1])
            if not len(flat):
                continue  # an expert no token of this batch was routed to
            sums[name] = sums.get(name, 0) + np.abs(flat).sum(axis=0, dtype=np.float64)
            counts[name] = counts.get(name, 0) + len(flat)
            kept = sum(len(r) for r in rows[name])
            if kept < max_rows:
                rows[name].append(flat[: max_rows - kept])
    unseen = [a for a in activations if a not in counts]
    if unseen:
        raise CalibrationError(f"AWQ: no calibration row reached {', '.join(unseen)} (more --calib-samples?)")
    return {a: ActivationSample(sums[a] / counts[a], np.concatenate(rows[a])) for a in activations}


def apply_scales(model: onnx.ModelProto, scales: Sequence[AwqScale]) -> onnx.ModelProto:
    """A copy of `model` with each MatMul's weight replaced by its scaled, clipped one and a Mul by 1/s in front."""
    scaled = onnx.ModelProto()
    scaled.CopyFrom(model)
    initializers = {i.name: i for i in scaled.graph.initializer}
    by_node = {s.node: s for s in scales}
    nodes = []
    for node in scaled.graph.node:
        choice = by_node.get(node.name)
        if choice is not None:
            if node.op_type != "MatMul":
                raise CalibrationError(f"AWQ scales a MatMul's weight; {node.name} is a {node.op_type}")
            weight = initializers[node.input[1]]
            if tuple(weight.dims) != choice.weight.shape:
                raise CalibrationError(f"AWQ weight for {node.name} has shape {choice.weight.shape}, "
                                       f"the graph's {weight.name} {tuple(weight.dims)} (scales from another model?)")
            weight.CopyFrom(numpy_helper.from_array(choice.weight, weight.name))
            inverse = f"{node.name}.awq_inverse_scale"
            scaled.graph.initializer.append(numpy_helper.from_array((1.0 / choice.scales).astype(np.float32), inverse))
            divided = f"{node.name}.awq_input"
            nodes.append(helper.make_node("Mul", [node.input[0], inverse], [divided], name=f"{node.name}.awq"))
            node.input[0] = divided
        nodes.append(node)
    del scaled.graph.node[:]
    scaled.graph.node.extend(nodes)
    return scaled


def awq_scales(model: onnx.ModelProto, nodes: Sequence[QuantizableNode], feeds: Sequence[dict[str, np.ndarray]],
               block_size: int) -> list[AwqScale]:
    """The searched scale of each MatMul node's weight on the calibration feeds run through the float graph."""
    samples = collect_activations(model, sorted({n.activation for n in nodes}), feeds)
    initializers = {i.name: i for i in model.graph.initializer}
    return [search_scale(n.node, samples[n.activation], numpy_helper.to_array(initializers[n.weight]), block_size)
            for n in nodes]
