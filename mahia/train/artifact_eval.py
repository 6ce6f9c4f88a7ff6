"""Logits of an exported artifact's deployments (through mahia.runtime) over a data split."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mahia.data import ReviewsDataset
from mahia.model import MahiaX
from mahia.train.evaluate_cli import BACKENDS, run_batches


def manifest_of(artifact_dir: Path) -> dict[str, object]:
    """The artifact's manifest.json, or a ValueError naming the file."""
    path = artifact_dir / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{artifact_dir} is not an exported artifact: {path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def check_same_weights(manifest: dict[str, object], model: MahiaX, artifact_dir: Path) -> None:
    """Refuse to compare an artifact against an eager model with other weights than it was exported from."""
    from mahia.export.stages import weights_sha256

    recorded = manifest.get("model", {}).get("weights_sha256")
    if recorded is None:
        raise ValueError(f"{artifact_dir}/manifest.json records no model weights_sha256")
    if recorded != weights_sha256(model):
        source = manifest.get("model", {}).get("source", "?")
        raise ValueError(f"{artifact_dir} was exported from other weights ({source}) than the eager model given: "
                         "pass the checkpoint it was exported from with --checkpoint")


def evaluate_artifact(artifact_dir: Path, backends: tuple[str, ...], model: MahiaX, dataset: ReviewsDataset,
                      max_len: int, batch_size: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, logits [N, C]) for each requested backend (default: each format the artifact holds)."""
    import mahia.runtime

    manifest = manifest_of(artifact_dir)
    check_same_weights(manifest, model, artifact_dir)
    formats = manifest.get("formats", [])
    chosen = backends or tuple(b for b in BACKENDS if b in formats)
    if not chosen:
        raise ValueError(f"{artifact_dir} holds none of the backends {', '.join(BACKENDS)} (formats: {formats})")
    for backend in chosen:
        deployment = mahia.runtime.load(artifact_dir, backend=backend)

        def run(inputs: dict[str, torch.Tensor]) -> np.ndarray:
            return np.asarray(deployment.run(inputs))

        yield f"{backend} {deployment.precision}", run_batches(run, dataset, max_len, batch_size)
