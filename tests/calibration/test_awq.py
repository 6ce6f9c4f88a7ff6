"""AWQ-style int4: our model of ONNX Runtime's blocked rounding, the scale and clip search, the graph edit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mahia.calibration.awq import ActivationSample, apply_scales, blocked_int4, search_scale
from mahia.calibration.quantize import quantize_int4


def _matmul_graph(weight: np.ndarray) -> onnx.ModelProto:
    k, n = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "one_matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("k, block", [(64, 32), (70, 32), (96, 128)])
def test_blocked_rounding_is_onnx_runtimes(tmp_path, k: int, block: int) -> None:
    rng = np.random.default_rng(k + block)
    weight = (rng.standard_normal((k, 24)) * rng.uniform(0.1, 3.0, (k, 1))).astype(np.float32)
    path = tmp_path / "float.onnx"
    onnx.save(_matmul_graph(weight), str(path))
    quantized = onnx.load(str(quantize_int4(path, tmp_path / "int4.onnx", block, keep_float_pattern=r"$^")))
    dequantized = _run(quantized, np.eye(k, dtype=np.float32))  # identity rows read the weight back
    # atol: ORT fuses the DequantizeLinear into its MatMulNBits kernel, whose float sums leave ~5e-7 on zeros.
    np.testing.assert_allclose(dequantized, blocked_int4(weight, block), rtol=1e-6, atol=2e-6)


def test_scale_and_clip_search_beats_plain_rounding_on_outlier_channels() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1024, 96))
    x[:, :4] *= 30.0  # a few salient input channels, as LLM activations have
    weight = rng.standard_normal((96, 40)) / 10
    sample = ActivationSample(np.abs(x).mean(axis=0), x)
    choice = search_scale("mm", sample, weight, block_size=32)
    assert choice.alpha > 0 and choice.error_awq < 0.7 * choice.error_rounding
    plain = np.linalg.norm(x @ blocked_int4(weight, 32) - x @ weight) / np.linalg.norm(x @ weight)
    assert choice.error_rounding == pytest.approx(plain, rel=1e-9)


def test_scaled_graph_divides_the_activation_by_the_scale() -> None:
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((48, 16)).astype(np.float32)
    x = rng.standard_normal((5, 48)).astype(np.float32)
    sample = ActivationSample(np.abs(x).mean(axis=0), x)
    choice = search_scale("mm", sample, weight, block_size=32)
    scaled = apply_scales(_matmul_graph(weight), [choice])
    assert [n.op_type for n in scaled.graph.node] == ["Mul", "MatMul"]
    want = (x / choice.scales) @ choice.weight  # the clipped, scaled weight against the divided activation
    np.testing.assert_allclose(_run(scaled, x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="scales from another model"):
        apply_scales(_matmul_graph(weight[:40]), [choice])

