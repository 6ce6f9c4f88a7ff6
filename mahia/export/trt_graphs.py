"""The TensorRT-flavour graph of each precision, made from the flavour's fp32 graph.

TensorRT 11 is strongly typed: the graph's own dtypes and Q/DQ nodes decide every precision. So:
- fp32: the lowered graph as it is;
- fp16: the portable fp16 build's conversion (fp16.to_float16: ONNX Runtime's float16 converter, its op
  block list, the RMSNorms and SSD scans kept in fp32); plugin nodes are converted like any other op, so a plugin
  whose float inputs are float16 runs in float16, and the SSD scan's plugins run in float32;
- int8, fp8, int4, auto: the quantization is TRANSPLANTED from the precision's portable quantized graph (built from
  the one calibration table, calibration.json): for every quantized MatMul/Gemm outside the MoE experts, the
  Q/DQ (and AWQ) nodes and quantized initializers in front of it are copied in front of the same layer's node here
  (found by its weight: the same parameter bytes), so scales and quantized weights are bit-identical to the
  portable graph's. The experts run inside the MoE plugins: fp8 gives MoeUpFp8 / MoeDownFp8 the experts as
  float8_e4m3fn with float32 per-output-channel scales (amax / 448: the portable fp8 graph's weight rule); int8,
  int4 and auto leave them float32 (no integer MoE plugin).

Every plugin therefore receives float tensors (float32, or float16 in the fp16 graph) and, in the fp8 graph, the
FP8 expert weights: never a DequantizeLinear output, since Q/DQ pairs only feed MatMul/Gemm. `plugin_inputs`
derives that from the graph (dtype of every plugin input, by ONNX type inference through the plugin specs'
dtype rules), and the tests hold each precision's graph to it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import onnx
from onnx import TensorProto, helper, numpy_helper

from mahia.calibration.onnx_names import parameter_index, quantizable_nodes
from mahia.export.errors import ExportError
from mahia.export.fp16 import to_float16
from mahia.export.trt_lowering import unsupported_ops
from mahia.plugins_trt import PLUGINS
from mahia.plugins_trt.specs import DOMAIN, DTYPES, output_dtypes

if TYPE_CHECKING:
    from mahia.export.precisions import BuildContext, Built

_DTYPE_NAMES = {d.onnx: name for name, d in DTYPES.items()}
_QUANTIZED_OPS = ("MatMul", "Gemm")
FP8_EXPERT_PLUGINS = {"MoeUp": ("MoeUpFp8", "w1"), "MoeDown": ("MoeDownFp8", "w2")}


def tensorrt_graph(precision: str, fp32: onnx.ModelProto, ctx: BuildContext, portable: Built | None
                   ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The precision's TensorRT-flavour graph and its notes (what was transplanted, what each plugin receives).
    Raises ExportError when a plugin input has a dtype its spec refuses or an op is outside TensorRT's parser."""
    notes: dict[str, Any] = {}
    if precision == "fp32":
        graph = onnx.ModelProto()
        graph.CopyFrom(fp32)
    elif precision == "fp16":
        graph, kept_fp32 = to_float16(fp32, tensor_dtypes(fp32))
        notes["fp32_nodes"] = len(kept_fp32)
    elif ctx.recipe is not None:
        if portable is None or portable.onnx is None or ctx.onnx_fp32 is None:
            raise ExportError(f"{precision}: the TensorRT graph takes its quantization from the portable "
                              f"{precision} graph, which was not built")
        graph, moved = transplant_quantization(portable.onnx, ctx.onnx_fp32, fp32, parameter_index(ctx.model))
        notes["quantization"] = {"source": "transplanted from the portable graph (same calibration table)",
                                 "quantized_nodes": moved["nodes"],
                                 "moe_expert_nodes_inside_plugins": moved["experts"]}
        if precision == "fp8":
            notes["quantization"]["fp8_experts"] = fp8_experts(graph)
    else:
        raise ExportError(f"precision {precision!r} has no TensorRT graph")
    problems = unsupported_ops(graph)
    if problems:
        raise ExportError(f"the {precision} TensorRT graph has {len(problems)} node(s) TensorRT's parser does not "
                          f"import: {'; '.join(problems[:5])}")
    try:
        notes["plugin_inputs"] = plugin_inputs(graph)
    except ValueError as exc:
        raise ExportError(f"the {precision} TensorRT graph: {exc}") from None
    return graph, notes


