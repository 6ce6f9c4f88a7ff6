"""Logits of an exported artifact's deployments (through mahia.runtime) and the eager model it came from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

import mahia.runtime
from mahia.artifact import Manifest
from mahia.data import ReviewsDataset, run_batches
from mahia.default import load_model
from mahia.model import MahiaX, ModelSource, weights_sha256
from mahia.model.source import CONFIG
from mahia.runtime import backends


def eager_model(checkpoint: Path | None, manifest: Manifest | None) -> tuple[MahiaX, int, str]:
    """(eager model, text budget, description): --checkpoint, else the artifact's recorded source, else the default.

    A recorded checkpoint that is not there any more is named, with the way around it.
    """
    if checkpoint is not None:
        source = ModelSource.from_checkpoint(checkpoint)
    elif manifest is not None:
        source = manifest.model.source
        if source.path is not None and not Path(source.path).is_file():
            raise ValueError(f"the artifact was exported from {source.path}, which is not there any more: "
                             "pass it with --checkpoint")
    else:
        source = ModelSource.embedded_default()
    loaded = load_model(source)
    return loaded.model, loaded.text_tokens, f"{source}{' (untrained)' if source.kind == CONFIG else ''}"


def check_same_weights(manifest: Manifest, model: MahiaX, artifact_dir: Path) -> None:
    """Refuse to compare an artifact with an eager model whose weights are not the ones it was exported from."""
    if manifest.model.weights_sha256 != weights_sha256(model):
        raise ValueError(f"{artifact_dir} was exported from other weights ({manifest.model.source}) than the eager "
                         "model: pass the checkpoint it was exported from with --checkpoint")


def artifact_limits(manifest: Manifest, max_len: int, batch_size: int) -> tuple[int, int, int]:
    """(max_len, min_len, batch_size) fitted into the exported dynamic ranges of seq and batch."""
    return min(max_len, manifest.seq.max), manifest.seq.min, manifest.batch.clamp(batch_size)


def evaluate_artifact(artifact_dir: Path, manifest: Manifest, chosen: tuple[str, ...], dataset: ReviewsDataset,
                      max_len: int, vocab_size: int, batch_size: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, logits [N, C]) for each requested backend (default: each one the artifact has a graph for)."""
    chosen = chosen or tuple(b.name for b in backends().values() if b.format in manifest.graphs)
    if not chosen:
        raise ValueError(f"{artifact_dir} holds none of the backends {', '.join(backends())} "
                         f"(formats: {list(manifest.formats)})")
    max_len, min_len, batch_size = artifact_limits(manifest, max_len, batch_size)
    for backend in chosen:
        deployment = mahia.runtime.load(artifact_dir, backend=backend)
        yield (f"{backend} {deployment.precision}",
               run_batches(deployment.run, dataset, max_len, vocab_size, batch_size, min_len))
