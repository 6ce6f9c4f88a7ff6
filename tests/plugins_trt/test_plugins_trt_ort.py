"""The wiring check: a graph's plugin nodes run in ONNX Runtime by their launch references (onnxruntime-extensions
Python ops on an in-memory copy, float32 inside), and each op call's output matches the op's own float64 reference;
a node with swapped inputs or a wrong attribute fails the check."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from mahia.model import CONFIGS
from mahia.plugins_trt import moe_ffn
from mahia.plugins_trt.nodes import OpCall, example_graph, example_shapes
from mahia.plugins_trt.ort import ORT_EXT_PACKAGE, WiringError, wiring_model, wiring_session
from mahia.plugins_trt.verify import op_reference, written_rel_error

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_extensions") is None,
                                reason=f"onnxruntime-extensions is not installed: pip install {ORT_EXT_PACKAGE}")

TINY = CONFIGS["tiny"]
SIZES = {"d_model": TINY.d_model, "heads": TINY.ssm_heads, "head_dim": TINY.ssm_head_dim, "state": TINY.d_state,
         "experts": TINY.num_experts, "hidden": TINY.expert_hidden}
MOE = moe_ffn.chain_attributes(TINY.num_experts, TINY.top_k, opt_tokens=8 * 133)
CALLS = [OpCall("gate", "gate_combine", {}), OpCall("hyena", "long_conv", {"causal": 1}),
         OpCall("fourier", "long_conv", {"causal": 0}), OpCall("ssd", "ssd_scan", {"chunk": TINY.chunk_size}),
         OpCall("moe", "moe_ffn", MOE), OpCall("moe8", "moe_ffn_fp8", MOE)]
# The graph's dtype bounds each call's rel. L2 error against float64 (inputs and outputs rounded to it).
TOLERANCE = {"float32": 1e-5, "float16": 3e-3}


def feeds(model: onnx.ModelProto, batch: int, seq: int, generator: torch.Generator) -> dict[str, np.ndarray]:
    """Random inputs in the model's ranges (dt > 0, long filters scaled by 1/sqrt(L), padded MoE positions)."""
    out = {}
    for value, shape in zip(model.graph.input, example_shapes(model, batch, seq).values(), strict=True):
        name, elem = value.name, value.type.tensor_type.elem_type
        raw = torch.randn(shape, generator=generator)
        if name.endswith(".mask"):
            out[name] = (torch.rand(shape, generator=generator) > 0.2).numpy()
            continue
        if name.endswith(".dt"):
            raw = F.softplus(raw - 2.0)
        elif name.endswith(".filt"):
            raw = raw * seq ** -0.5
        elif name.endswith((".b", ".c")):
            raw = raw * 0.5
        out[name] = raw.numpy().astype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    return out


def tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype.name == "float8_e4m3fn":
        return torch.from_numpy(array.view(np.uint8).copy()).view(torch.float8_e4m3fn)
    return torch.from_numpy(np.array(array))


