"""Q/DQ int8 / fp8 and blocked int4 quantization of ONNX graphs, on a small synthetic MatMul/Gemm graph."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mahia.calibration.data import CalibrationError
from mahia.calibration.quantize import QuantizeOptions, quantize_int4, quantize_qdq, restore_float
from mahia.calibration.sensitivity import (
    layer_sensitivity,
    output_error,
    plan_mixed,
    run_onnx,
    sensitivity_markdown,
    sensitivity_plot,
)
from mahia.calibration.table import CalibrationTable, TensorRange

K, H, N = 64, 96, 48


def _graph(path, rng: np.random.Generator) -> None:
    """x -> MatMul(w1) -> Sigmoid -> MatMul(w2) -> + x MatMul(w3) -> flatten -> Gemm(w4, transB) -> y.

    x [batch, seq, K] feeds two MatMuls, as a normed hidden state does in the model. Sigmoid, not Relu:
    ONNX Runtime 1.32's optimizer removes a Relu in front of a float8 QuantizeLinear (wrong outputs,
    measured 0.65 relative error) and does not fuse DQ -> MatMul -> Relu into an integer MatMul;
    MAHIA-X has no Relu."""
    w = {"w1": rng.standard_normal((K, H)) / K ** 0.5, "w2": rng.standard_normal((H, N)) / H ** 0.5,
         "w3": rng.standard_normal((K, N)) / K ** 0.5, "w4": rng.standard_normal((10, N)) / N ** 0.5,
         "b4": rng.standard_normal(10) * 0.1}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    inits.append(numpy_helper.from_array(np.array([-1, N], dtype=np.int64), "flat"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Sigmoid", ["h"], ["r"], name="sigmoid"),
             helper.make_node("MatMul", ["r", "w2"], ["a"], name="mm2"),
             helper.make_node("MatMul", ["x", "w3"], ["b"], name="mm3"),
             helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             helper.make_node("Reshape", ["s", "flat"], ["s2"], name="flatten"),
             helper.make_node("Gemm", ["s2", "w4", "b4"], ["y"], name="gemm", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def _table(path, feeds, dtype: str) -> CalibrationTable:
    """Max calibration over the feeds, read from the float graph's intermediate tensors."""
    model = onnx.load(str(path))
    for name in ("x", "r", "s2"):
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [session.run(["x", "r", "s2"], f) for f in feeds]
    qmax = 127.0 if dtype == "int8" else 448.0
    tensors = {}
    for i, name in enumerate(("x", "r", "s2")):
        amax = float(max(np.abs(r[i]).max() for r in runs))
        tensors[name] = TensorRange(amax, float(np.float32(amax / qmax)), 0, dtype, "max", None, len(feeds), "0" * 64)
    nodes = {"mm1": "layer1", "mm2": "layer2", "mm3": "layer3", "gemm": "layer4"}
    return CalibrationTable(dtype, "max", len(feeds), "0" * 64, tensors, {}, {}, nodes)


@pytest.fixture
def float_graph(tmp_path, generator):
    rng = np.random.default_rng(int(generator.initial_seed()))
    path = tmp_path / "float.onnx"
    _graph(path, rng)
    feeds = [{"x": rng.standard_normal((b, t, K)).astype(np.float32)} for b, t in ((1, 1), (3, 37), (8, 16))]
    reference = run_onnx(path, feeds)
    return path, feeds, reference


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def test_int8_is_signed_symmetric_per_channel_with_table_scales(float_graph, tmp_path) -> None:
    path, feeds, reference = float_graph
    table = _table(path, feeds, "int8")
    out = quantize_qdq(path, table, tmp_path / "int8.onnx", QuantizeOptions("int8"))
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    quantize_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert {n.input[0] for n in quantize_nodes} == {"x", "r", "s2"}
    for node in quantize_nodes:
        zero_point = inits[node.input[2]]
        assert zero_point.data_type == TensorProto.INT8 and not numpy_helper.to_array(zero_point).any()
        scale = numpy_helper.to_array(inits[node.input[1]])
        assert scale.tobytes() == np.float32(table.tensors[node.input[0]].scale).tobytes()  # bit-exact from the table
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                 and inits[n.input[0]].data_type == TensorProto.INT8 and len(inits[n.input[0]].dims) == 2]
    assert len(weight_dq) == 4
    for node in weight_dq:
        channels = numpy_helper.to_array(inits[node.input[1]]).shape
        weight_shape = tuple(inits[node.input[0]].dims)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        assert channels == (weight_shape[axis],)  # per output channel
    error = output_error(run_onnx(out, feeds), reference)
    assert error.rel_l2_error < 0.03 and error.argmax_agreement >= 0.9


def test_every_consumer_gets_its_own_qdq_pair_and_ort_fuses_integer_matmuls(float_graph, tmp_path) -> None:
    path, feeds, reference = float_graph
    out = quantize_qdq(path, _table(path, feeds, "int8"), tmp_path / "int8.onnx", QuantizeOptions("int8"))
    model = onnx.load(str(out))
    producers = {o: n for n in model.graph.node for o in n.output}
    mm1, mm3 = (next(n for n in model.graph.node if n.name == name) for name in ("mm1", "mm3"))
    dq1, dq3 = producers[mm1.input[0]], producers[mm3.input[0]]
    assert dq1.op_type == dq3.op_type == "DequantizeLinear" and dq1.name != dq3.name
    assert producers[dq1.input[0]].name != producers[dq3.input[0]].name  # separate QuantizeLinear nodes too
    readers = collections.Counter(i for n in model.graph.node for i in n.input)
    assert all(readers[n.output[0]] == 1 for n in model.graph.node if n.op_type == "DequantizeLinear")

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    fused = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert fused["MatMulIntegerToFloat"] == 3, fused  # mm1, mm2, mm3 run as integer matmuls


