"""Which ONNX nodes get quantized, and which eager tensor each quantized ONNX tensor corresponds to.

A MatMul/Gemm is tied to its eager layer by its weight: the ONNX initializer holds the same numbers
as the module's parameter (transposed for MatMul, as is for Gemm with transB=1; the sparse MoE
lowering's per-expert weights are w1[e] / w2[e] transposed), so a digest of the bytes finds the layer
and expert whatever the exporter named things and whether or not it kept node metadata. When a graph
still has torch.onnx's `pkg.torch.onnx.name_scopes` metadata, that names the layer too.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from mahia.calibration.data import CalibrationError

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# Precision-sensitive layers stay in float: routers and gates (a softmax/top-k decision follows), the
# fabric gate, the implicit long-filter MLPs (their taps feed the FFT) and the classifier head.
KEEP_FLOAT_PATTERN = r"(^|\.)(router|gate|fabric|head)(\.|$)|\.filter\."
MOE_ROLES = ("w1", "w2")


@dataclass(frozen=True)
class QuantizableNode:
    """One MatMul/Gemm with a weight initializer: its activation input, weight and the eager tensors behind it."""

    node: str
    op_type: str
    layer: str  # module path; `<moe path>.experts.w1` / `.w2` for the batched expert matmuls; else the node name
    activation: str  # ONNX tensor name of the activation input
    weight: str  # ONNX initializer name
    eager: tuple[str, ...] = field(default=())  # eager tensors whose range this activation takes (max over them)
    keep_float: bool = False


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha256(f"{array.shape}".encode() + array.tobytes()).hexdigest()


def parameter_index(model: nn.Module) -> dict[str, tuple[str, str, int | None]]:
    """Digest of each weight as an ONNX graph may hold it -> (module path, role, expert).

    role is "linear", or "w1" / "w2" of a mixture of experts; expert is the expert's index for a
    per-expert weight, None for a batched [E, ...] one.
    """
    index: dict[str, tuple[str, str, int | None]] = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.detach().float().numpy()
            index[_digest(weight)] = (path, "linear", None)
            index[_digest(weight.T)] = (path, "linear", None)
        for role in MOE_ROLES:
            param = getattr(module, role, None)
            if isinstance(param, nn.Parameter) and param.dim() == 3:
                batched = param.detach().float().transpose(1, 2).numpy()
                index[_digest(batched)] = (path, role, None)
                for expert, weight in enumerate(batched):
                    index[_digest(weight)] = (path, role, expert)
    return index


def _scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [str(v) for v in value] if isinstance(value, list) else []
    return []


def _eager_sources(path: str, role: str, expert: int | None, eager: set[str]) -> tuple[str, ...]:
    if role == "linear":
        return (f"{path}:input",) if f"{path}:input" in eager else ()
    # One expert's tokens, where calibration routed any to it; else every token (w1) or every expert (w2).
    own = f"{path}/moe_ffn:expert{expert}.{'input' if role == 'w1' else 'hidden'}"
    if expert is not None and own in eager:
        return (own,)
    if role == "w1":
        return (f"{path}/moe_ffn:x",) if f"{path}/moe_ffn:x" in eager else ()
    return tuple(sorted(n for n in eager if n.startswith(f"{path}/moe_ffn:expert") and n.endswith(".hidden")))


def quantizable_nodes(model: onnx.ModelProto, eager_names: list[str] | None = None,
                      parameters: dict[str, tuple[str, str, int | None]] | None = None,
                      keep_float_pattern: str = KEEP_FLOAT_PATTERN) -> list[QuantizableNode]:
    """MatMul/Gemm nodes whose weight (input B) is an initializer, with their layer and eager sources.

    `parameters` (from `parameter_index` of the eager model) ties nodes to layers by weight; without
    it, torch.onnx's scope metadata is used when present, else the node name. With `eager_names`,
    every node that is not kept in float must match an eager tensor; the ones that do not are listed
    (the ranges and the graph come from different models).
    """
    initializers = {i.name: i for i in model.graph.initializer}
    eager = set(eager_names or [])
    found: list[QuantizableNode] = []
    moe_calls: dict[str, int] = {}
    unmatched = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        if node.input[1] not in initializers or node.input[0] in initializers:
            continue
        weight = initializers[node.input[1]]
        where = None
        if parameters is not None:
            where = parameters.get(_digest(numpy_helper.to_array(weight)))
        if where is None and (scopes := _scopes(node)):
            module, call = (scopes[-2] if len(scopes) >= 2 else ""), scopes[-1]
            if call.startswith("moe_ffn") and len(weight.dims) == 3:
                count = moe_calls[f"{module}/{call}"] = moe_calls.get(f"{module}/{call}", 0) + 1
                where = (module, MOE_ROLES[min(count, 2) - 1], None)
            elif module:
                where = (module, "linear", None)
        if where is None:
            layer, sources = node.name, ()
        else:
            path, role, expert = where
            layer = path if role == "linear" else f"{path}.experts.{role}"
            sources = _eager_sources(path, role, expert, eager)
        keep = bool(re.search(keep_float_pattern, layer))
        if eager_names is not None and not sources and not keep:
            unmatched.append(f"{node.name} ({node.op_type}, weight {weight.name} {list(weight.dims)}, layer {layer})")
        found.append(QuantizableNode(node.name, node.op_type, layer, node.input[0], node.input[1], sources, keep))
    if unmatched:
        raise CalibrationError("calibration ranges do not fit this ONNX graph (ranges or graph from another model?): "
                               f"no eager range for {len(unmatched)} node(s): {'; '.join(unmatched)}")
    return found
