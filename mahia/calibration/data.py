"""Calibration data: a deterministic subset of the real reviews data, as model-input batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mahia.data import DataConfig, ReviewsDataset, iter_batches, load_reviews
from mahia.data.tokenizer import split_words
from mahia.model import ModelConfig

MIN_CALIBRATION_SAMPLES = 16


class CalibrationError(ValueError):
    """Calibration cannot proceed: too few samples, an unknown method, a table that does not fit."""


@dataclass(frozen=True)
class CalibrationDataConfig:
    """Which rows calibrate, and how they are batched."""

    samples: int = 512
    split: str = "train"
    seed: int = 0
    batch_size: int = 32
    max_len: int | None = None  # None: the model's max_seq_len


@dataclass(frozen=True)
class CalibrationData:
    """Model-input batches of real samples plus the hash that identifies exactly which rows they are."""

    batches: tuple[dict[str, Tensor], ...]
    labels: Tensor
    samples: int
    split: str
    content_hash: str

    def numpy_batches(self) -> list[dict[str, np.ndarray]]:
        """The batches as ONNX Runtime feeds (numpy arrays, same names)."""
        return [{k: v.numpy() for k, v in batch.items()} for batch in self.batches]


def select_rows(dataset: ReviewsDataset, samples: int, seed: int) -> ReviewsDataset:
    """A seeded subset of `samples` rows, ordered by text length so batches carry little padding."""
    if samples < MIN_CALIBRATION_SAMPLES:
        raise CalibrationError(f"too few calibration samples: {samples}; at least {MIN_CALIBRATION_SAMPLES} "
                               "are needed for stable ranges (default 512)")
    if samples > len(dataset):
        raise CalibrationError(f"{samples} calibration samples requested but the split has only {len(dataset)} rows")
    picked = np.random.default_rng(seed).choice(len(dataset), size=samples, replace=False)
    lengths = np.array([len(split_words(dataset.texts[i])) for i in picked])
    return dataset.subset(picked[np.argsort(lengths, kind="stable")])


def load_calibration_data(model_config: ModelConfig, config: CalibrationDataConfig = CalibrationDataConfig(),
                          data_config: DataConfig = DataConfig(),
                          dataset: ReviewsDataset | None = None) -> CalibrationData:
    """Batches of `config.samples` real rows from `config.split` of the reviews data (never random tensors)."""
    if dataset is None:
        splits = load_reviews(data_config)
        if config.split not in splits:
            raise CalibrationError(f"unknown data split {config.split!r}; expected one of {', '.join(splits)}")
        dataset = splits[config.split]
    rows = select_rows(dataset, config.samples, config.seed)
    max_seq_len, vocab_size = model_config.max_seq_len, model_config.vocab_size
    max_len = min(config.max_len or max_seq_len, max_seq_len)
    batches = list(iter_batches(rows, config.batch_size, max_len, vocab_size))
    return CalibrationData(tuple(b.inputs for b in batches), torch.cat([b.labels for b in batches]), len(rows),
                           config.split, rows.content_hash())
