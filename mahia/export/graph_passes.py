"""Post-export ONNX graph passes (onnx_ir, in place) that the exporter's own optimizer does not do."""

from __future__ import annotations

import onnx_ir as ir


def share_equal_shapes(graph: ir.Graph) -> int:
    """Give every `Shape` node that reads the same symbolic dims one output value; returns how many it merged.

    The custom-op lowerings take sizes from their own inputs, so each long convolution rebuilds its DFT
    twiddle matrices from its own `Shape` node although every call sees the same `seq + k` tokens.
    torch.export names equal sizes by equal symbolic expressions; once those `Shape` nodes share one
    output, common-subexpression elimination merges everything computed from it (one set of twiddles
    per graph instead of one per call). Graph nodes are in topological order, so the first node of each
    group is computed before every consumer of the later ones.
    """
    first: dict[tuple[object, ...], ir.Value] = {}
    merged = 0
    for node in graph:
        if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or node.inputs[0].shape is None:
            continue
        dims = list(node.inputs[0].shape.dims)
        start = node.attributes.get_int("start", 0)
        end_attr = node.attributes.get("end")
        selected = dims[start:] if end_attr is None else dims[start:end_attr.as_int()]
        if not selected or any(isinstance(d, ir.SymbolicDim) and d.value is None for d in selected):
            continue  # an unknown dim equals nothing we can prove
        key = tuple(d if isinstance(d, int) else str(d.value) for d in selected)
        if key in first:
            ir.convenience.replace_all_uses_with(node.outputs[0], first[key])
            merged += 1
        else:
            first[key] = node.outputs[0]
    return merged


def drop_cast_round_trips(graph: ir.Graph) -> int:
    """Read every Cast(to float32) of a Cast(to float16) of a float32 value from that value instead, and drop the
    casts left unused; returns how many round trips it removed. Needs the values' types (shape inference).

    ONNX Runtime's fp16 converter keeps a blocked node in fp32 by casting its inputs up and its outputs down, node
    by node: between two blocked nodes the value still passes through float16, and overflows there as before.
    """
    removed = 0
    for node in list(graph):
        if node.op_type != "Cast" or node.attributes.get_int("to") != ir.DataType.FLOAT:
            continue
        down = node.inputs[0].producer()
        if down is None or down.op_type != "Cast" or down.attributes.get_int("to") != ir.DataType.FLOAT16:
            continue
        source, up = down.inputs[0], node.outputs[0]
        if source.dtype != ir.DataType.FLOAT or up.is_graph_output():
            continue
        ir.convenience.replace_all_uses_with(up, source)
        graph.remove(node, safe=True)
        removed += 1
        if not down.outputs[0].uses() and not down.outputs[0].is_graph_output():
            graph.remove(down, safe=True)
    return removed
