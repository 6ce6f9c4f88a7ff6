"""Plugin nodes in an ONNX graph: one op call as its chain of nodes, with the attributes TensorRT expects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx
import torch

from mahia.plugins_trt.specs import DOMAIN, DTYPES, Chain, PluginSpec, node_attributes

OPSET_IMPORT = (DOMAIN, 1)  # the graph's opset_import entry for the plugin nodes' domain


@dataclass(frozen=True)
class ChainNode:
    """One plugin node: op_type `plugin`, node name, input and output value names, attributes in order."""

    plugin: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[tuple[str, object], ...]

    def to_onnx(self) -> onnx.NodeProto:
        """The NodeProto (domain "mahia"), attributes in this order (onnx.helper.make_node would sort them)."""
        node = onnx.helper.make_node(self.plugin, list(self.inputs), list(self.outputs), name=self.name, domain=DOMAIN)
        node.attribute.extend(onnx.helper.make_attribute(key, value) for key, value in self.attributes)
        return node


def chain_nodes(chain: Chain, inputs: Sequence[str], output: str, attributes: Mapping[str, int],
                prefix: str) -> list[ChainNode]:
    """The nodes of one op call: `inputs` are the graph value names of the op's tensor inputs (in `chain.inputs`
    order), `output` the value name of its result, `attributes` the chain's (`chain.attributes(**op params)`).
    Intermediate values are named "<prefix>/<tensor>" and nodes "<prefix>/<plugin>"."""
    if len(inputs) != len(chain.inputs):
        raise ValueError(f"{chain.op}: {len(inputs)} inputs given, expected {len(chain.inputs)} "
                         f"({', '.join(chain.inputs)})")
    names = dict(zip(chain.inputs, inputs, strict=True))
    names[chain.output] = output
    nodes = []
    for spec in chain.plugins:
        unknown = [t.name for t in spec.inputs if t.name not in names and t.name not in _outputs_before(chain, spec)]
        if unknown:
            raise ValueError(f"{chain.op}: {spec.name} reads {unknown}, which no earlier node writes")
        outputs = tuple(names.setdefault(o.name, f"{prefix}/{o.name}") for o in spec.outputs)
        nodes.append(ChainNode(spec.name, f"{prefix}/{spec.name}", tuple(names[t.name] for t in spec.inputs), outputs,
                               tuple(node_attributes(spec, {a: attributes[a] for a in spec.attrs}).items())))
    return nodes


def _outputs_before(chain: Chain, spec: PluginSpec) -> set[str]:
    before = chain.plugins[:chain.plugins.index(spec)]
    return {o.name for p in before for o in p.outputs}


@dataclass(frozen=True)
class OpCall:
    """One op call of an example graph: a name (prefix of its values), the op, the chain's attributes."""

    name: str
    op: str
    attributes: Mapping[str, int]


