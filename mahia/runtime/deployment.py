"""Deployment: load a verified artifact directory for a backend and run it on validated inputs.

`load` checks every file against manifest.json (sha256 and size) before anything is deserialised and
refuses a tampered or missing file by name (mahia.artifact); `Deployment.run` validates inputs with the
model's own `validate_inputs` and against the manifest's input spec (dtypes and dynamic ranges).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mahia.artifact import Manifest, open_artifact
from mahia.model import InputValidationError, ModelConfig, as_tensors, validate_inputs
from mahia.runtime.backends import Runner, backends, get_backend


@dataclass
class Deployment:
    """A loaded, verified artifact: run(inputs) -> logits as a numpy array."""

    directory: Path
    manifest: Manifest
    backend: str
    runner: Runner = field(repr=False)

    @property
    def config(self) -> ModelConfig:
        """The model's config, as the manifest records it."""
        return self.manifest.model.config

    @property
    def precision(self) -> str:
        """The deployed precision's name."""
        return self.manifest.precision.name

    def check_inputs(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inputs as tensors, validated by the model's rules and the manifest's spec, or InputValidationError."""
        tensors = as_tensors(inputs)
        validate_inputs(self.config, tensors)
        batch, seq = tensors["input_ids"].shape
        for dim, value in ((self.manifest.batch, batch), (self.manifest.seq, seq)):
            if not dim.contains(value):
                raise InputValidationError(f"input 'input_ids': {dim.name} {value} is outside the exported range "
                                           f"{dim.min}..{dim.max} of {self.directory.name}")
        return tensors

    def run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> np.ndarray:
        """Logits [batch, num_classes] (float32) for validated inputs."""
        return self.runner(self.check_inputs(inputs))


def load(artifact_dir: str | Path, backend: str = "onnx", allow_failed: bool = False,
         options: Any = None) -> Deployment:
    """Verify and load an artifact directory for `backend` (a name of `mahia.runtime.backends`); `options` go to a
    backend that takes them (backend "cuda": `mahia.runtime.backends.cuda.CudaOptions`, backend "onnx":
    `mahia.runtime.backends.onnxrt.OnnxRuntimeOptions`)."""
    directory = Path(artifact_dir)
    spec = get_backend(backend)
    manifest = open_artifact(directory, allow_failed)
    if spec.format is None:
        return Deployment(directory, manifest, backend, spec.load_artifact(directory, manifest, options))
    spec.require_packages()  # a missing engine says so before a missing graph (backend "tensorrt" without TensorRT)
    if spec.format not in manifest.graphs:
        usable = [repr(b.name) for b in backends().values() if b.format is None or b.format in manifest.graphs]
        raise ValueError(f"{directory} has no {spec.format} graph (formats: {', '.join(manifest.formats)}); "
                         f"use backend={' or '.join(usable)}")
    runner = spec.load(directory / manifest.graphs[spec.format], manifest.inputs, options)
    return Deployment(directory, manifest, backend, runner)
