"""TensorRT-RTX, a real NVIDIA ONNX parser and builder that runs on this CPU-only machine, parses and builds a graph
with every plugin chain (Python IPluginV3 adapters generated from the specs: output shapes and dtypes from the same
formulas as the QDP plugins), dynamic in batch and sequence; and its report names the node and op of a parse
failure or of a plugin node that did not become a PLUGIN_V3 layer."""

from __future__ import annotations

import pytest
import torch
from onnx import TensorProto, helper

from mahia.model import CONFIGS
from mahia.plugins_trt import moe_ffn
from mahia.plugins_trt.nodes import OPSET_IMPORT, OpCall, example_graph, example_shapes
from mahia.plugins_trt.rtx import RTX_PACKAGES, build_with_rtx, rtx_available

pytestmark = pytest.mark.skipif(not rtx_available(),
                                reason=f"TensorRT-RTX is not installed: pip install {RTX_PACKAGES}")

TINY = CONFIGS["tiny"]
SIZES = {"d_model": TINY.d_model, "heads": TINY.ssm_heads, "head_dim": TINY.ssm_head_dim, "state": TINY.d_state,
         "experts": TINY.num_experts, "hidden": TINY.expert_hidden}


def every_chain() -> list[OpCall]:
    moe = moe_ffn.chain_attributes(TINY.num_experts, TINY.top_k, opt_tokens=8 * 133)
    return [OpCall("gate", "gate_combine", {}), OpCall("hyena", "long_conv", {"causal": 1}),
            OpCall("fourier", "long_conv", {"causal": 0}), OpCall("ssd", "ssd_scan", {"chunk": TINY.chunk_size}),
            OpCall("moe", "moe_ffn", moe), OpCall("moe8", "moe_ffn_fp8", moe)]


def profile(model, points=((1, 6), (8, 133), (16, 517))) -> dict:
    low, opt, high = (example_shapes(model, b, s) for b, s in points)
    return {name: (low[name], opt[name], high[name]) for name in low}


def test_rtx_parses_and_builds_every_plugin_chain_and_names_a_node_that_became_a_function_body(tmp_path):
    """Every chain (18 plugin nodes) becomes PLUGIN_V3 layers and builds; one more node of the plugin domain, for
    which no plugin is registered but a model-local function exists, is imported as the function's body silently
    by the parser, and the report names it."""
    model = example_graph(every_chain(), SIZES, "float16", torch.Generator().manual_seed(0))
    plugin_nodes = [n.name for n in model.graph.node if n.domain == "mahia"]
    model.graph.node.append(helper.make_node("NotAPlugin", ["gate.logits"], ["imported.out"], name="imported",
                                             domain="mahia"))
    model.graph.output.append(helper.make_tensor_value_info("imported.out", TensorProto.FLOAT16, ["batch", "seq", 3]))
    model.functions.append(helper.make_function("mahia", "NotAPlugin", ["a"], ["b"],
                                                [helper.make_node("Identity", ["a"], ["b"])],
                                                [helper.make_opsetid("", 21)]))
    path = tmp_path / "plugins.onnx"
    path.write_bytes(model.SerializeToString())
    # FP8 expert weights need compute capability 8.9 or more ("Cannot compile for target(s) sm80, sm86").
    report = build_with_rtx(path, profile(model), tmp_path / "plugins.engine", compute_capabilities=("SM89", "SM120"))
    assert report.parsed and report.built, report.summary()
    assert len(plugin_nodes) == 18 and sorted(report.plugin_layers) == sorted(plugin_nodes)
    assert (tmp_path / "plugins.engine").stat().st_size == report.engine_bytes > 0
    index = len(model.graph.node) - 1
    assert [(f.node, f.name, f.op) for f in report.failures] == [(index, "imported", "NotAPlugin")]
    assert not report.ok and f"plugin coverage failed: node {index} 'imported' (NotAPlugin): not a PLUGIN_V3 layer" \
        in report.summary()


def _graph(nodes, outputs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "L", 8, 3])
    g = helper.make_tensor_value_info("g", TensorProto.FLOAT, ["B", "L", 3])
    return helper.make_model(helper.make_graph(nodes, "g", [x, g], outputs), ir_version=10,
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(*OPSET_IMPORT)])


GATE_ATTRS = {"plugin_namespace": "mahia", "plugin_version": "1", "aot": 1}
SMALL_PROFILE = {"x": ((1, 1, 8, 3), (2, 4, 8, 3), (4, 8, 8, 3)), "g": ((1, 1, 3), (2, 4, 3), (4, 8, 3))}


def test_rtx_names_the_node_it_cannot_parse(tmp_path):
    model = _graph([helper.make_node("GateCombine", ["x", "g"], ["out"], name="gate", domain="mahia", **GATE_ATTRS),
                    helper.make_node("GateCombine", ["x"], ["out3"], name="one_input", domain="mahia", **GATE_ATTRS)],
                   [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "L", 8]) for n in ("out", "out3")])
    (tmp_path / "m.onnx").write_bytes(model.SerializeToString())
    report = build_with_rtx(tmp_path / "m.onnx", SMALL_PROFILE)
    assert not report.parsed and not report.ok
    assert [(f.node, f.name, f.op) for f in report.failures] == [(1, "one_input", "GateCombine")]
    assert any("GateCombine: 1 inputs, expected 2 (branches, logits)" in line for line in report.errors)
