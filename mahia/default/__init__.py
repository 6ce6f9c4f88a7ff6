"""The embedded default model that `mahia-export` uses when no checkpoint is given, and the loading of any
model source (a checkpoint, a named config's seeded weights, or this default) into an eager model.

`small.safetensors` is the `small` config trained on the reviews data by the command recorded in
`metrics.json` (key "command"; `python -m mahia.train.reproduce` re-runs it and compares the metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mahia.model import CheckpointError, MahiaX, ModelConfig, ModelSource, build_model, get_config, load_checkpoint
from mahia.model.checkpoint import text_tokens_of
from mahia.model.source import CHECKPOINT, CONFIG

DEFAULT_DIR = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = DEFAULT_DIR / "small.safetensors"
DEFAULT_METRICS = DEFAULT_DIR / "metrics.json"


@dataclass(frozen=True)
class LoadedModel:
    """An eager model in eval mode, where it came from, and an honest label of what it is."""

    model: MahiaX
    source: ModelSource
    label: str
    trained: bool
    text_tokens: int  # tokens per text it was trained on ([CLS] + words): what evaluations feed it

    @property
    def config(self) -> ModelConfig:
        """The model's config."""
        return self.model.config


def default_metrics() -> dict[str, object]:
    """The metrics.json written by the training run that produced the default checkpoint."""
    if not DEFAULT_METRICS.is_file():
        raise CheckpointError(f"the default model's metrics file {DEFAULT_METRICS} is missing from the package")
    return json.loads(DEFAULT_METRICS.read_text())


def load_default_model() -> LoadedModel:
    """The trained `small` checkpoint shipped in the package, in eval mode."""
    if not DEFAULT_CHECKPOINT.is_file():
        raise CheckpointError(f"the default checkpoint {DEFAULT_CHECKPOINT} is missing from the package; "
                              "re-create it with `make default-model`")
    model, metadata = load_checkpoint(DEFAULT_CHECKPOINT)
    test = default_metrics()["model"]["test"]
    label = (f"{model.config.name}, trained on the reviews data for {metadata.get('step', '?')} steps "
             f"(test accuracy {test['accuracy']:.3f}, ROC AUC {test['roc_auc']:.3f})")
    return LoadedModel(model, ModelSource.embedded_default(), label, trained=True,
                       text_tokens=text_tokens_of(model, metadata))


def load_model(source: ModelSource, expected: ModelConfig | None = None) -> LoadedModel:
    """The eager model of `source` in eval mode; a checkpoint must match `expected` when it is given."""
    if source.kind == CHECKPOINT:
        model, metadata = load_checkpoint(source.path, expected)  # type: ignore[arg-type]
        trained = metadata.get("trained", "").strip().lower() in ("1", "true", "yes")
        label = metadata.get("label") or f"checkpoint {Path(source.path).name}"  # type: ignore[arg-type]
        return LoadedModel(model.eval(), source, label, trained, text_tokens_of(model, metadata))
    if source.kind == CONFIG:
        model = build_model(get_config(source.config), seed=source.seed).eval()  # type: ignore[arg-type]
        label = f"{source.config}, seed {source.seed}, untrained (random initialisation)"
        return LoadedModel(model, source, label, False, model.config.max_seq_len)
    return load_default_model()
