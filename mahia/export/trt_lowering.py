"""The TensorRT ONNX flavour: every `mahia::` op call becomes its chain of TensorRT plugin nodes.

The chains, plugin names, inputs, outputs and INT attributes are mahia.plugins_trt's (CHAINS, PLUGINS: the single
source of truth); this module only writes them through torch.onnx's `custom_translation_table`. Each plugin is an
onnxscript op in the opset ("mahia", 1) with an OpSchema built from its spec (torch 2.13's exporter records an op
only through its schema, which also fixes the number of outputs), so a node is

    domain "mahia", op_type <plugin>, attributes plugin_namespace="mahia", plugin_version="1", aot=1, then the
    plugin's INT attributes in registration order (`finish_plugin_nodes` restores that order after export)

and the intermediates of a chain (MoE routing tables, SSD chunk products and states) are ordinary graph tensors.
Everything outside the plugins is what torch.onnx writes for the rest of the model; `unsupported_ops` checks it
against TensorRT's ONNX parser (TENSORRT_PARSER_OPS). The MoE tile config (block_m and config attributes) is fixed
at export by the kernels' bucket rule at the profile's opt token count (mahia.plugins_trt.moe_ffn.chain_attributes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import onnx
import torch
from onnx.defs import OpSchema
from onnxscript.values import Op, Opset

import mahia.kernels  # noqa: F401  (registers the mahia:: ops this module lowers)
from mahia.plugins_trt import CHAINS, PLUGINS, Chain, PluginSpec
from mahia.plugins_trt.specs import DOMAIN, DTYPES, FLOAT, FLOAT_DTYPES, node_attributes

OPSET = 21
PLUGIN_OPSET = Opset(DOMAIN, 1)
# The attributes every plugin node carries before its own (mahia.plugins_trt.specs.node_attributes).
PLUGIN_NODE_ATTRIBUTES = (("plugin_namespace", OpSchema.AttrType.STRING), ("plugin_version", OpSchema.AttrType.STRING),
                          ("aot", OpSchema.AttrType.INT))

# ONNX ops TensorRT's ONNX parser imports ("Y" in onnx-tensorrt docs/operators.md for TensorRT 10.15, opset 9-24),
# less NonZero: TensorRT 10.15 lists it, but TensorRT-RTX 1.7's parser has no importer for it ("NonZero plugin
# creator version 1 was not found", measured), so a graph that needs it would not pass the RTX check. DFT is "N"
# there (TensorRT parses it from 11.2 only) and ScatterND takes no reduction: the portable graph's MoE
# (NonZero + ScatterND-add) and long convolution (DFT) are exactly what the plugins replace.
TENSORRT_PARSER_OPS = frozenset((
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "Attention",
    "AveragePool", "BatchNormalization", "BlackmanWindow", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace",
    "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten",
    "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool",
    "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU", "HammingWindow",
    "HannWindow", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler", "InstanceNormalization",
    "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN",
    "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min",
    "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow",
    "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
    "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RMSNormalization",
    "RNN", "RoiAlign", "RotaryEmbedding", "Round", "STFT", "ScaledTanh", "Scan", "Scatter", "ScatterElements",
    "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus",
    "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "TensorScatter",
    "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
))

_ONNX_TYPES = {name: f"tensor({onnx.helper.tensor_dtype_to_string(d.onnx).removeprefix('TensorProto.').lower()})"
               for name, d in DTYPES.items()}


def _type_strings(options: Sequence[str]) -> list[str]:
    names = [d for option in options for d in (FLOAT_DTYPES if option == FLOAT else (option,))]
    return [_ONNX_TYPES[n] for n in dict.fromkeys(names)]


def plugin_schema(spec: PluginSpec) -> OpSchema:
    """The OpSchema of a plugin node (domain "mahia", version 1): its inputs and outputs with their dtypes, the
    three plugin attributes and its INT attributes. Used to record the node; never registered with onnx."""
    inputs = [OpSchema.FormalParameter(t.name, f"T_{t.name}") for t in spec.inputs]
    outputs = [OpSchema.FormalParameter(o.name, f"T_out_{o.name}") for o in spec.outputs]
    constraints = [(f"T_{t.name}", _type_strings(t.dtypes), "") for t in spec.inputs]
    constraints += [(f"T_out_{o.name}", _type_strings((o.dtype,)), "") for o in spec.outputs]
    attributes = [OpSchema.Attribute(name, kind, "") for name, kind in PLUGIN_NODE_ATTRIBUTES]
    attributes += [OpSchema.Attribute(name, OpSchema.AttrType.INT, "") for name in spec.attrs]
    return OpSchema(spec.name, DOMAIN, 1, inputs=inputs, outputs=outputs, type_constraints=constraints,
                    attributes=attributes)


PLUGIN_OPS: dict[str, Op] = {name: Op(PLUGIN_OPSET, name, plugin_schema(spec)) for name, spec in PLUGINS.items()}


def plugin_chain(chain: Chain, args: Sequence[object], attributes: Mapping[str, int]) -> object:
    """Record one op call as its chain of plugin nodes: `args` are the op's tensor inputs (chain.inputs order),
    `attributes` the chain's (chain.attributes(...)); returns the chain's output value."""
    values = dict(zip(chain.inputs, args, strict=True))
    for spec in chain.plugins:
        outputs = PLUGIN_OPS[spec.name](*(values[t.name] for t in spec.inputs),
                                        **node_attributes(spec, {a: attributes[a] for a in spec.attrs}))
        outputs = (outputs,) if len(spec.outputs) == 1 else tuple(outputs)
        values.update(zip((o.name for o in spec.outputs), outputs, strict=True))
    return values[chain.output]


def moe_attributes(num_experts: int, top_k: int, opt_tokens: int) -> dict[str, int]:
    """The MoE chain's attributes for a graph whose profile's opt point has `opt_tokens` tokens."""
    return CHAINS["moe_ffn"].attributes(num_experts, top_k, opt_tokens)


def tensorrt_translations(opt_tokens: int) -> dict[Callable, Callable]:
    """The tensorrt flavour's custom_translation_table; `opt_tokens` = batch x sequence (tabular tokens included)
    at the profile's opt point, which fixes the MoE tile config."""

    def long_conv(x, filt, causal: bool):
        chain = CHAINS["long_conv"]
        return plugin_chain(chain, (x, filt), chain.attributes(causal))

    def ssd_scan(x, dt, a, b, c, chunk_size: int):
        chain = CHAINS["ssd_scan"]
        return plugin_chain(chain, (x, dt, a, b, c), chain.attributes(chunk_size))

    def moe_ffn(x, router_logits, mask, w1, w2, top_k: int, capacity_factor: float):
        if capacity_factor > 0:
            raise NotImplementedError("the MoE plugins are dropless only (capacity_factor <= 0, the eval-mode "
                                      f"setting); got capacity_factor={capacity_factor}: export the model in eval()")
        attributes = moe_attributes(int(w1.shape[0]), top_k, opt_tokens)  # the weights' shape is static
        return plugin_chain(CHAINS["moe_ffn"], (x, router_logits, mask, w1, w2), attributes)

    def gate_combine(branches, gate_logits):
        return plugin_chain(CHAINS["gate_combine"], (branches, gate_logits), {})

    return {
        torch.ops.mahia.long_conv.default: long_conv,
        torch.ops.mahia.ssd_scan.default: ssd_scan,
        torch.ops.mahia.moe_ffn.default: moe_ffn,
        torch.ops.mahia.gate_combine.default: gate_combine,
    }


