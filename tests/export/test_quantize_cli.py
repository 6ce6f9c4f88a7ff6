"""`mahia-export --precision fp8 --formats onnx,trt` end to end on the shipped (trained) default model, as the README
runs it but with fewer calibration samples, a small shape profile and 256 task-check rows: the portable fp8 graph and
the TensorRT plugin graph (wiring parity, TensorRT-RTX parse + build, task check); and the calibration options' bad
input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from mahia.calibration.table import read_table_json, read_trt_cache
from mahia.export.cli import main
from tests.conftest import BIN


def test_fp8_export_writes_tables_sensitivity_and_passes_parity(tmp_path) -> None:
    proc = subprocess.run([str(BIN / "mahia-export"), "--precision", "fp8", "--formats", "onnx,trt", "--calib-samples",
                           "32", "--batch", "1:2:4", "--seq", "1:24:64", "--eval-rows", "256", "--out", str(tmp_path),
                           "--json", "--quiet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    directory = Path(summary["artifact_dir"])
    assert summary["status"] == "passed" and summary["precision"] == "fp8"
    task = summary["task"]  # the default is trained: its test-split accuracy is checked against fp8's budget
    assert task["passed"] and task["rows"] == 256 and task["budget"]["max_accuracy_drop_pt"] == 0.1
    assert {"model.fp8.onnx", "calibration.json", "calib.cache", "sensitivity.json", "sensitivity.md",
            "sensitivity.png", "parity.json", "manifest.json"} <= {p.name for p in directory.iterdir()}
    assert not (directory / "model.onnx").exists()
    manifest = json.loads((directory / "manifest.json").read_text())
    assert {"model.fp8.onnx", "calibration.json", "calib.cache", "sensitivity.png"} <= set(manifest["files"])
    assert manifest["onnx"]["file"] == "model.fp8.onnx"
    assert "polygraphy run model.fp8.onnx --onnxrt" in (directory / "report.md").read_text()
    notes = manifest["precision"]["notes"]
    assert notes["calibration"]["samples"] == 32 and notes["calibration"]["method"] == "mse"
    table = read_table_json(directory / "calibration.json")
    assert table.dtype == "float8e4m3fn" and table.data_hash == notes["calibration"]["data_hash"]
    _, _, scales = read_trt_cache(directory / "calib.cache")
    assert set(scales) == set(table.tensors)
    assert all(abs(scales[n] - table.tensors[n].amax / 127) <= 1e-7 * scales[n] for n in scales)

    # The TensorRT graph: same calibration (transplanted Q/DQ), FP8 experts in the MoE plugins, every other plugin
    # input float32; wiring parity at every point, TensorRT-RTX parse + build for sm_89/120, its own task check.
    trt = manifest["tensorrt"]
    assert manifest["graphs"]["trt"] == "model.fp8.trt.onnx" and "model.fp8.trt.onnx" in manifest["files"]
    assert trt["quantization"]["fp8_experts"] == {"MoeUpFp8": 3, "MoeDownFp8": 3}
    assert trt["quantization"]["quantized_nodes"] > 0
    assert trt["plugin_inputs"]["MoeUpFp8"]["w1"] == "float8_e4m3fn initializer"
    assert trt["plugin_inputs"]["MoeDownFp8"]["w2_scale"] == "float32 initializer"
    assert trt["plugin_inputs"]["LongConv"] == {"x": "float32", "filt": "float32"}
    assert trt["rtx"]["ok"] and trt["rtx"]["plugin_layers"] == 36 and trt["rtx"]["compute_capabilities"] == [
        "SM89", "SM120"]
    assert trt["task"]["passed"] and trt["task"]["backend"] == "onnx-plugins" and trt["task"]["rows"] == 256
    rows = summary["parity"]["rows"]
    assert {(r["batch"], r["seq"]) for r in rows if r["backend"] == "onnxrt-plugins" and r["passed"]} == {
        tuple(p) for p in manifest["parity"]["points"]}


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp8", "--calib-method", "entropy"], "'entropy' is not available for fp8"),
    (["--precision", "int8", "--calib-samples", "4"], "too few calibration samples: 4"),
    (["--precision", "int4", "--calib-method", "max"], "int4 is weight-only"),
    (["--precision", "int8", "--calib-method", "awq"], "'awq' is not available for int8"),
    (["--precision", "int8", "--accuracy-budget", "0.1"], "--accuracy-budget applies to --precision auto only"),
    (["--precision", "fp32", "--calib-samples", "64"], "--calib-samples apply to the quantized precisions"),
    (["--precision", "auto", "--accuracy-budget", "0"], "0"),
])
def test_bad_calibration_options_fail_before_any_work(tmp_path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["--config", "tiny", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output
    assert not any(tmp_path.iterdir())
