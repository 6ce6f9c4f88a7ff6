"""The TensorRT flavour end to end on the tiny model (`mahia-export --formats trt,rtx-engine`, once per session):
plugin nodes as TensorRT's parser wants them, only ops that parser imports, the TensorRT-RTX parse + build in the
manifest, the wiring parity, mutation tests (a swapped input or a wrong attribute fails parity), and the
missing-TensorRT behaviour (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from mahia.artifact import open_artifact
from mahia.data import feeds_at_points
from mahia.export import parity, stages
from mahia.export.config import Tolerances
from mahia.export.trt_lowering import TENSORRT_PARSER_OPS, moe_attributes, plugin_attributes
from mahia.model import ModelSource, get_config
from mahia.model.inputs import input_spec
from mahia.plugins_trt import CHAINS, PLUGINS
from mahia.plugins_trt.specs import DOMAIN
from mahia.runtime import BackendUnavailableError, get_backend, load
from tests.conftest import BIN, _shared_root

CHAINS_PER_BLOCK = ("long_conv", "long_conv", "ssd_scan", "gate_combine", "moe_ffn")  # Hyena, Fourier, SSD, gate, MoE


@pytest.fixture(scope="session")
def trt_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`mahia-export --config tiny --formats trt,rtx-engine --json`, once per session (shared by xdist workers)."""
    import fcntl

    root = _shared_root(tmp_path_factory)
    record = root / "tiny-trt-export.json"
    with open(root / "tiny-trt-export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            proc = subprocess.run([str(BIN / "mahia-export"), "--config", "tiny", "--formats", "trt,rtx-engine",
                                   "--out", str(root / "tiny-trt-artifacts"), "--json"],
                                  capture_output=True, text=True, timeout=900)
            record.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))
        data = json.loads(record.read_text())
    assert data["returncode"] == 0, data["stderr"][-3000:]
    summary = json.loads(data["stdout"])
    directory = Path(summary["artifact_dir"])
    return {"dir": directory, "summary": summary, "manifest": json.loads((directory / "manifest.json").read_text()),
            "graph": onnx.load(str(directory / "model.trt.onnx"))}


def test_plugin_nodes_are_what_tensorrt_parses(trt_export) -> None:
    graph, manifest = trt_export["graph"], trt_export["manifest"]
    config = manifest["model"]["config"]
    plugins = [n for n in graph.graph.node if n.domain == DOMAIN]
    expected = Counter(spec.name for op in CHAINS_PER_BLOCK for spec in CHAINS[op].plugins)
    assert Counter(n.op_type for n in plugins) == Counter({k: v * config["n_layers"] for k, v in expected.items()})
    assert (DOMAIN, 1) in {(o.domain, o.version) for o in graph.opset_import}
    dims = manifest["dims"]
    opt_tokens = dims["batch"]["opt"] * (dims["seq"]["opt"] + get_config("tiny").num_tabular_tokens)
    moe = moe_attributes(config["num_experts"], config["top_k"], opt_tokens)
    for node in plugins:
        spec = PLUGINS[node.op_type]
        assert [a.name for a in node.attribute] == ["plugin_namespace", "plugin_version", "aot", *spec.attrs]
        values = plugin_attributes(node)
        assert (values["plugin_namespace"], values["plugin_version"], values["aot"]) == ("mahia", "1", 1)
        assert len(node.input) == len(spec.inputs) and len(node.output) == len(spec.outputs)
        for name in spec.attrs:  # the MoE's tile config is the kernels' choice at the profile's opt point
            if name in moe:
                assert values[name] == moe[name], (node.name, name)
    assert len({n.name for n in graph.graph.node}) == len(graph.graph.node)


def test_every_other_op_is_one_tensorrts_parser_imports(trt_export) -> None:
    ops = {n.op_type for n in trt_export["graph"].graph.node if n.domain != DOMAIN}
    assert ops <= TENSORRT_PARSER_OPS, ops - TENSORRT_PARSER_OPS
    assert not ops & {"NonZero", "DFT", "ScatterND"}  # what the portable graph has and TensorRT(-RTX) refuses
    onnx.checker.check_model(trt_export["graph"], full_check=True)


