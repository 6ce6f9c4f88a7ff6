"""mahia.runtime: verified loading of the session's tiny artifact, both backends at unseen shapes,
tampered-file refusal by name, and input validation against the model and the manifest."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mahia.runtime as runtime
from mahia.artifact import DimRange, read_manifest
from mahia.model import InputValidationError, build_model, get_config, random_inputs
from mahia.runtime.backends.onnxrt import OnnxRuntimeOptions
from tests.conftest import relative_error


@pytest.fixture(scope="module")
def eager() -> torch.nn.Module:
    return build_model(get_config("tiny"), seed=0).eval()  # what `mahia-export --config tiny` exported


@pytest.mark.parametrize("backend", ["onnx", "pt2"])
@pytest.mark.parametrize("batch, seq", [(5, 23), (2, 159), (16, 1)])  # never traced nor in parity
def test_both_backends_match_eager_at_unseen_shapes(tiny_export: dict, eager: torch.nn.Module, backend: str,
                                                   batch: int, seq: int, generator: torch.Generator) -> None:
    deployment = runtime.load(tiny_export["dir"], backend=backend)
    assert deployment.precision == "fp32" and deployment.config == get_config("tiny")
    assert deployment.manifest.status == "passed"
    inputs = random_inputs(deployment.config, batch, seq, generator)
    with torch.inference_mode():
        want = eager(**inputs)
    got = deployment.run({k: v.numpy() for k, v in inputs.items()})  # numpy inputs as a deployment passes them
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (batch, 2)
    assert relative_error(torch.from_numpy(got), want) < 1e-5


@pytest.mark.parametrize("name", ["model.onnx", "model.pt2", "inputs.json"])
def test_tampered_file_is_refused_by_name(tiny_export: dict, tmp_path: Path, name: str) -> None:
    copy = Path(shutil.copytree(tiny_export["dir"], tmp_path / "artifact"))
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: same size, different content
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(runtime.ArtifactIntegrityError, match=f"{name} does not match its sha256"):
        runtime.load(copy, backend="pt2" if name == "model.pt2" else "onnx")


def test_missing_file_and_failed_manifest_are_refused(tiny_export: dict, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_export["dir"], tmp_path / "artifact"))
    (copy / "parity.json").unlink()
    with pytest.raises(runtime.ArtifactIntegrityError, match="artifact file missing: .*parity.json"):
        runtime.load(copy)
    failed = Path(shutil.copytree(tiny_export["dir"], tmp_path / "failed"))
    manifest = json.loads((failed / "manifest.json").read_text())
    (failed / "manifest.json").write_text(json.dumps({**manifest, "status": "failed"}))
    with pytest.raises(runtime.ArtifactIntegrityError, match="failed its parity check"):
        runtime.load(failed)
    assert runtime.load(failed, allow_failed=True).precision == "fp32"
    with pytest.raises(ValueError, match="unknown backend 'openvino'"):
        runtime.load(tiny_export["dir"], backend="openvino")
    with pytest.raises(runtime.ArtifactIntegrityError, match="no manifest.json"):
        runtime.load(tmp_path)


def _bad(inputs: dict, name: str, value) -> dict:
    return {**inputs, name: value}


def test_inputs_that_fail_validation_are_refused(tiny_export: dict, generator: torch.Generator) -> None:
    deployment = runtime.load(tiny_export["dir"])
    good = random_inputs(deployment.config, 2, 10, generator)
    cases = [
        (_bad(good, "input_ids", good["input_ids"].int()), "input 'input_ids': got dtype torch.int32"),
        (_bad(good, "input_ids", good["input_ids"] + 1000), "input 'input_ids': got ids in"),
        (_bad(good, "attention_mask", torch.tensor([[0] + [1] * 9] * 2)), "right padding"),
        (_bad(good, "numeric", torch.full((2, 2), float("nan"))), "non-finite"),
        ({k: v for k, v in good.items() if k != "categorical"}, "missing: ['categorical']"),
        (random_inputs(deployment.config, 17, 10, generator), "batch 17 is outside the exported range 1..16"),
    ]
    for inputs, message in cases:
        with pytest.raises(InputValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
            deployment.run(inputs)


@pytest.mark.parametrize("value", [np.array([["a", "b"]] * 2), np.array([[1, "x"]] * 2, dtype=object),
                                   np.array([[b"1", b"2"]] * 2), [[1, 2], [3]]])
def test_object_string_and_ragged_inputs_are_refused_by_name(tiny_export: dict, generator: torch.Generator,
                                                             value) -> None:
    # What a JSON body easily becomes: the project's input error naming the input, not numpy's or torch's TypeError.
    deployment = runtime.load(tiny_export["dir"])
    good = {k: v.numpy() for k, v in random_inputs(deployment.config, 2, 10, generator).items()}
    with pytest.raises(InputValidationError, match="input 'attention_mask': got .*expected a numeric array"):
        deployment.run(_bad(good, "attention_mask", value))


def test_a_backend_whose_engine_is_missing_names_the_package(tiny_export: dict) -> None:
    from mahia.runtime.backends import Backend, get_backend

    onnx = get_backend("onnx")
    missing = Backend("engine-x", onnx.format, onnx.module, ("mahia_engine_x_not_installed",), "engine-x", "test")
    with pytest.raises(runtime.BackendUnavailableError,
                       match="backend 'engine-x' needs the Python package 'mahia_engine_x_not_installed'"):
        missing.load(tiny_export["dir"] / "model.onnx", {})


def test_sequence_length_is_checked_against_the_exported_range(tiny_export: dict, generator: torch.Generator) -> None:
    # As exported with `--seq 1:16:40` (the tiny artifact's seq range is the model's limit, 160, which hides it).
    manifest = dataclasses.replace(read_manifest(tiny_export["dir"]), batch=DimRange("batch", 1, 2, 4),
                                   seq=DimRange("seq", 1, 16, 40))
    deployment = runtime.Deployment(Path("tiny-fp32-narrow"), manifest, "onnx", runner=None)
    assert deployment.check_inputs(random_inputs(deployment.config, 2, 40, generator))["input_ids"].shape == (2, 40)
    with pytest.raises(InputValidationError, match="input 'input_ids': seq 41 is outside the exported range 1..40 "
                                                   "of tiny-fp32-narrow"):
        deployment.check_inputs(random_inputs(deployment.config, 2, 41, generator))


def test_onnx_runtime_threading_options_keep_the_answer(tiny_export: dict, generator: torch.Generator) -> None:
    inputs = {k: v.numpy() for k, v in random_inputs(get_config("tiny"), 3, 37, generator).items()}
    default = runtime.load(tiny_export["dir"], backend="onnx")
    one_thread = runtime.load(tiny_export["dir"], backend="onnx",
                              options=OnnxRuntimeOptions(intra_op_threads=1, spin_wait=False))
    session = one_thread.runner.session
    assert session.get_session_options().intra_op_num_threads == 1
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    want = default.run(inputs)
    assert relative_error(torch.from_numpy(one_thread.run(inputs)), torch.from_numpy(want)) < 1e-6
    with pytest.raises(ValueError, match="intra_op_threads must be >= 0 .* got -1"):
        OnnxRuntimeOptions(intra_op_threads=-1)
    with pytest.raises(TypeError, match="intra_op_threads must be an int, got '1'"):
        OnnxRuntimeOptions(intra_op_threads="1")
    with pytest.raises(TypeError, match="spin_wait must be a bool, got 0"):
        OnnxRuntimeOptions(spin_wait=0)


def test_a_backend_without_its_graph_or_with_options_it_does_not_take_is_refused(tiny_export: dict,
                                                                                 tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^backend 'pt2' takes no options$"):
        runtime.load(tiny_export["dir"], backend="pt2", options={"device": 0})
    for wrong in ({"threads": 1}, {}):  # an empty (falsy) dict is refused too, not taken for the defaults
        with pytest.raises(TypeError, match=r"^backend 'onnx' takes OnnxRuntimeOptions, got dict$"):
            runtime.load(tiny_export["dir"], backend="onnx", options=wrong)
    onnx_only = tmp_path / "tiny-onnx-only"
    onnx_only.mkdir()
    manifest = json.loads((tiny_export["dir"] / "manifest.json").read_text())
    manifest = {**manifest, "formats": ["onnx"], "graphs": {"onnx": "model.onnx"},
                "files": {k: v for k, v in manifest["files"].items() if not k.startswith("model.pt2")}}
    for name in manifest["files"]:
        shutil.copy(tiny_export["dir"] / name, onnx_only / name)
    (onnx_only / "manifest.json").write_text(json.dumps(manifest))
    assert runtime.load(onnx_only).backend == "onnx"
    with pytest.raises(ValueError) as err:
        runtime.load(onnx_only, backend="pt2")
    assert str(err.value) == f"{onnx_only} has no pt2 graph (formats: onnx); use backend='onnx' or 'cuda'"
    with pytest.raises(ValueError) as err:  # several formats, none of them this backend's
        runtime.load(tiny_export["dir"], backend="onnx-plugins")
    assert str(err.value) == (f"{tiny_export['dir']} has no trt graph (formats: onnx, pt2); "
                              "use backend='onnx' or 'pt2' or 'cuda'")


def test_batch_and_seq_are_checked_at_both_ends_of_the_exported_range(tiny_export: dict,
                                                                      generator: torch.Generator) -> None:
    manifest = dataclasses.replace(read_manifest(tiny_export["dir"]), batch=DimRange("batch", 2, 2, 4),
                                   seq=DimRange("seq", 3, 16, 40))
    deployment = runtime.Deployment(Path("tiny-fp32-narrow"), manifest, "onnx", runner=lambda tensors: tensors)
    for batch, seq in ((2, 3), (4, 40)):
        checked = deployment.run(random_inputs(deployment.config, batch, seq, generator))  # the runner gets tensors
        assert checked["input_ids"].shape == (batch, seq) and checked["input_ids"].dtype == torch.int64
    for (batch, seq), message in (((1, 8), "batch 1 is outside the exported range 2..4"),
                                  ((2, 2), "seq 2 is outside the exported range 3..40")):
        with pytest.raises(InputValidationError) as err:
            deployment.check_inputs(random_inputs(deployment.config, batch, seq, generator))
        assert str(err.value) == f"input 'input_ids': {message} of tiny-fp32-narrow"


def test_a_backend_that_loads_the_whole_artifact_gets_its_directory_manifest_and_options(
        tiny_export: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # The path of backend "cuda" (no graph format: it builds from the artifact), with a stand-in spec: no GPU here.
    import mahia.runtime.deployment as deployment_module

    calls = []

    class WholeArtifact:
        format = None

        def load_artifact(self, directory, manifest, options):
            calls.append((directory, manifest.status, options))
            return "runner"

    monkeypatch.setattr(deployment_module, "get_backend", lambda name: WholeArtifact())
    deployment = runtime.load(tiny_export["dir"], backend="whole", options={"buckets": 2})
    assert calls == [(tiny_export["dir"], "passed", {"buckets": 2})]
    assert (deployment.directory, deployment.backend, deployment.runner) == (tiny_export["dir"], "whole", "runner")
    assert deployment.manifest == read_manifest(tiny_export["dir"])
