"""Post-export graph passes: equal symbolic sizes become one value, and what depends on them is built once."""

from __future__ import annotations

import collections
import dataclasses

import onnx
import onnx_ir as ir

from mahia.export import stages
from mahia.export.config import DimRange
from mahia.export.graph_passes import share_equal_shapes
from mahia.model import build_model, get_config


def _shape(graph: ir.Graph, value: ir.Value, start: int, end: int | None) -> ir.Value:
    attributes = {"start": start} if end is None else {"start": start, "end": end}
    node = ir.node("Shape", [value], attributes=attributes)
    graph.append(node)
    return node.outputs[0]


def test_shapes_of_equal_symbolic_dims_share_one_value() -> None:
    a = ir.Value(name="a", shape=ir.Shape(["batch", "seq + 5"]), type=ir.TensorType(ir.DataType.FLOAT))
    b = ir.Value(name="b", shape=ir.Shape(["seq + 5", 3]), type=ir.TensorType(ir.DataType.FLOAT))
    c = ir.Value(name="c", shape=ir.Shape(["batch", "seq"]), type=ir.TensorType(ir.DataType.FLOAT))
    d = ir.Value(name="d", shape=ir.Shape(["batch", None]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([a, b, c, d], [], nodes=[], opset_imports={"": 21})
    first = _shape(graph, a, 1, 2)
    same = _shape(graph, b, 0, 1)  # seq + 5 again: merged into `first`
    other = _shape(graph, c, 1, 2)  # seq: a different size
    unknown = _shape(graph, d, 1, 2)  # an unnamed dim equals nothing
    tail = _shape(graph, a, -1, None)  # seq + 5 by a negative start: merged too
    consumers = [ir.node("Identity", [v]) for v in (first, same, other, unknown, tail)]
    for node in consumers:
        graph.append(node)

    assert share_equal_shapes(graph) == 2
    assert [n.inputs[0] for n in consumers] == [first, first, other, unknown, first]


def test_twiddle_matrices_are_built_once_per_graph_not_per_layer(tiny_export: dict) -> None:
    one_layer = dataclasses.replace(get_config("tiny"), n_layers=1)
    profile = stages.resolve_profile(one_layer, DimRange("batch", 1, 2, 4), DimRange("seq", 1, 16, 40))
    graph = stages.lower_to_onnx(stages.export_program(build_model(one_layer, seed=0).eval(), profile),
                                 one_layer, profile, opset=21)
    counts = [collections.Counter(n.op_type for n in g.graph.node)
              for g in (graph, onnx.load(str(tiny_export["dir"] / "model.onnx")))]
    assert get_config("tiny").n_layers == 2
    assert counts[0]["Sin"] == counts[1]["Sin"] > 0  # the two-layer graph builds no more DFT matrices
