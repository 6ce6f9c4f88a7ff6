"""The embedded default model that `mahia-export` uses when no checkpoint is given."""

from __future__ import annotations

from dataclasses import dataclass

from mahia.model import MahiaX, build_model, get_config


@dataclass(frozen=True)
class DefaultModel:
    """The default model and an honest label of what it is."""

    model: MahiaX
    label: str
    trained: bool


def load_default_model() -> DefaultModel:
    """The seeded `small` config, untrained: no trained checkpoint ships yet."""
    model = build_model(get_config("small"), seed=0).eval()
    return DefaultModel(model, "small, seed 0, untrained (no trained checkpoint ships yet)", trained=False)