def test_manifest_records_the_rtx_build_and_the_wiring_parity(trt_export) -> None:
    manifest, directory = trt_export["manifest"], trt_export["dir"]
    rtx = manifest["tensorrt"]["rtx"]
    plugins = sum(n.domain == DOMAIN for n in trt_export["graph"].graph.node)
    assert rtx["ok"] and rtx["parsed"] and rtx["built"] and rtx["plugin_layers"] == plugins
    assert rtx["compute_capabilities"] == ["SM80", "SM86", "SM89", "SM120"]
    assert rtx["engine"] == "model.fp32.rtx.engine" and rtx["engine_status"] == "built, not run here"
    assert manifest["graphs"] == {"trt": "model.trt.onnx", "rtx-engine": "model.fp32.rtx.engine"}
    assert manifest["files"]["model.fp32.rtx.engine"]["bytes"] == rtx["engine_bytes"] > 0
    assert manifest["tensorrt"]["engine"]["status"].startswith("not built: TensorRT >= 10.9 is not installed")
    rows = json.loads((directory / "parity.json").read_text())["rows"]
    points = {(r["batch"], r["seq"]) for r in rows if r["backend"] == "onnxrt-plugins" and r["passed"]}
    assert points == {tuple(p) for p in manifest["parity"]["points"]} and (3, 37) in points
    report = (directory / "report.md").read_text()
    assert "## TensorRT" in report and "built, not run here" in report and "polygraphy run model.fp32.engine" in report
    open_artifact(directory)  # every file matches its sha256


def _parity(model_path: Path, trt_export: dict) -> parity.ParityResult:
    manifest = trt_export["manifest"]
    loaded = stages.load_model(ModelSource.from_config("tiny"))
    points = [(3, 37)]
    feeds = feeds_at_points(loaded.config, points)
    budget = manifest["parity"]["tolerances"]
    return parity.compare([parity.Graph(model_path, get_backend("onnx-plugins"))], input_spec(loaded.config), feeds,
                          parity.eager_outputs(loaded.model, feeds), points, Tolerances(**budget))


def _mutated(trt_export: dict, tmp_path: Path, plugin: str, change) -> Path:
    graph = onnx.ModelProto()
    graph.CopyFrom(trt_export["graph"])
    node = next(n for n in graph.graph.node if n.op_type == plugin)
    change(node)
    path = tmp_path / f"mutated-{plugin}.onnx"
    onnx.save(graph, str(path))
    return path


def test_the_unmutated_graph_passes_the_mutation_harness(trt_export, tmp_path) -> None:
    assert _parity(trt_export["dir"] / "model.trt.onnx", trt_export).passed


def test_a_plugin_node_with_swapped_inputs_fails_parity(trt_export, tmp_path) -> None:
    def swap_b_and_c(node: onnx.NodeProto) -> None:  # SsdChunkCb(b, c): same shape and dtype, so it runs
        node.input[0], node.input[1] = node.input[1], node.input[0]

    result = _parity(_mutated(trt_export, tmp_path, "SsdChunkCb", swap_b_and_c), trt_export)
    assert not result.passed and result.worst().rel_l2_error > 10 * result.tolerances.max_rel_error


def test_a_plugin_node_with_a_wrong_attribute_fails_parity(trt_export, tmp_path) -> None:
    def top_1(node: onnx.NodeProto) -> None:  # MoeCombine top_k 2 -> 1: combines only the first choice
        next(a for a in node.attribute if a.name == "top_k").i = 1

    with pytest.raises(parity.ParityRunError, match="MoeCombine"):
        _parity(_mutated(trt_export, tmp_path, "MoeCombine", top_1), trt_export)


def test_the_wiring_backend_runs_like_a_deployment(trt_export) -> None:
    deployment = load(trt_export["dir"], backend="onnx-plugins")
    loaded = stages.load_model(ModelSource.from_config("tiny"))
    feed = feeds_at_points(loaded.config, [(3, 37)])[0]
    logits = deployment.run(feed)
    reference = parity.eager_outputs(loaded.model, [feed])[0]["logits"]
    assert np.linalg.norm(logits - reference) / np.linalg.norm(reference) < 1e-5
    # Without TensorRT, backend "tensorrt" names the package before anything else (this artifact has no engine)
    with pytest.raises(BackendUnavailableError, match="backend 'tensorrt' needs the Python package 'tensorrt'"):
        load(trt_export["dir"], backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="'tensorrt'"):
        get_backend("tensorrt").load(trt_export["dir"] / "model.fp32.engine", input_spec(loaded.config))


def test_without_tensorrt_the_engine_format_is_one_line_and_exit_2(tmp_path) -> None:
    out = tmp_path / "artifacts"
    proc = subprocess.run([str(BIN / "mahia-export"), "--config", "tiny", "--formats", "trt,engine", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "tensorrt>=10.9" in proc.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing partial
