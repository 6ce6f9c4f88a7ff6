"""Quantized builds of the real exported graph (tiny config): int8 / fp8 / int4 / auto, tables that key
the exported ONNX tensors, and a table or model that does not fit being refused by name."""

from __future__ import annotations

import dataclasses
import json
import struct

import onnx
import pytest
from onnx import numpy_helper

from mahia.calibration.build import build_quantized
from mahia.calibration.data import CalibrationDataConfig, CalibrationError, load_calibration_data
from mahia.calibration.onnx_names import parameter_index, quantizable_nodes
from mahia.calibration.ranges import collect_ranges
from mahia.calibration.recipes import RECIPES, AutoRecipe, CalibrationOptions, Fp8Recipe, Int4Recipe, Int8Recipe
from mahia.calibration.table import read_trt_cache
from mahia.data import load_reviews
from mahia.model import build_model, get_config

SAMPLES = 32


@pytest.fixture(scope="module")
def exported(tiny_export: dict):
    """The eager model, the fp32 graph `mahia-export --config tiny` wrote (the lowering's bytes, as
    tests/export/test_export_pipeline.py checks: lowering it here again took 20 s) and the calibration data."""
    config = get_config("tiny")
    model = build_model(config, seed=0).eval()
    graph = onnx.load(str(tiny_export["dir"] / "model.onnx"))
    data = load_calibration_data(config, CalibrationDataConfig(samples=SAMPLES, batch_size=16),
                                 dataset=load_reviews()["train"])
    return model, graph, data


def _options(**changes) -> CalibrationOptions:
    return CalibrationOptions(samples=SAMPLES, sensitivity_samples=8, sensitivity_max_len=48, **changes)


def test_int8_build_keys_tables_by_exported_tensor_names(exported, tmp_path) -> None:
    model, graph, data = exported
    built = build_quantized(model, graph, Int8Recipe(num_bins=512), _options(sensitivity=False), data)
    inits = {i.name: i for i in built.onnx.graph.initializer}
    tensors = {name for node in graph.graph.node for name in node.input} | {i.name for i in graph.graph.input}
    version, algorithm, scales = read_trt_cache(_write(tmp_path, "calib.cache", built.files["calib.cache"]))
    assert algorithm == "EntropyCalibration2" and scales and set(scales) <= tensors
    # The Q/DQ graph and calib.cache carry the same int8 scale for every quantized activation, bit for bit.
    activation_q = [n for n in built.onnx.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in scales]
    assert {n.input[0] for n in activation_q} == set(scales)
    for node in activation_q:
        assert numpy_helper.to_array(inits[node.input[1]]).tobytes() == struct.pack("<f", scales[node.input[0]])
    table = json.loads(built.files["calibration.json"])
    assert table["data_hash"] == data.content_hash and table["samples"] == SAMPLES and table["method"] == "mse"
    assert any(":expert" in name and name.endswith(".hidden") for name in table["eager_tensors"])
    assert any("/ssd_scan:" in name for name in table["eager_tensors"])
    layers = set(built.notes["quantized_layers"])
    assert "blocks.0.moe.experts.w1" in layers and not any("router" in l or "gate" in l for l in layers)
    error = built.notes["calibration_set_error"]
    assert error["rel_l2_error"] < 0.1 and error["argmax_agreement"] >= 0.9


def test_fp8_and_int4_builds_run_with_sensitivity_tables(exported) -> None:
    model, graph, data = exported
    fp8 = build_quantized(model, graph, Fp8Recipe(num_bins=512), _options(), data)
    dtypes = {i.data_type for i in fp8.onnx.graph.initializer}
    assert onnx.TensorProto.FLOAT8E4M3FN in dtypes and fp8.notes["calibration"]["method"] == "mse"
    assert fp8.notes["calibration_set_error"]["rel_l2_error"] < 0.2
    rows = json.loads(fp8.files["sensitivity.json"])["layers"]
    assert len(rows) == len(fp8.notes["quantized_layers"]) and fp8.files["sensitivity.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["rel_l2_error"] for r in rows] == sorted((r["rel_l2_error"] for r in rows), reverse=True)
    int4 = build_quantized(model, graph, Int4Recipe(block_size=32), _options(sensitivity=False), data)
    blocked = [n for n in int4.onnx.graph.node if n.op_type == "DequantizeLinear"]
    assert blocked and all(any(a.name == "block_size" and a.i == 32 for a in n.attribute) for n in blocked)
    assert int4.notes["calibration_set_error"]["rel_l2_error"] < 0.3


def test_int4_awq_build_scales_every_quantized_matmul(exported) -> None:
    model, graph, data = exported
    built = build_quantized(model, graph, Int4Recipe(method="awq", block_size=32), _options(sensitivity=False), data)
    awq = built.notes["int4"]["awq"]
    assert built.notes["calibration"]["method"] == "awq" and awq["matmuls"] == len(awq["alpha"]) > 0
    assert awq["mean_layer_error_awq"] <= awq["mean_layer_error_rounding"]
    assert sum(n.op_type == "Mul" and n.name.endswith(".awq") for n in built.onnx.graph.node) == awq["matmuls"]
    assert built.notes["calibration_set_error"]["rel_l2_error"] < 0.3


def test_auto_keeps_the_most_sensitive_layers_float_to_meet_the_budget(exported) -> None:
    model, graph, data = exported
    plain = build_quantized(model, graph, Int8Recipe(num_bins=512), _options(sensitivity=False), data)
    full_error = plain.notes["calibration_set_error"]["rel_l2_error"]
    budget = full_error / 3
    auto = build_quantized(model, graph, AutoRecipe(Int8Recipe(num_bins=512), budget), _options(), data)
    mixed = auto.notes["mixed"]
    assert auto.notes["calibration_set_error"]["rel_l2_error"] <= budget
    assert "fp32" in mixed["precisions"].values() and "int8" in mixed["precisions"].values()
    rows = json.loads(auto.files["sensitivity.json"])["layers"]
    kept = [r["layer"] for r in rows if mixed["precisions"][r["layer"]] == "fp32"]
    assert kept == [r["layer"] for r in rows[: len(kept)]]  # the most sensitive ones


def test_ranges_from_another_model_are_refused_naming_the_nodes(exported) -> None:
    model, graph, data = exported
    other = build_model(get_config("tiny"), seed=1).eval()
    ranges = collect_ranges(other, dataclasses.replace(data, batches=data.batches[:1]), ("max",))
    with pytest.raises(CalibrationError, match=r"no eager range for \d+ node\(s\): .*weight"):
        quantizable_nodes(graph, ranges.names(), parameter_index(other))


def test_bad_options_are_refused() -> None:
    with pytest.raises(CalibrationError, match="'entropy' is not available for fp8"):
        Fp8Recipe(method="entropy")
    with pytest.raises(CalibrationError, match="int4 is weight-only"):
        Int4Recipe(method="max")
    with pytest.raises(CalibrationError, match="--accuracy-budget applies to --precision auto only"):
        RECIPES["int8"].from_options(accuracy_budget=0.1)


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path
