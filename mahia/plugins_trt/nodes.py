"""Plugin nodes in an ONNX graph: one op call as its chain of nodes, with the attributes TensorRT expects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from mahia.plugins_trt.specs import DOMAIN, Chain, PluginSpec, node_attributes

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
