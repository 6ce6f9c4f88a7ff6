"""The Triton Inference Server model repository: config.pbtxt parsed with Triton's own schema (tritonclient's
model_config_pb2), its inputs checked against the ONNX graph's, the model file byte-identical to the artifact's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from mahia.artifact import sha256_file
from mahia.serve.cli import main as serve_cli
from mahia.serve.triton import TritonRepositoryError, preferred_batch_sizes, write_triton_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="the serve extra (tritonclient) is not installed")

ONNX_TO_TRITON = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT: "TYPE_FP32",
                  onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.INT32: "TYPE_INT32",
                  onnx.TensorProto.BOOL: "TYPE_BOOL"}


def parse_config(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_matches_the_onnx_graph(tiny_export: dict, tmp_path: Path) -> None:
    result = CliRunner().invoke(serve_cli, ["--triton-repo", str(tmp_path / "repo"), "--batch-wait-ms", "2",
                                            str(tiny_export["dir"])])
    assert result.exit_code == 0, result.output
    name = tiny_export["dir"].name
    model_dir = tmp_path / "repo" / name
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == \
        ["1", "1/model.onnx", "config.pbtxt"], "no TensorRT model without an engine in the manifest"
    assert (model_dir / "1" / "model.onnx").read_bytes() == (tiny_export["dir"] / "model.onnx").read_bytes()

    config = parse_config(model_dir / "config.pbtxt")
    assert config.name == name and config.backend == "onnxruntime" and config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == \
        [(1, "KIND_CPU")]

    graph = onnx.load(str(model_dir / "1" / "model.onnx"), load_external_data=False).graph
    declared = {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input}
    graph_inputs = {i.name: i.type.tensor_type for i in graph.input}
    assert set(declared) == set(graph_inputs)
    for tensor_name, tensor in graph_inputs.items():
        data_type, dims = declared[tensor_name]
        assert data_type == ONNX_TO_TRITON[tensor.elem_type], tensor_name
        assert len(dims) + 1 == len(tensor.shape.dim), f"{tensor_name}: batch + dims must be the graph's rank"
        for dim, graph_dim in zip(dims, tensor.shape.dim[1:]):
            assert dim == (graph_dim.dim_value if graph_dim.HasField("dim_value") else -1), tensor_name
    outputs = {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output}
    assert outputs == {"logits": ("TYPE_FP32", [2])} and [o.name for o in graph.output] == ["logits"]


def test_engine_in_the_manifest_adds_a_tensorrt_model(tiny_export: dict, tmp_path: Path) -> None:
    # The bytes stand for an engine file only to check the copy and the config; no TensorRT is involved.
    copy = Path(shutil.copytree(tiny_export["dir"], tmp_path / "artifact"))
    (copy / "model.plan").write_bytes(b"engine bytes")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["model.plan"] = {"sha256": sha256_file(copy / "model.plan"), "bytes": 12}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    models = write_triton_repository(copy, tmp_path / "repo", name="mahia")
    assert [m.name for m in models] == ["mahia", "mahia-tensorrt"]
    assert (models[1] / "1" / "model.plan").read_bytes() == b"engine bytes"
    config = parse_config(models[1] / "config.pbtxt")
    onnx_config = parse_config(models[0] / "config.pbtxt")
    assert config.backend == "tensorrt" and config.input == onnx_config.input and config.output == onnx_config.output
    assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_GPU"]
    with pytest.raises(TritonRepositoryError, match="exists already"):
        write_triton_repository(copy, tmp_path / "repo", name="mahia")


def test_refuses_a_tampered_artifact_and_a_manifest_unlike_the_graph(tiny_export: dict, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_export["dir"], tmp_path / "artifact"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["inputs"]["numeric"]["dtype"] = "float16"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TritonRepositoryError, match="input 'numeric': model.onnx has float32 of rank 2, the manifest "
                                                    "declares float16"):
        write_triton_repository(copy, tmp_path / "repo")
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"\0")
    result = CliRunner().invoke(serve_cli, ["--triton-repo", str(tmp_path / "repo"), str(copy)])
    assert result.exit_code == 1 and "model.onnx does not match its sha256" in result.output
    assert not (tmp_path / "repo" / "artifact").exists()


def test_preferred_batch_sizes() -> None:
    assert preferred_batch_sizes(16) == [4, 8, 16]
    assert preferred_batch_sizes(12) == [4, 8, 12]
    assert preferred_batch_sizes(1) == [1]
