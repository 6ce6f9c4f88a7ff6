"""Reviews to model-input batches, one way for every caller: training, evaluation, the export's task check
and parity samples, calibration data and `mahia-eval` all go through `iter_batches`.

A batch's texts are right-padded to its longest one (`ReviewsDataset.batch`); padding positions are masked
out, so results do not depend on how rows are grouped or padded (padding invariance, a tested property).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from mahia.data.reviews import ReviewsDataset, load_reviews
from mahia.data.tokenizer import split_words
from mahia.model import INPUT_NAMES, ModelConfig

TOKEN_INPUTS = ("input_ids", "attention_mask")


class Batch(NamedTuple):
    """Model inputs and labels of some rows, and which rows of the dataset they are."""

    inputs: dict[str, Tensor]
    labels: Tensor
    rows: np.ndarray


def length_sorted_order(dataset: ReviewsDataset, max_len: int) -> np.ndarray:
    """Row order by encoded length, so batches carry little padding (results do not depend on padding)."""
    lengths = np.array([min(len(split_words(t)) + 1, max_len) for t in dataset.texts])
    return np.argsort(lengths, kind="stable")


def pad_tokens(inputs: Mapping[str, Tensor], length: int) -> dict[str, Tensor]:
    """The inputs with input_ids and attention_mask right-padded to at least `length` (masked positions)."""
    short = length - inputs["input_ids"].shape[1]
    if short <= 0:
        return dict(inputs)
    return {k: torch.nn.functional.pad(v, (0, short)) if k in TOKEN_INPUTS else v for k, v in inputs.items()}


def iter_batches(dataset: ReviewsDataset, batch_size: int, max_len: int, vocab_size: int,
                 order: np.ndarray | None = None, min_len: int = 1) -> Iterator[Batch]:
    """Consecutive batches of `batch_size` rows taken in `order` (default: dataset order), texts cut to
    max_len tokens and padded to at least min_len."""
    order = np.arange(len(dataset)) if order is None else np.asarray(order, dtype=np.int64)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        inputs, labels = dataset.batch(rows, max_len, vocab_size)
        yield Batch(pad_tokens(inputs, min_len), labels, rows)


def run_batches(run: Callable[[dict[str, Tensor]], np.ndarray], dataset: ReviewsDataset, max_len: int,
                vocab_size: int, batch_size: int, min_len: int = 1) -> np.ndarray:
    """Logits [N, C] of `run` over length-sorted batches, in dataset order; sequences right-padded to min_len."""
    out: np.ndarray | None = None
    for batch in iter_batches(dataset, batch_size, max_len, vocab_size, length_sorted_order(dataset, max_len),
                              min_len):
        logits = np.asarray(run(batch.inputs), dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] != len(batch.rows):
            raise ValueError(f"the artifact returned logits of shape {logits.shape} for a batch of {len(batch.rows)}")
        if out is None:
            out = np.zeros((len(dataset), logits.shape[1]), dtype=np.float32)
        out[batch.rows] = logits
    if out is None:
        raise ValueError("cannot run on an empty split")
    return out


def feeds_at_points(config: ModelConfig, points: Sequence[tuple[int, int]],
                    split: str = "test") -> list[dict[str, np.ndarray]]:
    """One feed (numpy arrays in INPUT_NAMES order) per (batch, seq) point from the reviews data set, padded to
    exactly seq.

    Each point takes the next `batch` rows of the split, so points see different reviews; texts longer
    than seq are truncated (as the tokenizer does), shorter ones keep their real padding.
    """
    data = load_reviews()[split]
    feeds, start = [], 0
    for batch, seq in points:
        rows = np.arange(start, start + batch) % len(data)
        start += batch
        (inputs, _, _), = iter_batches(data, batch, seq, config.vocab_size, order=rows, min_len=seq)
        feeds.append(OrderedDict((name, inputs[name].numpy()) for name in INPUT_NAMES))
    if config.num_numeric != feeds[0]["numeric"].shape[1] or config.num_categorical != feeds[0]["categorical"].shape[1]:
        raise ValueError(f"config {config.name!r} does not take the reviews data's features "
                         f"({feeds[0]['numeric'].shape[1]} numeric, {feeds[0]['categorical'].shape[1]} categorical)")
    return feeds