def call_errors(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Run the wiring session; each call's rel. L2 error against its op reference in float64."""
    session = wiring_session(model)
    results = dict(zip((o.name for o in model.graph.output), session.run(None, inputs), strict=True))
    values = {k: tensor(v) for k, v in inputs.items()}
    values |= {w.name: tensor(numpy_helper.to_array(w)) for w in model.graph.initializer}
    errors = {}
    for call in CALLS:
        args = {k.removeprefix(f"{call.name}."): v for k, v in values.items() if k.startswith(f"{call.name}.")}
        args = {k: v.double() if v.is_floating_point() and v.dtype != torch.float8_e4m3fn and "scale" not in k else v
                for k, v in args.items() if not k.endswith("_shape")}
        if call.op.startswith("moe"):
            d_model = args["x"].shape[-1]
            args |= {"x": args["x"].reshape(-1, d_model), "mask": args["mask"].reshape(-1),
                     "router_logits": args["router_logits"].reshape(-1, args["router_logits"].shape[-1])}
        ref = op_reference(call.op, args, call.attributes)
        errors[call.name] = written_rel_error(torch.from_numpy(results[f"{call.name}.out"].astype(np.float64)),
                                              ref.reshape(results[f"{call.name}.out"].shape))
    return errors


@pytest.fixture(scope="module")
def graphs() -> dict[str, onnx.ModelProto]:
    return {dtype: example_graph(CALLS, SIZES, dtype, torch.Generator().manual_seed(7)) for dtype in TOLERANCE}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("batch, seq", [(3, 37), (1, 6)])
def test_plugin_nodes_run_their_references_and_match_the_ops(graphs, generator, dtype, batch, seq):
    errors = call_errors(graphs[dtype], feeds(graphs[dtype], batch, seq, generator))
    assert max(errors.values()) < TOLERANCE[dtype], (errors, generator.initial_seed())


def test_the_copy_ort_runs_keeps_the_wiring_and_casts_float16_around_plugins(graphs):
    model = graphs["float16"]
    copy = wiring_model(model)
    assert [n for n in model.graph.node if n.domain == "mahia"], "the graph keeps its domain"
    plugins = {n.name: n for n in copy.graph.node if n.domain == "ai.onnx.contrib"}
    originals = {n.name: n for n in model.graph.node if n.domain == "mahia"}
    assert plugins.keys() == originals.keys()
    for name, node in plugins.items():
        assert node.attribute[:-2] == originals[name].attribute  # then the node's name and the session token
        assert [a.name for a in node.attribute[-2:]] == ["mahia_node", "mahia_session"]
    ssd_out = plugins["ssd/SsdChunkOutput"]
    assert list(ssd_out.input[:2]) == ["ssd/SsdChunkOutput/x:f32", "ssd/SsdChunkOutput/dt:f32"]
    assert list(ssd_out.input[4:]) == ["ssd/cb", "ssd/states"]  # float32 intermediates go straight through
    assert {(o.domain, o.version) for o in copy.opset_import} == {("", 21), ("ai.onnx.contrib", 1)}


def mutated(model: onnx.ModelProto, node_name: str, change) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    change(next(n for n in copy.graph.node if n.name == node_name))
    return copy


def set_attribute(name: str, value: int):
    def change(node):
        for attribute in node.attribute:
            if attribute.name == name:
                attribute.CopyFrom(helper.make_attribute(name, value))
    return change


def test_swapped_inputs_fail_the_check(graphs, generator):
    model = graphs["float32"]
    inputs = feeds(model, 3, 37, generator)

    def swap(node):
        node.input[0], node.input[1] = node.input[1], node.input[0]

    errors = call_errors(mutated(model, "ssd/SsdChunkCb", swap), inputs)  # C B^T instead of B C^T... transposed
    assert errors["ssd"] > 0.05 and max(v for k, v in errors.items() if k != "ssd") < TOLERANCE["float32"], errors
    errors = call_errors(mutated(model, "moe/MoeCombine", lambda n: n.input.__setitem__(1, "moe8/weights")), inputs)
    assert errors["moe"] > 0.05, errors


@pytest.mark.parametrize("node, attribute, value, message", [
    ("moe/MoeCombine", "top_k", 1, r"'moe/MoeCombine': .* input expert_out has shape \[222, 32\], expected \[TK, D\]"),
    ("moe/MoePlan", "block_m", 16, r"plugin node 'moe/MoeUp': ValueError: MoeUp: input block_expert has shape"),
    ("hyena/LongConv", "causal", 0, r"LongConv: input filt has shape \[32, 37\], expected \[D, F\] = \[32, 73\]"),
    ("ssd/SsdChunkStates", "chunk", 32, r"SsdChunkOutput: input states has shape"),
])
def test_a_wrong_attribute_fails_the_check_naming_the_plugin(graphs, generator, node, attribute, value, message):
    model = mutated(graphs["float32"], node, set_attribute(attribute, value))
    with pytest.raises(WiringError, match=message):
        call_errors(model, feeds(model, 3, 37, generator))


def test_a_missing_attribute_or_unknown_plugin_is_refused(graphs):
    model = mutated(graphs["float32"], "moe/MoePlan", lambda n: n.attribute.pop())
    with pytest.raises(Exception, match="num_experts"):
        wiring_session(model)
    model = mutated(graphs["float32"], "gate/GateCombine", lambda n: setattr(n, "op_type", "GateCombo"))
    with pytest.raises(ValueError, match="plugin node 'gate/GateCombine': no plugin 'GateCombo'"):
        wiring_model(model)