def test_fp8_uses_e4m3fn_with_amax_over_448_weight_scales(float_graph, tmp_path) -> None:
    path, feeds, reference = float_graph
    table = _table(path, feeds, "float8e4m3fn")
    out = quantize_qdq(path, table, tmp_path / "fp8.onnx", QuantizeOptions("fp8"))
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    types = {inits[n.input[2]].data_type for n in model.graph.node
             if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert types == {TensorProto.FLOAT8E4M3FN}
    w1_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in
                 next(m for m in model.graph.node if m.name == "mm1").input)
    scales = numpy_helper.to_array(inits[w1_dq.input[1]])
    w1 = _initializer(onnx.load(str(path)), "w1")
    np.testing.assert_allclose(scales, np.abs(w1).max(axis=0) / 448.0, rtol=1e-6)
    error = output_error(run_onnx(out, feeds), reference)
    assert error.rel_l2_error < 0.06 and error.argmax_agreement >= 0.9


@pytest.mark.parametrize("block", [32, 64])
def test_int4_is_blocked_weight_only(float_graph, tmp_path, block: int) -> None:
    path, feeds, reference = float_graph
    out = quantize_int4(path, tmp_path / "int4.onnx", block_size=block, keep_float_pattern=r"$^")
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    blocked = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(blocked) == 3  # the three MatMuls; Gemm is not a MatMulNBits target
    for node in blocked:
        assert inits[node.input[0]].data_type == TensorProto.INT4
        assert next(a.i for a in node.attribute if a.name == "block_size") == block
    assert not any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # activations stay float
    error = output_error(run_onnx(out, feeds), reference)
    assert error.rel_l2_error < 0.15
    with pytest.raises(CalibrationError, match="block size must be one of"):
        quantize_int4(path, tmp_path / "bad.onnx", block_size=48)


def test_restoring_a_layer_to_float_equals_never_quantizing_it(float_graph, tmp_path) -> None:
    path, feeds, _ = float_graph
    table = _table(path, feeds, "int8")
    full = onnx.load(str(quantize_qdq(path, table, tmp_path / "full.onnx", QuantizeOptions("int8"))))
    restored = restore_float(full, onnx.load(str(path)), {"mm2"})
    onnx.checker.check_model(restored, full_check=True)
    onnx.save(restored, str(tmp_path / "restored.onnx"))
    direct = quantize_qdq(path, table, tmp_path / "direct.onnx",
                          QuantizeOptions("int8", keep_float_layers=frozenset({"layer2"})))
    np.testing.assert_array_equal(run_onnx(tmp_path / "restored.onnx", feeds), run_onnx(direct, feeds))
    assert "r" not in {n.input[0] for n in restored.graph.node if n.op_type == "QuantizeLinear"}


def test_table_that_does_not_fit_the_graph_is_refused(float_graph, tmp_path) -> None:
    path, feeds, _ = float_graph
    table = _table(path, feeds, "int8")
    alien = CalibrationTable("int8", "max", 3, "0" * 64, table.tensors, {}, {}, {**table.nodes, "mm9": "layer9"})
    with pytest.raises(CalibrationError, match="lacks.*mm9"):
        quantize_qdq(path, alien, tmp_path / "x.onnx")
    partial = CalibrationTable("int8", "max", 3, "0" * 64, {k: v for k, v in table.tensors.items() if k != "r"}, {}, {},
                               table.nodes)
    with pytest.raises(CalibrationError, match="lacks 1 tensor.*: r"):
        quantize_qdq(path, partial, tmp_path / "x.onnx")
    with pytest.raises(CalibrationError, match="table is for int8, but fp8 needs float8e4m3fn"):
        quantize_qdq(path, table, tmp_path / "x.onnx", QuantizeOptions("fp8"))


def test_mixed_plan_meets_the_budget_or_names_the_limiting_layers(float_graph, tmp_path) -> None:
    path, feeds, reference = float_graph
    table = _table(path, feeds, "int8")
    full = onnx.load(str(quantize_qdq(path, table, tmp_path / "full.onnx", QuantizeOptions("int8"))))
    original = onnx.load(str(path))
    node_of = {layer: node for node, layer in table.nodes.items()}

    def quantize(keep: frozenset[str], out):
        onnx.save(restore_float(full, original, {node_of[l] for l in keep}), str(out))
        return out

    rows = layer_sensitivity(sorted(node_of), "int8", quantize, feeds, reference)
    assert [r.rel_l2_error for r in rows] == sorted((r.rel_l2_error for r in rows), reverse=True)
    everything = output_error(run_onnx(quantize(frozenset(), tmp_path / "all.onnx"), feeds), reference).rel_l2_error
    float_error = output_error(reference, reference)
    plan, graph = plan_mixed(rows, "int8", quantize, feeds, reference, everything * 0.6, float_error, tmp_path)
    assert plan.error.rel_l2_error <= everything * 0.6 and graph.is_file()
    kept = [layer for layer, precision in plan.precisions.items() if precision == "fp32"]
    assert kept and set(kept) == {r.layer for r in rows[: len(kept)]}
    assert "fp32" in sensitivity_markdown(rows, plan) and sensitivity_plot(rows, "t", plan)[:4] == b"\x89PNG"
    with pytest.raises(CalibrationError,
                       match="no mixed assignment meets accuracy budget 1e-09.*most limiting layers are layer"):
        plan_mixed(rows, "int8", quantize, feeds, reference, 1e-9, float_error, tmp_path)
    with pytest.raises(CalibrationError, match="the float graph alone has relative error"):
        plan_mixed(rows, "int8", quantize, feeds, reference, 1e-9, output_error(reference * 1.01, reference), tmp_path)
