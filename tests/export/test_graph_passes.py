"""Post-export graph passes: equal symbolic sizes become one value, and what depends on them is built once; float32
values cast down to float16 and straight back up are read as they were."""

from __future__ import annotations

import collections
import dataclasses

import onnx
import onnx_ir as ir

from mahia.export import stages
from mahia.export.config import DimRange
from mahia.export.graph_passes import drop_cast_round_trips, share_equal_shapes
from mahia.model import build_model, get_config


def _shape(graph: ir.Graph, value: ir.Value, start: int | None, end: int | None, domain: str = "") -> ir.Value:
    attributes = {name: v for name, v in (("start", start), ("end", end)) if v is not None}
    node = ir.node("Shape", [value], attributes=attributes, domain=domain)
    graph.append(node)
    return node.outputs[0]


def _value(name: str, dims: list | None) -> ir.Value:
    return ir.Value(name=name, shape=None if dims is None else ir.Shape(dims), type=ir.TensorType(ir.DataType.FLOAT))


def _readers(graph: ir.Graph, values: list[ir.Value]) -> list[ir.Node]:
    """One Identity reading each value: the pass's output is which value each of them reads afterwards."""
    nodes = [ir.node("Identity", [v]) for v in values]
    for node in nodes:
        graph.append(node)
    return nodes


def test_shapes_of_equal_symbolic_dims_share_one_value() -> None:
    a, b = _value("a", ["batch", "seq + 5"]), _value("b", ["seq + 5", 3])
    c, d = _value("c", ["batch", "seq"]), _value("d", ["batch", None])
    graph = ir.Graph([a, b, c, d], [], nodes=[], opset_imports={"": 21})
    first = _shape(graph, a, 1, 2)
    same = _shape(graph, b, 0, 1)  # seq + 5 again: merged into `first`
    other = _shape(graph, c, 1, 2)  # seq: a different size
    unknown = _shape(graph, d, 1, 2)  # an unnamed dim equals nothing
    tail = _shape(graph, a, -1, None)  # seq + 5 by a negative start: merged too
    consumers = _readers(graph, [first, same, other, unknown, tail])

    assert share_equal_shapes(graph) == 2
    assert [n.inputs[0] for n in consumers] == [first, first, other, unknown, first]


def test_whole_shapes_compare_every_dim_and_shapes_it_cannot_prove_equal_stay() -> None:
    a, b, c = _value("a", ["batch", "seq + 5"]), _value("b", ["batch", "seq + 5", 3]), _value("c", ["batch", "seq"])
    unknown_shape, foreign = _value("u", None), _value("f", ["batch", "seq + 5"])
    graph = ir.Graph([a, b, c, unknown_shape, foreign], [], nodes=[], opset_imports={"": 21, "com.example": 1})
    whole = _shape(graph, a, None, None)  # no attributes: every dim, [batch, seq + 5]
    prefix = _shape(graph, b, 0, -1)  # [batch, seq + 5] by a negative end: merged
    differs_in_second_dim = _shape(graph, c, None, None)  # [batch, seq]: equal first dim only
    no_shape = _shape(graph, unknown_shape, None, None)  # a value without shape information
    again_no_shape = _shape(graph, unknown_shape, None, None)
    other_domain = _shape(graph, foreign, None, None, domain="com.example")  # not ONNX's Shape
    values = [whole, prefix, differs_in_second_dim, no_shape, again_no_shape, other_domain]
    readers = _readers(graph, values)

    assert share_equal_shapes(graph) == 1
    assert [n.inputs[0] for n in readers] == [whole, whole, differs_in_second_dim, no_shape, again_no_shape,
                                              other_domain]


def test_twiddle_matrices_are_built_once_per_graph_not_per_layer(tiny_export: dict) -> None:
    one_layer = dataclasses.replace(get_config("tiny"), n_layers=1)
    profile = stages.resolve_profile(one_layer, DimRange("batch", 1, 2, 4), DimRange("seq", 1, 16, 40))
    graph = stages.lower_to_onnx(stages.export_program(build_model(one_layer, seed=0).eval(), profile),
                                 one_layer, profile, opset=21)
    counts = [collections.Counter(n.op_type for n in g.graph.node)
              for g in (graph, onnx.load(str(tiny_export["dir"] / "model.onnx")))]
    assert get_config("tiny").n_layers == 2
    assert counts[0]["Sin"] == counts[1]["Sin"] > 0  # the two-layer graph builds no more DFT matrices


def _cast(graph: ir.Graph, value: ir.Value, to: ir.DataType) -> ir.Value:
    node = ir.node("Cast", [value], attributes={"to": to})
    graph.append(node)
    node.outputs[0].dtype = to
    return node.outputs[0]


def test_float32_values_cast_to_float16_and_back_are_read_directly() -> None:
    x = ir.Value(name="x", shape=ir.Shape([4]), type=ir.TensorType(ir.DataType.FLOAT))
    ids = ir.Value(name="ids", shape=ir.Shape([4]), type=ir.TensorType(ir.DataType.INT64))
    graph = ir.Graph([x, ids], [], nodes=[], opset_imports={"": 21})
    down = _cast(graph, x, ir.DataType.FLOAT16)
    round_trip = _readers(graph, [_cast(graph, down, ir.DataType.FLOAT)])[0]  # the only reader of `down`
    shared = _cast(graph, x, ir.DataType.FLOAT16)
    both = _readers(graph, [_cast(graph, shared, ir.DataType.FLOAT), shared])  # `shared` is read in fp16 too
    integer = _readers(graph, [_cast(graph, _cast(graph, ids, ir.DataType.FLOAT16), ir.DataType.FLOAT)])[0]
    assert drop_cast_round_trips(graph) == 2
    assert round_trip.inputs[0] is x and both[0].inputs[0] is x  # the float32 value, as it was
    assert both[1].inputs[0] is shared  # the fp16 reader keeps its cast
    assert integer.inputs[0].producer().op_type == "Cast"  # int64 -> fp16 -> fp32 is no round trip of a float32
    assert [n.op_type for n in graph].count("Cast") == 3  # `down` and one up-cast gone; `shared` and two int casts
