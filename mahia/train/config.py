"""Training configuration: one frozen dataclass holding every choice a training run makes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

# Distillation losses (mahia.train.losses): soft-label KL at a temperature, MSE of row-centred logits, and
# feature matching (the batch's pairwise similarity structure of the student's pooled features vs the teacher's).
DISTILL_MODES = ("kl", "mse", "features")


@dataclass(frozen=True)
class TrainConfig:
    """What `mahia-train` does: model size, data, optimiser, schedule, losses and output.

    Steps are optimiser steps. The run ends after `epochs` passes over the training split or after
    `max_steps` steps, whichever comes first; validation runs at the end of every epoch and at the end
    of the run. `max_text_tokens` caps the tokens per text (the [CLS] token plus words) to bound the
    cost of a CPU run; None means the model config's max_seq_len.

    `pretrain_epochs` passes of masked-word prediction over the training texts come first (mahia.train.pretrain);
    `teacher` is "tfidf" (the cross-fitted TF-IDF baseline on the full review) or a MAHIA-X checkpoint, whose
    outputs are computed once per data set and cached (mahia.train.distill); `distill_mode` is "kl", "mse",
    "features" or a "+"-joined combination. `length_groups` > 0 batches rows of similar length together (pools of
    that many batches, sorted by length, batches shuffled); `eval_every` adds validations between epoch ends.
    """

    model: str = "small"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_text_tokens: int | None = None
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 1e-3
    init_checkpoint: str | None = None  # start from these weights instead of the seeded initialisation
    teacher: str | None = None
    distill_mode: str = "kl"
    distill_temperature: float = 2.0
    distill_weight: float = 0.5
    pretrain_epochs: int = 0
    pretrain_lr: float | None = None  # None: lr
    mask_fraction: float = 0.15
    length_groups: int = 0
    eval_every: int | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    save_every: int = 50
    data_path: str | None = None
    train_rows: int | None = None
    eval_rows: int | None = None
    baseline: bool = True

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "eval_batch_size", "save_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_text_tokens", "threads", "train_rows", "eval_rows", "eval_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or None, got {value}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("TrainConfig.warmup_steps, weight_decay and grad_clip must be >= 0")
        if self.aux_loss_weight < 0 or self.z_loss_weight < 0:
            raise ValueError("TrainConfig.aux_loss_weight and z_loss_weight must be >= 0")
        if not self.distill_temperature > 0:
            raise ValueError(f"TrainConfig.distill_temperature must be > 0, got {self.distill_temperature}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"TrainConfig.distill_weight must be in [0, 1], got {self.distill_weight}")
        modes = self.distill_mode.split("+")
        if not modes or any(m not in DISTILL_MODES for m in modes) or len(set(modes)) != len(modes):
            raise ValueError(f"TrainConfig.distill_mode must be one of {', '.join(DISTILL_MODES)} or a '+'-joined "
                             f"combination, got {self.distill_mode!r}")
        if self.pretrain_epochs < 0 or self.length_groups < 0:
            raise ValueError("TrainConfig.pretrain_epochs and length_groups must be >= 0")
        if self.pretrain_lr is not None and not self.pretrain_lr > 0:
            raise ValueError(f"TrainConfig.pretrain_lr must be > 0 or None, got {self.pretrain_lr}")
        if not 0 < self.mask_fraction < 1:
            raise ValueError(f"TrainConfig.mask_fraction must be in (0, 1), got {self.mask_fraction}")

    @property
    def distill_modes(self) -> tuple[str, ...]:
        """The distillation loss terms: "kl", "mse" and / or "features"."""
        return tuple(self.distill_mode.split("+"))

    def to_json(self) -> str:
        """Serialise to a JSON string (stored in checkpoints and metrics.json)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Parse a config written by `to_json`, naming unknown fields."""
        data = json.loads(text)
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"train config has unknown fields: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