def example_graph(calls: Sequence[OpCall], sizes: Mapping[str, int], dtype: str,
                  generator: torch.Generator) -> onnx.ModelProto:
    """A standalone ONNX model with each op call as its chain of plugin nodes, dynamic in "batch" and "seq":
    inputs "<name>.<input>" (activations [batch, seq, ...], as the model has them; the MoE's are flattened to
    tokens by Reshape and its result reshaped back), weights as initializers (random, the model's ranges; FP8
    experts quantized with per-channel scales), output "<name>.out". `sizes`: d_model, heads, head_dim, state,
    experts, hidden. For checking plugins in isolation (TensorRT-RTX build, ONNX Runtime wiring)."""
    from onnx import TensorProto, helper, numpy_helper

    from mahia.kernels import reference
    from mahia.plugins_trt import CHAINS

    elem = DTYPES[dtype].onnx
    d, heads, p, n, e, h = (sizes[k] for k in ("d_model", "heads", "head_dim", "state", "experts", "hidden"))
    inputs, outputs, nodes, weights = [], [], [], []

    def tensor_input(name: str, dims: list, elem_type: int = elem) -> str:
        inputs.append(helper.make_tensor_value_info(name, elem_type, dims))
        return name

    def weight(name: str, value: torch.Tensor) -> str:
        weights.append(numpy_helper.from_array(_numpy(value), name))
        return name

    for call in calls:
        c, before, after = call.name, [], []
        if call.op == "gate_combine":
            args = [tensor_input(f"{c}.branches", ["batch", "seq", d, 3]),
                    tensor_input(f"{c}.logits", ["batch", "seq", 3])]
        elif call.op == "long_conv":
            args = [tensor_input(f"{c}.x", ["batch", d, "seq"]),
                    tensor_input(f"{c}.filt", [d, "seq" if call.attributes["causal"] else "filt_len"])]
        elif call.op == "ssd_scan":
            a = -torch.exp(torch.randn(heads, generator=generator) * 0.5)
            args = [tensor_input(f"{c}.x", ["batch", "seq", heads, p]),
                    tensor_input(f"{c}.dt", ["batch", "seq", heads]), weight(f"{c}.a", a.to(DTYPES[dtype].torch)),
                    tensor_input(f"{c}.b", ["batch", "seq", n]), tensor_input(f"{c}.c", ["batch", "seq", n])]
        else:  # the MoE takes tokens: [batch, seq, ...] flattened, the result reshaped back
            args = []
            for name, dims in (("x", [d]), ("router_logits", [e]), ("mask", [])):
                tensor_input(f"{c}.{name}", ["batch", "seq", *dims], TensorProto.BOOL if name == "mask" else elem)
                shape = weight(f"{c}.{name}_shape", torch.tensor([-1, *dims]))
                before.append(helper.make_node("Reshape", [f"{c}.{name}", shape], [f"{c}/{name}"],
                                               name=f"{c}/flatten_{name}"))
                args.append(f"{c}/{name}")
            w1 = torch.randn(e, 2 * h, d, generator=generator) * d ** -0.5
            w2 = torch.randn(e, d, h, generator=generator) * h ** -0.5
            if call.op == "moe_ffn_fp8":
                (q1, s1), (q2, s2) = reference.quantize_experts_fp8(w1), reference.quantize_experts_fp8(w2)
                args += [weight(f"{c}.w1", q1), weight(f"{c}.w1_scale", s1), weight(f"{c}.w2", q2),
                         weight(f"{c}.w2_scale", s2)]
            else:
                args += [weight(f"{c}.w1", w1.to(DTYPES[dtype].torch)), weight(f"{c}.w2", w2.to(DTYPES[dtype].torch))]
            after = [helper.make_node("Shape", [f"{c}.x"], [f"{c}/x_shape"], name=f"{c}/x_shape"),
                     helper.make_node("Reshape", [f"{c}/y", f"{c}/x_shape"], [f"{c}.out"], name=f"{c}/unflatten")]
        result = f"{c}/y" if after else f"{c}.out"
        chain = chain_nodes(CHAINS[call.op], args, result, call.attributes, c)
        nodes += before + [node.to_onnx() for node in chain] + after
        out_dims = {"long_conv": ["batch", d, "seq"], "ssd_scan": ["batch", "seq", heads, p]}.get(call.op,
                                                                                                ["batch", "seq", d])
        outputs.append(helper.make_tensor_value_info(f"{c}.out", elem, out_dims))
    graph = helper.make_graph(nodes, "plugins", inputs, outputs, initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(*OPSET_IMPORT)],
                              ir_version=10)
    onnx.checker.check_model(model)
    return model


def example_shapes(model: onnx.ModelProto, batch: int, seq: int) -> dict[str, tuple[int, ...]]:
    """The shapes of an example graph's inputs at batch x seq (a two-sided filter has 2 seq - 1 taps)."""
    values = {"batch": batch, "seq": seq, "filt_len": 2 * seq - 1}
    return {i.name: tuple(values[d.dim_param] if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim)
            for i in model.graph.input}


def _numpy(value: torch.Tensor) -> object:
    """A tensor as numpy, float8 and bfloat16 through ml_dtypes (numpy has neither)."""
    import ml_dtypes

    if value.dtype == torch.float8_e4m3fn:
        return value.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    if value.dtype == torch.bfloat16:
        return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()
