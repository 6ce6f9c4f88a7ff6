"""Deployment runtime: load a verified artifact directory and run it (ONNX Runtime or the .pt2).

`load` checks every file against manifest.json (sha256 and size) before anything is deserialised and
refuses a tampered or missing file by name; `Deployment.run` validates inputs with the model's own
`validate_inputs` and against the manifest's input spec (dtypes and dynamic ranges).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mahia.export.artifact import SCHEMA_VERSION, sha256_file
from mahia.model import INPUT_NAMES, InputValidationError, ModelConfig, validate_inputs

BACKENDS = ("onnx", "pt2")


class ArtifactIntegrityError(RuntimeError):
    """An artifact directory that must not be loaded: tampered, missing or unverified files."""


def verify_files(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Raise ArtifactIntegrityError naming the first file whose size or sha256 differs from the manifest."""
    files = manifest.get("files")
    if not isinstance(files, Mapping) or not files:
        raise ArtifactIntegrityError(f"{directory / 'manifest.json'} lists no files")
    for name, record in sorted(files.items()):
        path = directory / name
        if Path(name).name != name:
            raise ArtifactIntegrityError(f"manifest.json lists a file outside the directory: {name!r}")
        if not path.is_file():
            raise ArtifactIntegrityError(f"artifact file missing: {path}")
        if path.stat().st_size != record["bytes"] or sha256_file(path) != record["sha256"]:
            raise ArtifactIntegrityError(f"artifact file {path} does not match its sha256 in manifest.json: "
                                         "it was modified after export; refusing to load it")


@dataclass
class Deployment:
    """A loaded, verified artifact: run(inputs) -> logits as a numpy array."""

    directory: Path
    manifest: dict
    config: ModelConfig
    precision: str
    backend: str
    _runner: Any = field(repr=False, default=None)

    def check_inputs(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inputs as tensors, validated by the model's rules and the manifest's spec, or InputValidationError."""
        tensors = {name: v if isinstance(v, torch.Tensor) else _numeric_tensor(name, v) for name, v in inputs.items()}
        validate_inputs(self.config, tensors)
        dims = self.manifest["dims"]
        batch, seq = tensors["input_ids"].shape
        for dim, value in (("batch", batch), ("seq", seq)):
            low, high = dims[dim]["min"], dims[dim]["max"]
            if not low <= value <= high:
                raise InputValidationError(f"input 'input_ids': {dim} {value} is outside the exported range "
                                           f"{low}..{high} of {self.directory.name}")
        return tensors

    def run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> np.ndarray:
        """Logits [batch, num_classes] (float32) for validated inputs."""
        tensors = self.check_inputs(inputs)
        return self._runner(tensors)


def _numeric_tensor(name: str, value: Any) -> torch.Tensor:
    """An array-like as a tensor, or InputValidationError naming the input: a string, object or ragged array (what
    a JSON body easily becomes) is refused here rather than by numpy's or torch's own TypeError or ValueError."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputValidationError(f"input {name!r}: not an array of numbers ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise InputValidationError(f"input {name!r}: got an array of dtype {array.dtype}, expected numbers "
                                   "(bool, integer or float)")
    return torch.from_numpy(array)


Runner = Callable[[Mapping[str, torch.Tensor]], np.ndarray]


def graph_runner(backend: str, path: Path, inputs: Mapping[str, Mapping[str, Any]]) -> Runner:
    """logits = run(tensors) for an ONNX graph (ONNX Runtime, CPU) or a .pt2 program; `inputs` is the input
    spec (name -> {"dtype", ...}, as in manifest.json) the tensors are cast to."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return (_onnx_runner if backend == "onnx" else _pt2_runner)(path, inputs)


def _onnx_runner(path: Path, inputs: Mapping[str, Mapping[str, Any]]) -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtypes = {name: np.dtype(spec["dtype"]) for name, spec in inputs.items()}

    def run(tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        feed = {name: tensors[name].detach().cpu().numpy().astype(dtypes[name], copy=False) for name in INPUT_NAMES}
        return np.asarray(session.run(["logits"], feed)[0], dtype=np.float32)

    return run


def _pt2_runner(path: Path, inputs: Mapping[str, Mapping[str, Any]]) -> Runner:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.export.load(str(path)).module()
    dtypes = {name: getattr(torch, spec["dtype"]) for name, spec in inputs.items()}

    def run(tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            logits = module(**{name: tensors[name].to(dtypes[name]) for name in INPUT_NAMES})
        return logits.float().numpy()

    return run


def load(artifact_dir: str | Path, backend: str = "onnx", allow_failed: bool = False) -> Deployment:
    """Verify and load an artifact directory for `backend` ("onnx" or "pt2")."""
    directory = Path(artifact_dir)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactIntegrityError(f"not an artifact directory (no manifest.json): {directory}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactIntegrityError(f"{manifest_path} is not valid JSON: {exc}") from None
    verify_files(directory, manifest)
    if manifest.get("status") != "passed" and not allow_failed:
        raise ArtifactIntegrityError(f"{directory} failed its parity check (status {manifest.get('status')!r}); "
                                     "pass allow_failed=True to load it for debugging")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactIntegrityError(f"{manifest_path} has schema_version {manifest.get('schema_version')!r}; this "
                                     f"mahia reads {SCHEMA_VERSION}: re-export the artifact")
    if backend not in manifest["formats"]:
        raise ValueError(f"{directory} has no {backend} graph (formats: {', '.join(manifest['formats'])}); "
                         f"use backend={'pt2' if backend == 'onnx' else 'onnx'!r}")
    file_name = manifest["onnx"]["file"] if backend == "onnx" else "model.pt2"
    config = ModelConfig.from_json(json.dumps(manifest["model"]["config"]))
    runner = graph_runner(backend, directory / file_name, manifest["inputs"])
    return Deployment(directory, manifest, config, manifest["precision"]["name"], backend, runner)
