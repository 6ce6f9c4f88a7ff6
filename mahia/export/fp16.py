"""The fp16 conversion of an fp32 ONNX graph, shared by the portable fp16 build (precisions.build_fp16) and the
TensorRT fp16 graph (trt_graphs.tensorrt_graph): ONNX Runtime's float16 converter, the op types it must leave in
fp32, and the nodes the model needs in fp32 (found by the class hierarchy that lower_to_onnx keeps on each node)."""

from __future__ import annotations

import ast
from collections.abc import Mapping

import onnx
import onnx_ir
from torch import nn

from mahia.export import graph_passes
from mahia.model.meta_attention import SSDBranch
from mahia.model.norm import RMSNorm

# torch.onnx's per-node list of the module classes (and, last, the op) a node was traced in, e.g.
# ['mahia.model.mahia_x.MahiaX', ..., 'mahia.model.meta_attention.SSDBranch', 'aten.softplus.default'].
CLASS_HIERARCHY_KEY = "pkg.torch.onnx.class_hierarchy"

# Ops kept in fp32 in the fp16 graph. ONNX Runtime's CPU provider has no fp16 kernel for the ops in
# onnxruntime.transformers.float16.DEFAULT_OP_BLOCK_LIST (ours use TopK, Range, CumSum) nor for
# ScatterND with reduction "add" (the sparse MoE's accumulation); DFT has one but loses accuracy at long
# sequences (the reference also runs its FFT in fp32): measured 2.8e-3 vs 5.4e-4 relative logit error at
# 8 x 128 on `tiny`. Cos and Sin build the MatMul DFT's twiddles: in fp16 their phases would round.
FP16_EXTRA_BLOCKED_OPS = ("DFT", "ScatterND", "Cos", "Sin")


def fp16_block_list() -> list[str]:
    """Op types the fp16 converter leaves in fp32."""
    from onnxruntime.transformers import float16

    return list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_EXTRA_BLOCKED_OPS)


def fp32_nodes(graph: onnx.GraphProto) -> list[str]:
    """The nodes the fp16 graph keeps in fp32 besides the blocked op types: those traced in an RMSNorm (the model
    normalises in float32), and the SSD branches' scans and gated norms (traced in an SSDBranch, outside its Linear
    layers).

    Why: the trained default passes fp16's largest value, 65504. Measured on this CPU (`mahia-export --precision
    fp16`, 2026-12-01): the third block's SSD chunk sums reached 62784 and inf, a pre-norm's squares 64928, and every
    logit was NaN at all four parity points. Past the SSD's RMSNorm its largest value is about 400.
    """
    norm, ssd, linear = (f"{cls.__module__}.{cls.__qualname__}" for cls in (RMSNorm, SSDBranch, nn.Linear))
    names = []
    for node in graph.node:
        classes = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == CLASS_HIERARCHY_KEY), [])
        if norm in classes or (ssd in classes and linear not in classes):
            names.append(node.name)
    return names


def to_float16(fp32: onnx.ModelProto, dtypes: Mapping[str, int] | None = None) -> tuple[onnx.ModelProto, list[str]]:
    """The fp16 graph of an fp32 graph, and the names of the nodes it keeps in fp32 (fp32_nodes) besides the blocked op
    types: float16 weights and activations, fp32 inputs and outputs. The portable fp16 build and the TensorRT fp16
    graph both come from here.

    `dtypes` (tensor name -> ONNX elem type) types what ONNX shape inference cannot, the tensors after a plugin node
    (trt_graphs.tensor_dtypes): the converter casts only the values it has a type for.

    Uses ONNX Runtime's float16 converter (onnxruntime.transformers.float16), the maintained copy of
    onnxconverter-common's: onnxconverter-common 1.16 leaves Cast(to=float) nodes fed by integer
    tensors while annotating their outputs float16, which ONNX Runtime rejects (measured).
    """
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    source = onnx.ModelProto()
    source.CopyFrom(fp32)  # the converter edits its argument in place
    if dtypes:
        typed = {v.name for v in (*source.graph.input, *source.graph.output, *source.graph.value_info)}
        source.graph.value_info.extend(onnx.helper.make_tensor_value_info(name, elem, None)
                                       for name, elem in dtypes.items() if name not in typed)
    kept_fp32 = fp32_nodes(source.graph)
    # Shape inference stays on: without value types the converter feeds blocked ops (ScatterND-add)
    # float16 inputs, which ONNX Runtime rejects (measured).
    converted = float16.convert_float_to_float16(source, keep_io_types=True, op_block_list=fp16_block_list(),
                                                 node_block_list=kept_fp32, disable_shape_infer=False)
    ir_model = onnx_ir.serde.deserialize_model(converted)  # typed by the converter's value_info
    graph_passes.drop_cast_round_trips(ir_model.graph)  # adjacent fp32 nodes pass values in fp32
    converted = onnx_ir.serde.serialize_model(ir_model)
    del converted.graph.value_info[:]  # as for fp32: DFT shapes must be re-inferred by the runtime
    OnnxModel(converted).topological_sort()  # the converter appends its input casts after their consumers
    return converted, kept_fp32
