"""Q/DQ quantization of an ONNX graph from a calibration table: int8, fp8 (E4M3FN) and int4 weight-only.

ONNX Runtime's quantization tools do the graph work (its QDQ quantizer for int8/fp8, its
MatMulNBits quantizer in QDQ format for int4); the activation scales come from our calibration
table through the quantizer's per-tensor overrides, so the Q/DQ graph and calib.cache carry the same
numbers. Written here: the choice of nodes, fp8 weight scales (amax / 448 per output channel), and
the post-pass that gives each consumer of a quantized activation its own Q/DQ pair.

Known ONNX Runtime 1.32 behaviour (measured): its optimizer removes a Relu in front of a float8
QuantizeLinear, which changes results; MAHIA-X has no Relu, and parity would catch it.

Every function maps (onnx path, table, options) -> quantized onnx path and works on any ONNX file
whose MatMul/Gemm nodes have initializer weights.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from mahia.calibration.awq import AwqScale, apply_scales
from mahia.calibration.data import CalibrationError
from mahia.calibration.onnx_names import KEEP_FLOAT_PATTERN, QuantizableNode, quantizable_nodes
from mahia.calibration.statistics import FP8_E4M3_MAX
from mahia.calibration.table import CalibrationTable

QDQ_DTYPES = {"int8": "int8", "fp8": "float8e4m3fn"}
INT4_BLOCK_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantizeOptions:
    """What to quantize and how."""

    precision: str = "int8"  # "int8" or "fp8" (Q/DQ on activations and weights)
    per_channel: bool = True
    keep_float_layers: frozenset[str] = field(default_factory=frozenset)  # extra layers left in float (mixed precision)
    dedicated_qdq_pairs: bool = True
    # int8 weights in 7 bits ([-64, 63]). ONNX Runtime's x86 integer GEMM without VNNI (AVX2, AVX-512F) multiplies
    # u8 activations by s8 weights in pairs summed into int16, which saturates for full-range weights: on an AVX2
    # CPU the fused int8 graph of tests/calibration/test_quantize.py had rel. L2 error 0.070 against 0.014 for the
    # same Q/DQ graph unfused (ORT_ENABLE_BASIC); ORT's documented remedy is reduce_range.
    reduce_range: bool = True

    def __post_init__(self) -> None:
        if self.precision not in QDQ_DTYPES:
            raise CalibrationError(f"Q/DQ precision must be one of {', '.join(QDQ_DTYPES)}, got {self.precision!r}")


def select_nodes(model: onnx.ModelProto, table: CalibrationTable, options: QuantizeOptions) -> list[QuantizableNode]:
    """The table's nodes, less the layers the options keep in float; names nodes the graph lacks."""
    candidates = {n.node: n for n in quantizable_nodes(model, keep_float_pattern=r"$^")}
    missing = sorted(set(table.nodes) - set(candidates))
    if missing:
        raise CalibrationError(f"calibration table names {len(missing)} MatMul/Gemm node(s) this graph lacks "
                               f"(a table from another model?): {', '.join(missing)}")
    return [dataclasses.replace(candidates[name], layer=layer) for name, layer in table.nodes.items()
            if layer not in options.keep_float_layers]


def _weight_axis(model: onnx.ModelProto, node: QuantizableNode) -> int:
    """The output-channel axis of a node's weight (last axis for MatMul, Gemm's per transB)."""
    weight = next(i for i in model.graph.initializer if i.name == node.weight)
    if node.op_type == "Gemm":
        onnx_node = next(n for n in model.graph.node if n.name == node.node)
        trans_b = next((a.i for a in onnx_node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return len(weight.dims) - 1


def _weight_rank(model: onnx.ModelProto, node: QuantizableNode) -> int:
    return next(len(i.dims) for i in model.graph.initializer if i.name == node.weight)


def _fp8_weight_overrides(model: onnx.ModelProto, node: QuantizableNode, axis: int) -> list[dict]:
    """Per-output-channel fp8 scales amax / 448 (ONNX Runtime's own fp8 weight scales come from the std)."""
    from onnxruntime.quantization import QuantType

    weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == node.weight)).astype(np.float64)
    reduce_axes = tuple(a for a in range(weight.ndim) if a != axis % weight.ndim)
    amax = np.abs(weight).max(axis=reduce_axes)
    scales = np.maximum(amax, 1e-12) / FP8_E4M3_MAX
    return [{"quant_type": QuantType.QFLOAT8E4M3FN, "axis": axis, "scale": np.array(s, dtype=np.float32),
             "zero_point": np.zeros((), dtype=onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.FLOAT8E4M3FN))}
            for s in scales]


