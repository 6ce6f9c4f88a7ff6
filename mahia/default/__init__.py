"""The embedded default model that `mahia-export` uses when no checkpoint is given.

`small.safetensors` is the `small` config trained on the reviews data by the command recorded in
`metrics.json` (key "command"; `python -m mahia.train.reproduce` re-runs it and compares the metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mahia.model import CheckpointError, MahiaX, load_checkpoint
from mahia.model.checkpoint import text_tokens_of

DEFAULT_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = DEFAULT_DIR / "small.safetensors"
DEFAULT_METRICS = DEFAULT_DIR / "metrics.json"


@dataclass(frozen=True)
class DefaultModel:
    """The default model and an honest label of what it is."""

    model: MahiaX
    label: str
    trained: bool
    text_tokens: int  # tokens per text it was trained on ([CLS] + words)


def default_metrics() -> dict[str, object]:
    """The metrics.json written by the training run that produced the default checkpoint."""
    if not DEFAULT_METRICS.is_file():
        raise CheckpointError(f"the default model's metrics file {DEFAULT_METRICS} is missing from the package")
    return json.loads(DEFAULT_METRICS.read_text())


def load_default_model() -> DefaultModel:
    """The trained `small` checkpoint shipped in the package, in eval mode."""
    if not DEFAULT_CHECKPOINT.is_file():
        raise CheckpointError(f"the default checkpoint {DEFAULT_CHECKPOINT} is missing from the package; "
                              "re-create it with `make default-model`")
    model, metadata = load_checkpoint(DEFAULT_CHECKPOINT)
    test = default_metrics()["model"]["test"]
    label = (f"{model.config.name}, trained on the reviews data for {metadata.get('step', '?')} steps "
             f"(test accuracy {test['accuracy']:.3f}, ROC AUC {test['roc_auc']:.3f})")
    return DefaultModel(model, label, trained=True, text_tokens=text_tokens_of(model, metadata))
