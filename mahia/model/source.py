"""Where a model's weights come from, as data: a checkpoint file, a named config's seeded weights, or the
embedded default. The export records it in the manifest and `mahia-eval` rebuilds the eager model from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT, CONFIG, DEFAULT = "checkpoint", "config", "default"


@dataclass(frozen=True)
class ModelSource:
    """One model origin. Build it with `from_checkpoint`, `from_config` or `embedded_default`."""

    kind: str  # CHECKPOINT, CONFIG or DEFAULT
    path: str | None = None  # kind CHECKPOINT: the safetensors file
    config: str | None = None  # kind CONFIG: the named config ...
    seed: int | None = None  # ... and the seed of its (untrained) weights

    def __post_init__(self) -> None:
        wanted = {CHECKPOINT: ("path",), CONFIG: ("config", "seed"), DEFAULT: ()}
        if self.kind not in wanted:
            raise ValueError(f"model source kind {self.kind!r}; expected one of {', '.join(wanted)}")
        for name in ("path", "config", "seed"):
            if (getattr(self, name) is not None) != (name in wanted[self.kind]):
                raise ValueError(f"model source of kind {self.kind!r}: field {name!r} must "
                                 f"{'be set' if name in wanted[self.kind] else 'be unset'}")

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ModelSource:
        """A safetensors checkpoint written by mahia."""
        return cls(CHECKPOINT, path=str(path))

    @classmethod
    def from_config(cls, name: str, seed: int = 0) -> ModelSource:
        """A named config's weights, seeded (untrained)."""
        return cls(CONFIG, config=name, seed=seed)

    @classmethod
    def embedded_default(cls) -> ModelSource:
        """The trained checkpoint shipped in mahia/default/."""
        return cls(DEFAULT)

    def __str__(self) -> str:
        """The origin in words, as the report prints it."""
        if self.kind == CHECKPOINT:
            return f"checkpoint {self.path}"
        if self.kind == CONFIG:
            return f"config {self.config}"
        return "embedded default"

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the kind and the fields it sets."""
        return {"kind": self.kind, **{k: v for k, v in (("path", self.path), ("config", self.config),
                                                         ("seed", self.seed)) if v is not None}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSource:
        """Parse `to_dict`'s form; a ValueError names what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"model source must be an object, got {data!r}")
        unknown = sorted(set(data) - {"kind", "path", "config", "seed"})
        if unknown:
            raise ValueError(f"model source has unknown fields: {', '.join(unknown)}")
        return cls(str(data.get("kind")), data.get("path"), data.get("config"), data.get("seed"))