def quantize_qdq(onnx_path: str | Path, table: CalibrationTable, out_path: str | Path,
                 options: QuantizeOptions = QuantizeOptions()) -> Path:
    """Insert Q/DQ (int8 or fp8) on the selected MatMul/Gemm nodes with activation scales from `table`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    model = onnx.load(str(onnx_path))
    nodes = select_nodes(model, table, options)
    if not nodes:
        raise CalibrationError(f"{onnx_path}: every node of the table is kept in float: nothing to quantize")
    expected = QDQ_DTYPES[options.precision]
    if table.dtype != expected:
        raise CalibrationError(f"calibration table is for {table.dtype}, but {options.precision} needs "
                               f"{expected} scales")
    table.check_covers(sorted({n.activation for n in nodes}))

    qtype = QuantType.QInt8 if options.precision == "int8" else QuantType.QFLOAT8E4M3FN
    zero = np.zeros((), dtype=np.int8) if options.precision == "int8" else \
        np.zeros((), dtype=onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.FLOAT8E4M3FN))
    overrides: dict[str, list[dict]] = {}
    ranges = {}
    for node in nodes:
        entry = table.tensors[node.activation]
        overrides[node.activation] = [{"quant_type": qtype, "scale": np.array(entry.scale, dtype=np.float32),
                                       "zero_point": zero}]
        ranges[node.activation] = TensorData(lowest=np.float32(-entry.amax), highest=np.float32(entry.amax))
        axis = _weight_axis(model, node)
        if options.precision == "fp8":
            overrides[node.weight] = _fp8_weight_overrides(model, node, axis)
        elif options.per_channel and _weight_rank(model, node) == 2:
            overrides[node.weight] = [{"quant_type": qtype, "axis": axis, "symmetric": True}]
        else:
            # ORT's integer MatMul takes only a scalar scale for a 3-D (batched, per-expert) B: per-tensor.
            overrides[node.weight] = [{"quant_type": qtype, "symmetric": True}]

    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
             "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"], "TensorQuantOverrides": overrides}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mahia-qdq-") as tmp:
        cache = Path(tmp) / "ranges.json"
        # ORT accepts float8 only from its "Distribution" calibration; our overrides fix every scale anyway.
        method = CalibrationMethod.MinMax if options.precision == "int8" else CalibrationMethod.Distribution
        save_tensors_data(TensorsData(method, ranges), cache)
        logging.disable(logging.WARNING)  # ORT's quantizer warns on every call that no pre-processing ran
        try:
            quantize_static(str(onnx_path), str(out_path), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul", "Gemm"], per_channel=options.per_channel,
                            activation_type=qtype, weight_type=qtype, nodes_to_quantize=[n.node for n in nodes],
                            calibrate_method=method, calibration_cache_path=cache, extra_options=extra,
                            reduce_range=options.reduce_range and options.precision == "int8")
        finally:
            logging.disable(logging.NOTSET)
    quantized = onnx.load(str(out_path))
    if options.dedicated_qdq_pairs:
        dedicate_qdq_pairs(quantized, {n.node for n in nodes})
    onnx.save(quantized, str(out_path))
    return out_path


def dedicate_qdq_pairs(model: onnx.ModelProto, quantized_nodes: set[str] | None = None) -> int:
    """Give every consumer of a quantized activation its own QuantizeLinear -> DequantizeLinear pair.

    With `quantized_nodes`, consumers outside that set (layers kept in float, which ORT's quantizer
    also hands the dequantized tensor) read the original float tensor instead.

    ONNX Runtime's CPU graph transformer fuses DQ -> MatMul -> (Q) into an integer MatMul only when
    the DQ output has a single consumer; a shared Q/DQ pair leaves every consumer unfused (measured
    3.5x slower than fp32 with signed int8 activations; ORT's DedicatedQDQPair option does not
    split these). Returns how many pairs were added.
    """
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name for i in graph.initializer}
    added = 0
    new_nodes: list[tuple[onnx.NodeProto, list[onnx.NodeProto]]] = []
    for dq in list(graph.node):
        if dq.op_type != "DequantizeLinear" or dq.input[0] in initializers:
            continue
        q = producers.get(dq.input[0])
        users = consumers.get(dq.output[0], [])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        if quantized_nodes is not None:
            for user in [u for u in users if u.name not in quantized_nodes]:
                for i, name in enumerate(user.input):
                    if name == dq.output[0]:
                        user.input[i] = q.input[0]
            users = [u for u in users if u.name in quantized_nodes]
        if len(users) < 2:
            continue
        copies = []
        for index, user in enumerate(users[1:], start=1):
            suffix = f"_pair{index}"
            # Own copies of the scale and zero point too: ORT's common-subexpression elimination would
            # merge Q nodes with identical inputs back into one shared Q.
            params = []
            for name in q.input[1:]:
                if name in initializers:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(next(i for i in graph.initializer if i.name == name))
                    copy.name = name + suffix
                    graph.initializer.append(copy)
                    params.append(copy.name)
                else:
                    params.append(name)
            q_out, dq_out = q.output[0] + suffix, dq.output[0] + suffix
            q_copy = onnx.helper.make_node("QuantizeLinear", [q.input[0], *params], [q_out], name=q.name + suffix)
            q_copy.attribute.extend(q.attribute)
            dq_copy = onnx.helper.make_node("DequantizeLinear", [q_out, *params], [dq_out], name=dq.name + suffix)
            dq_copy.attribute.extend(dq.attribute)
            for i, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[i] = dq_out
            copies += [q_copy, dq_copy]
            added += 1
        new_nodes.append((dq, copies))
    for dq, copies in new_nodes:
        position = list(graph.node).index(dq) + 1
        for offset, node in enumerate(copies):
            graph.node.insert(position + offset, node)
    return added


def int4_nodes(model: onnx.ModelProto, parameters: dict[str, tuple[str, str, int | None]] | None = None,
               keep_float_pattern: str = KEEP_FLOAT_PATTERN,
               keep_float_layers: frozenset[str] = frozenset()) -> list[QuantizableNode]:
    """The MatMuls int4 quantizes: 2-D weights, less the sensitive layers and those kept in float."""
    initializers = {i.name: len(i.dims) for i in model.graph.initializer}
    return [n for n in quantizable_nodes(model, parameters=parameters, keep_float_pattern=keep_float_pattern)
            if n.op_type == "MatMul" and not n.keep_float and n.layer not in keep_float_layers
            and initializers[n.weight] == 2]


def quantize_int4(onnx_path: str | Path, out_path: str | Path, block_size: int = 128,
                  parameters: dict[str, tuple[str, str, int | None]] | None = None,
                  keep_float_pattern: str = KEEP_FLOAT_PATTERN, keep_float_layers: frozenset[str] = frozenset(),
                  awq: Sequence[AwqScale] = ()) -> Path:
    """Weight-only blocked int4 (symmetric) of 2-D MatMul weights as opset-21 blocked DequantizeLinear.

    ONNX Runtime's MatMulNBitsQuantizer in QDQ format does the work; weights whose input dimension is
    not a multiple of the block are padded by it. Sensitive layers and batched 3-D weights stay float.
    With `awq` scales (mahia.calibration.awq), each quantized weight is scaled by its search's s first.
    """
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    # The module sets up INFO logging of every node it skips on import (a line per MatMul and more).
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    if block_size not in INT4_BLOCK_SIZES:
        raise CalibrationError(f"int4 block size must be one of {INT4_BLOCK_SIZES}, got {block_size}")
    model = onnx.load(str(onnx_path))
    selected = {n.node for n in int4_nodes(model, parameters, keep_float_pattern, keep_float_layers)}
    if not selected:
        raise CalibrationError(f"{onnx_path}: no 2-D MatMul weight to quantize to int4")
    if awq:  # after the selection: it finds layers by their weights' bytes, which the scaling changes
        model = apply_scales(model, [s for s in awq if s.node in selected])
    excluded = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in selected]
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, quant_format=QuantFormat.QDQ,
                                          op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=excluded, algo_config=config)
    quantizer.process()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(out_path), use_external_data_format=False)
    return out_path


def restore_float(quantized: onnx.ModelProto, original: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """A copy of `quantized` in which the named MatMul/Gemm nodes read their original float inputs again.

    The quantizer keeps node names, so each node's float inputs come from `original`; Q/DQ nodes and
    quantized weights nobody reads any more are pruned. This makes a per-layer sensitivity sweep or a
    mixed-precision graph a cheap graph edit instead of a fresh quantization.
    """
    wanted = {n.name: list(n.input) for n in original.graph.node if n.name in nodes}
    missing = sorted(nodes - set(wanted))
    if missing:
        raise CalibrationError(f"nodes not in the float graph: {', '.join(missing)}")
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    graph = model.graph
    for node in graph.node:
        if node.name in wanted:
            del node.input[:]
            node.input.extend(wanted[node.name])
    present = {i.name for i in graph.initializer}
    originals = {i.name: i for i in original.graph.initializer}
    for name in {x for inputs in wanted.values() for x in inputs}:
        if name in originals and name not in present:
            graph.initializer.append(originals[name])
    _prune(graph)
    return model


def _prune(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads, then unread initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not set(n.output) & read]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | outputs
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