def lowering_notes(opt_tokens: int, num_experts: int, top_k: int) -> dict[str, str]:
    """Each op's plugin chain as the manifest and report record it (the MoE's tile attributes included)."""
    notes = {op: " -> ".join(spec.name for spec in chain.plugins) for op, chain in CHAINS.items()
             if op != "moe_ffn_fp8"}
    moe = moe_attributes(num_experts, top_k, opt_tokens)
    notes["moe_ffn"] += f" (block_m={moe['block_m']}, config={moe['config']} at {opt_tokens} opt tokens)"
    return notes


def plugin_attributes(node: onnx.NodeProto) -> dict[str, object]:
    """A node's attributes by name, as Python values (strings decoded)."""
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def finish_plugin_nodes(model: onnx.ModelProto) -> int:
    """Check every plugin node (domain "mahia") against its spec and write its attributes in the contract's order
    (plugin_namespace, plugin_version, aot, then the INT attributes in registration order); returns their count.
    Raises ValueError naming a node whose op_type, input/output count or attribute set differs from its spec."""
    count = 0
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        spec = PLUGINS.get(node.op_type)
        if spec is None:
            raise ValueError(f"plugin node {node.name!r}: no plugin {node.op_type!r}")
        if len(node.input) != len(spec.inputs) or len(node.output) != len(spec.outputs):
            raise ValueError(f"plugin node {node.name!r} ({spec.name}): {len(node.input)} inputs and "
                             f"{len(node.output)} outputs, expected {len(spec.inputs)} and {len(spec.outputs)}")
        values = plugin_attributes(node)
        expected = node_attributes(spec, {a: values.get(a) for a in spec.attrs if a in values})
        if values != expected:
            raise ValueError(f"plugin node {node.name!r} ({spec.name}): attributes {values}, expected {expected}")
        del node.attribute[:]
        node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in expected.items())
        count += 1
    return count


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Nodes TensorRT's parser would not import as ONNX ops: op types outside TENSORRT_PARSER_OPS, ScatterND with a
    reduction, any other domain than the default and "mahia" (as 'name (op_type): why')."""
    problems = []
    for node in model.graph.node:
        if node.domain == DOMAIN:
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name} ({node.domain}::{node.op_type}): not an ONNX op")
        elif node.op_type not in TENSORRT_PARSER_OPS:
            problems.append(f"{node.name} ({node.op_type}): not imported by TensorRT's ONNX parser")
        elif node.op_type == "ScatterND" and plugin_attributes(node).get("reduction", "none") != "none":
            problems.append(f"{node.name} (ScatterND): reduction is not supported by TensorRT")
    return problems
