"""The pipeline beyond the happy path: byte-identical ONNX, fp16 and bf16 builds, a failed parity
run kept and marked failed, and interrupted runs (Ctrl-C, kill) that leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mahia import artifact
from mahia.export import parity, stages
from mahia.export.cli import main
from mahia.export.config import DimRange, Tolerances
from mahia.model import ModelSource
from mahia.runtime import get_backend


def test_onnx_is_byte_identical_across_runs(tiny_export: dict) -> None:
    manifest = json.loads((tiny_export["dir"] / "manifest.json").read_text())
    loaded = stages.load_model(ModelSource.from_config("tiny"))
    dims = manifest["dims"]
    profile = stages.resolve_profile(loaded.config, DimRange("batch", **dims["batch"]), DimRange("seq", **dims["seq"]))
    program = stages.export_program(loaded.model, profile)
    again = stages.lower_to_onnx(program, loaded.config, profile, opset=21).SerializeToString(deterministic=True)
    assert hashlib.sha256(again).hexdigest() == manifest["files"]["model.onnx"]["sha256"]


def test_parity_verdict_needs_both_polygraphy_and_the_rel_l2_budget(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    x = np.random.default_rng(0).uniform(1.0, 2.0, (3, 2)).astype(np.float32)

    def verdict(ref_factor: float, tolerances: Tolerances) -> parity.ParityRow:
        result = parity.compare([parity.Graph(path, get_backend("onnx"))],
                                {"x": {"dtype": "float32", "shape": ["batch", 2]}},
                                [{"x": x}], [{"logits": x * np.float32(ref_factor)}], [(3, 2)], tolerances)
        (row,) = result.rows
        assert result.passed == row.passed
        return row

    # 5% off everywhere: inside Polygraphy's rtol 0.1, but rel. L2 4.8e-2 is over the 1e-2 budget.
    over_l2 = verdict(1.05, Tolerances(atol=0.0, rtol=0.1, max_rel_error=1e-2))
    assert over_l2.polygraphy_passed and over_l2.rel_l2_error == pytest.approx(0.05 / 1.05, rel=1e-4)
    assert not over_l2.passed
    within = verdict(1.001, Tolerances(atol=0.0, rtol=0.1, max_rel_error=1e-2))
    assert within.polygraphy_passed and within.passed
    # The other way round: rel. L2 within a loose budget, but elementwise outside rtol.
    over_elementwise = verdict(1.05, Tolerances(atol=0.0, rtol=0.01, max_rel_error=1.0))
    assert not over_elementwise.polygraphy_passed and not over_elementwise.passed


def _invoke(*args: str):
    return CliRunner().invoke(main, ["--config", "tiny", "--batch", "1:2:3", "--seq", "1:16:40", *args])


def test_fp16_onnx_passes_its_budget_and_lists_fp32_ops(tmp_path: Path) -> None:
    result = _invoke("--precision", "fp16", "--out", str(tmp_path), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    manifest = json.loads((Path(summary["artifact_dir"]) / "manifest.json").read_text())
    assert manifest["formats"] == ["onnx"] and set(manifest["files"]) >= {"model.fp16.onnx", "inputs.json"}
    assert {"TopK", "CumSum", "ScatterND", "Cos", "Sin"} <= set(manifest["precision"]["notes"]["fp32_ops"])
    rows = summary["parity"]["rows"]
    assert {(r["batch"], r["seq"]) for r in rows} == {(1, 1), (2, 16), (3, 40), (3, 37)}
    assert all(r["passed"] and r["rel_l2_error"] <= 1e-2 for r in rows)
    assert "ScatterND" in (Path(summary["artifact_dir"]) / "report.md").read_text()


def test_failed_parity_exits_nonzero_and_keeps_a_failed_directory(tmp_path: Path) -> None:
    # bf16 against eager fp32 cannot meet atol = rtol = 0: every row fails Polygraphy's elementwise check.
    result = _invoke("--precision", "bf16", "--atol", "0", "--rtol", "0", "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 1
    assert "Parity FAILED: worst pt2 output 'logits' at batch" in result.output
    (kept,) = tmp_path.glob("tiny-bf16-*")
    assert kept.name.endswith(artifact.FAILED_SUFFIX)
    manifest = json.loads((kept / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["parity"]["passed"] is False
    assert manifest["formats"] == ["pt2"] and "model.pt2" in manifest["files"]
    parity = json.loads((kept / "parity.json").read_text())
    assert all(not r["polygraphy_passed"] for r in parity["rows"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_export_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    exe = Path(sys.executable).parent / "mahia-export"
    proc = subprocess.Popen([str(exe), "--config", "tiny", "--quiet", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".tiny-fp32-*.tmp-*")):  # the run is writing its temporary directory
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "export never started writing"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Interrupted: nothing was written." in err
    assert list(tmp_path.iterdir()) == []


def test_directories_of_killed_runs_are_swept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tiny-fp32-0123456789.tmp-{dead.pid}-abc"
    live = tmp_path / f".tiny-fp32-0123456789.tmp-{os.getpid()}-def"
    stale.mkdir()
    live.mkdir()
    assert artifact.sweep_stale(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


def test_weights_above_the_threshold_go_to_external_data(tiny_export: dict, tmp_path: Path) -> None:
    """The >2 GB path (base/large) forced on tiny: model.onnx + model.onnx.data pass the checker and run."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from polygraphy.json import load_json

    from mahia.export.formats import save_onnx

    source = tiny_export["dir"] / "model.onnx"
    directory = artifact.ArtifactDir(tmp_path / "external")
    model = onnx.load(str(source))
    large_tensor_bytes = sum(len(t.raw_data) for t in model.graph.initializer if len(t.raw_data) >= 1024)
    files = save_onnx(model, directory, "model.onnx", external_data_threshold=0)
    assert files == ["model.onnx", "model.onnx.data"]
    assert (directory.path / "model.onnx.data").stat().st_size >= large_tensor_bytes > 0, "weights must live outside"
    feed = {name: np.asarray(value) for name, value in load_json(str(tiny_export["dir"] / "inputs.json"))[0].items()}
    external = ort.InferenceSession(str(directory.path / "model.onnx"),
                                    providers=["CPUExecutionProvider"]).run(None, feed)
    inline = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, feed)
    assert np.array_equal(external[0], inline[0])