def tensor_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """The ONNX elem type of every tensor: ONNX type inference, with each plugin node's outputs typed by its spec's
    dtype rule once its inputs are typed, repeated until nothing changes. Raises ValueError naming a plugin node
    whose input dtypes its spec refuses."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for init in work.graph.initializer:  # types only: the weights' bytes do not matter here
        init.ClearField("raw_data")
        for name in ("float_data", "int32_data", "int64_data", "double_data"):
            init.ClearField(name)
        init.data_location = TensorProto.DEFAULT
        work.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    del work.graph.initializer[:]
    plugins = [n for n in work.graph.node if n.domain == DOMAIN]
    typed: set[str] = set()
    while True:
        inferred = onnx.shape_inference.infer_shapes(work, strict_mode=False)
        types = {v.name: v.type.tensor_type.elem_type
                 for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
                 if v.type.tensor_type.elem_type}
        added = False
        for node in plugins:
            if node.name in typed or not all(name in types for name in node.input):
                continue
            spec = PLUGINS[node.op_type]
            names = [_DTYPE_NAMES.get(types[name], str(types[name])) for name in node.input]
            try:
                dtypes = output_dtypes(spec, names)
            except ValueError as exc:
                raise ValueError(f"plugin node {node.name!r}: {exc}") from None
            work.graph.value_info.extend(helper.make_tensor_value_info(out, DTYPES[d].onnx, None)
                                         for out, d in zip(node.output, dtypes, strict=True))
            typed.add(node.name)
            added = True
        if not added:
            untyped = [n.name for n in plugins if n.name not in typed]
            if untyped:
                raise ValueError(f"plugin nodes with untyped inputs: {', '.join(untyped[:5])}")
            return types


def plugin_inputs(model: onnx.ModelProto) -> dict[str, dict[str, str]]:
    """What each plugin receives, by plugin name: input name -> dtype (several: "a|b"), and "dequantized" /
    "initializer" where an input comes straight from a DequantizeLinear or is a weight. Raises ValueError when a
    plugin input is a DequantizeLinear output (plugins take float tensors) or has a dtype its spec refuses."""
    types = tensor_dtypes(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {i.name for i in model.graph.initializer}
    seen: dict[str, dict[str, set[str]]] = {}
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        spec = PLUGINS[node.op_type]
        for tensor, name in zip(spec.inputs, node.input, strict=True):
            producer = producers.get(name)
            if producer is not None and producer.op_type == "DequantizeLinear":
                raise ValueError(f"plugin node {node.name!r}: input {tensor.name} is the DequantizeLinear output "
                                 f"{name!r}; plugins take float tensors")
            kind = _DTYPE_NAMES.get(types[name], str(types[name])) + (" initializer" if name in initializers else "")
            seen.setdefault(spec.name, {}).setdefault(tensor.name, set()).add(kind)
    return {plugin: {t: "|".join(sorted(kinds)) for t, kinds in inputs.items()} for plugin, inputs in seen.items()}


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    return ({i.name for i in graph.input} | {i.name for i in graph.initializer}
            | {o for n in graph.node for o in n.output})


def transplant_quantization(quantized: onnx.ModelProto, float_graph: onnx.ModelProto, target: onnx.ModelProto,
                            parameters: Mapping[str, tuple[str, str, int | None]]
                            ) -> tuple[onnx.ModelProto, dict[str, int]]:
    """`target` with the quantization of `quantized` (a quantized copy of `float_graph`): for each MatMul/Gemm of
    `quantized` whose inputs were rewired by quantization, the nodes and initializers in front of it (Q/DQ pairs,
    AWQ's Mul, quantized weights) are copied in front of the node of `target` with the same layer (same weight
    bytes, op and attributes). MoE expert nodes (no counterpart: their MatMuls are inside the plugins) are counted,
    not moved. Returns (graph, {"nodes": moved, "experts": skipped}); raises ExportError naming a layer with no
    or several counterparts or a different weight."""
    float_nodes = {n.name: n for n in float_graph.graph.node}
    # int4's MatMulNBitsQuantizer renames the nodes it rewrites (node_MatMul_28 -> node_MatMul_28_matmul_Q4) but
    # keeps their outputs: a quantized node's float original is the node of the same name, else of the same output
    float_by_output = {n.output[0]: n for n in float_graph.graph.node if n.output}
    float_tensors = _tensor_names(float_graph)
    float_inits = {i.name: i for i in float_graph.graph.initializer}
    layer_of = {q.node: q.layer for q in quantizable_nodes(float_graph, parameters=dict(parameters),
                                                           keep_float_pattern=r"$^")}
    targets: dict[str, list[str]] = {}
    for q in quantizable_nodes(target, parameters=dict(parameters), keep_float_pattern=r"$^"):
        targets.setdefault(q.layer, []).append(q.node)
    producers = {out: node for node in quantized.graph.node for out in node.output}
    quantized_inits = {i.name: i for i in quantized.graph.initializer}

    graph = onnx.ModelProto()
    graph.CopyFrom(target)
    nodes = {n.name: n for n in graph.graph.node}
    target_inits = {i.name: i for i in graph.graph.initializer}
    inserted: dict[str, list[onnx.NodeProto]] = {}
    moved = experts = 0
    for node in quantized.graph.node:
        original = float_nodes.get(node.name) or float_by_output.get(node.output[0] if node.output else "")
        if node.op_type not in _QUANTIZED_OPS or original is None or list(node.input) == list(original.input):
            continue
        layer = layer_of.get(original.name)
        if layer is None:
            raise ExportError(f"quantized node {node.name!r} has no weight of the model (not a layer)")
        if layer.endswith((".experts.w1", ".experts.w2")):
            experts += 1
            continue
        matches = targets.get(layer, [])
        if len(matches) != 1:
            raise ExportError(f"layer {layer}: {len(matches)} MatMul/Gemm nodes in the TensorRT graph, expected one "
                              f"to take the quantization of {node.name!r}")
        twin = nodes[matches[0]]
        weight = float_inits[original.input[1]]
        twin_weight = target_inits.get(twin.input[1])
        if (twin.op_type != node.op_type or list(twin.attribute) != list(original.attribute) or twin_weight is None
                or twin_weight.raw_data != weight.raw_data or list(twin_weight.dims) != list(weight.dims)):
            raise ExportError(f"layer {layer}: {twin.name!r} ({twin.op_type}) differs from the portable graph's "
                              f"{node.name!r} (op, attributes or weight): cannot take its quantization")
        renamed: dict[str, str] = {}
        copies: list[onnx.NodeProto] = []

        def copy_from(tensor: str, anchor: str, replacement: str, twin: onnx.NodeProto = twin) -> str:
            """The name in `graph` of quantized-graph tensor `tensor`, copying what produces it."""
            if tensor == anchor:
                return replacement
            if tensor in renamed:
                return renamed[tensor]
            if tensor in float_tensors:
                raise ExportError(f"the quantization of {node.name!r} reads {tensor!r} of the float graph, which "
                                  "has no counterpart in the TensorRT graph")
            renamed[tensor] = new = f"{twin.name}/{tensor}"
            if tensor in quantized_inits:
                init = TensorProto()
                init.CopyFrom(quantized_inits[tensor])
                init.name = new
                graph.graph.initializer.append(init)
                return new
            producer = producers[tensor]
            if producer.domain not in ("", "ai.onnx"):
                raise ExportError(f"the quantization of {node.name!r} uses {producer.domain}::{producer.op_type}, "
                                  "not an ONNX op")
            inputs = [copy_from(i, anchor, replacement) if i else "" for i in producer.input]
            clone = helper.make_node(producer.op_type, inputs, [copy_from_output(o) for o in producer.output],
                                     name=f"{twin.name}/{producer.name}")
            clone.attribute.extend(producer.attribute)
            copies.append(clone)
            return renamed[tensor]

        def copy_from_output(tensor: str, twin: onnx.NodeProto = twin) -> str:
            renamed.setdefault(tensor, f"{twin.name}/{tensor}")
            return renamed[tensor]

        for index, (new_input, old_input) in enumerate(zip(node.input, original.input, strict=True)):
            if new_input != old_input:
                twin.input[index] = copy_from(new_input, old_input, twin.input[index])
        inserted[twin.name] = copies
        moved += 1
    order = []
    for n in graph.graph.node:
        order += inserted.get(n.name, []) + [n]
    del graph.graph.node[:]
    graph.graph.node.extend(order)
    _prune_initializers(graph)
    return graph, {"nodes": moved, "experts": experts}


def _prune_initializers(model: onnx.ModelProto) -> None:
    """Drop float weights no node reads any more (the ones the transplanted quantized weights replace)."""
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for init in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(init)


def fp8_experts(model: onnx.ModelProto) -> dict[str, int]:
    """In place: every MoeUp / MoeDown node becomes MoeUpFp8 / MoeDownFp8, its expert weight initializer stored as
    float8_e4m3fn with a float32 scale per expert and output channel (mahia.kernels.reference.quantize_experts_fp8:
    amax / 448, the portable fp8 graph's weight rule). Returns how many nodes of each plugin were changed."""
    import ml_dtypes
    import torch

    from mahia.kernels.reference import quantize_experts_fp8

    initializers = {i.name: i for i in model.graph.initializer}
    changed: Counter[str] = Counter()
    for node in model.graph.node:
        if node.domain != DOMAIN or node.op_type not in FP8_EXPERT_PLUGINS:
            continue
        plugin, weight_name = FP8_EXPERT_PLUGINS[node.op_type]
        spec = PLUGINS[plugin]
        position = [t.name for t in PLUGINS[node.op_type].inputs].index(weight_name)
        source = initializers.get(node.input[position])
        if source is None:
            raise ExportError(f"plugin node {node.name!r}: expert weight {node.input[position]!r} is not an "
                              "initializer")
        weights, scales = quantize_experts_fp8(torch.from_numpy(numpy_helper.to_array(source).copy()).float())
        names = (f"{node.name}/{weight_name}_fp8", f"{node.name}/{weight_name}_scale")
        fp8 = weights.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
        model.graph.initializer.extend([numpy_helper.from_array(fp8, names[0]),
                                        numpy_helper.from_array(scales.numpy(), names[1])])
        inputs = list(node.input)
        inputs[position:position + 1] = names  # the FP8 spec has the scale right after the weight
        if [t.name for t in spec.inputs][position:position + 2] != [weight_name, f"{weight_name}_scale"]:
            raise ExportError(f"{plugin}: expected inputs {weight_name}, {weight_name}_scale at {position}")
        del node.input[:]
        node.input.extend(inputs)
        node.op_type = plugin
        changed[plugin] += 1
    _prune_initializers(model)
    return dict(changed)
