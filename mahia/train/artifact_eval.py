"""Logits of an exported artifact's deployments (through mahia.runtime) and the eager model it came from."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from mahia.data import ReviewsDataset
from mahia.model import MahiaX, build_model, get_config, load_checkpoint
from mahia.model.checkpoint import text_tokens_of
from mahia.runtime import BACKENDS
from mahia.train.evaluation import length_sorted_order

def manifest_of(artifact_dir: Path) -> dict[str, object]:
    """The artifact's manifest.json, or a ValueError naming the file."""
    path = artifact_dir / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{artifact_dir} is not an exported artifact: {path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def eager_model(checkpoint: Path | None, manifest: dict[str, object] | None) -> tuple[MahiaX, int, str]:
    """(eager model, text budget, description): --checkpoint, else the artifact's recorded source, else the default.

    A recorded source is a checkpoint path, a named config with a seed (untrained), or the embedded default.
    """
    source = str((manifest or {}).get("model", {}).get("source", "embedded default"))
    if checkpoint is None and source.startswith("checkpoint "):
        checkpoint = Path(source.removeprefix("checkpoint "))
        if not checkpoint.is_file():
            raise ValueError(f"the artifact was exported from {checkpoint}, which is not there any more: "
                             "pass it with --checkpoint")
    if checkpoint is not None:
        model, metadata = load_checkpoint(checkpoint)
        return model, text_tokens_of(model, metadata), f"checkpoint {checkpoint}"
    if source.startswith("config "):
        label = str(manifest.get("model", {}).get("label", ""))  # type: ignore[union-attr]
        seed = re.search(r"seed (\d+)", label)
        model = build_model(get_config(source.removeprefix("config ")), seed=int(seed.group(1)) if seed else 0)
        return model.eval(), model.config.max_seq_len, f"{source} (untrained)"
    from mahia.default import DEFAULT_CHECKPOINT

    model, metadata = load_checkpoint(DEFAULT_CHECKPOINT)
    return model, text_tokens_of(model, metadata), "embedded default"


def check_same_weights(manifest: dict[str, object], model: MahiaX, artifact_dir: Path) -> None:
    """Refuse to compare an artifact with an eager model whose weights are not the ones it was exported from."""
    from mahia.export.stages import weights_sha256

    recorded = manifest.get("model", {}).get("weights_sha256")  # type: ignore[union-attr]
    if recorded != weights_sha256(model):
        source = manifest.get("model", {}).get("source", "?")  # type: ignore[union-attr]
        raise ValueError(f"{artifact_dir} was exported from other weights ({source}) than the eager model: "
                         "pass the checkpoint it was exported from with --checkpoint")


def run_batches(run: Callable[[dict[str, torch.Tensor]], np.ndarray], dataset: ReviewsDataset, max_len: int,
                vocab_size: int, batch_size: int, min_len: int = 1) -> np.ndarray:
    """Logits [N, C] of `run` over length-sorted batches, in dataset order; sequences right-padded to min_len."""
    order = length_sorted_order(dataset, max_len)
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        inputs, _ = dataset.batch(rows, max_len, vocab_size)
        short = min_len - inputs["input_ids"].shape[1]
        if short > 0:  # padding positions are masked out: the logits do not change
            for name in ("input_ids", "attention_mask"):
                inputs[name] = torch.nn.functional.pad(inputs[name], (0, short))
        logits = np.asarray(run(inputs), dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"the artifact returned logits of shape {logits.shape} for a batch of {len(rows)}")
        if out is None:
            out = np.zeros((len(dataset), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    assert out is not None
    return out


def artifact_limits(manifest: dict[str, object], max_len: int, batch_size: int) -> tuple[int, int, int]:
    """(max_len, min_len, batch_size) fitted into the exported dynamic ranges of seq and batch."""
    dims = manifest["dims"]  # type: ignore[index]
    return (min(max_len, dims["seq"]["max"]), dims["seq"]["min"],
            max(min(batch_size, dims["batch"]["max"]), dims["batch"]["min"]))


def evaluate_artifact(artifact_dir: Path, manifest: dict[str, object], backends: tuple[str, ...],
                      dataset: ReviewsDataset, max_len: int, vocab_size: int,
                      batch_size: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, logits [N, C]) for each requested backend (default: each one the artifact holds)."""
    import mahia.runtime

    formats = list(manifest.get("formats", []))  # type: ignore[arg-type]
    chosen = backends or tuple(b for b in BACKENDS if b in formats)
    if not chosen:
        raise ValueError(f"{artifact_dir} holds none of the backends {', '.join(BACKENDS)} (formats: {formats})")
    max_len, min_len, batch_size = artifact_limits(manifest, max_len, batch_size)
    for backend in chosen:
        deployment = mahia.runtime.load(artifact_dir, backend=backend)
        yield (f"{backend} {deployment.precision}",
               run_batches(deployment.run, dataset, max_len, vocab_size, batch_size, min_len))
