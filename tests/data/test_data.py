"""The reviews data module on the real file: counts, labels, features, split and batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mahia.data import DataConfig, DataError, default_data_path, encode_texts, iter_batches, load_reviews
from mahia.data.reviews import REQUIRED_COLUMNS
from mahia.data.tokenizer import split_words, token_id, truncate_words
from mahia.model import get_config, validate_inputs
from mahia.model.config import CLS_ID, FIRST_WORD_ID, REVIEWS_CATEGORICAL_CARDINALITIES


@pytest.fixture(scope="module")
def splits():
    return load_reviews()


def test_counts_split_and_label_balance(splits) -> None:
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 23486
    assert sizes["val"] == sizes["test"] == 2349
    ids = np.concatenate([s.row_ids for s in splits.values()])
    assert len(np.unique(ids)) == 23486, "splits must not overlap"
    positive = np.concatenate([s.labels for s in splits.values()]).mean()
    assert 0.81 < positive < 0.83  # 82% recommended
    assert np.array_equal(load_reviews()["test"].row_ids, splits["test"].row_ids), "split must be deterministic"


def test_rating_is_not_a_feature(splits) -> None:
    assert "Rating" not in REQUIRED_COLUMNS
    assert splits["train"].numeric.shape[1] == 2
    assert splits["train"].categorical.shape[1] == len(REVIEWS_CATEGORICAL_CARDINALITIES)


def test_features_match_the_model_schema(splits) -> None:
    train = splits["train"]
    assert (np.allclose(train.numeric.mean(axis=0), 0, atol=1e-4)
            and np.allclose(train.numeric.std(axis=0), 1, atol=1e-3))
    for j, cardinality in enumerate(REVIEWS_CATEGORICAL_CARDINALITIES):
        codes = np.concatenate([s.categorical[:, j] for s in splits.values()])
        assert codes.min() >= 0 and codes.max() == cardinality - 1
        assert (codes == 0).sum() == 14  # the rows with no division / department / class name


def test_rows_without_review_text_keep_title_and_features(splits) -> None:
    path = default_data_path()
    table = pq.read_table(path, columns=["Title", "Review Text"])
    no_text = [i for i, t in enumerate(table.column("Review Text").to_pylist()) if t is None]
    assert len(no_text) == 845
    everything = {int(r): t for s in splits.values() for r, t in zip(s.row_ids, s.texts)}
    titles = table.column("Title").to_pylist()
    assert all(everything[i] == (titles[i] or "").strip() for i in no_text[:50])


def test_batches_are_valid_model_inputs(splits) -> None:
    config = get_config("tiny")
    inputs, labels = splits["val"].batch(range(7), config.max_seq_len, config.vocab_size)
    validate_inputs(config, inputs)
    assert labels.shape == (7,) and set(labels.tolist()) <= {0, 1}
    assert inputs["input_ids"].shape[1] <= config.max_seq_len
    assert (inputs["input_ids"][:, 0] == CLS_ID).all()
    batches = list(iter_batches(splits["val"].subset(np.arange(10)), 4, 64, config.vocab_size))
    assert [b[1].shape[0] for b in batches] == [4, 4, 2]


def test_word_tokenizer() -> None:
    assert split_words("Runs SMALL, isn't it?  Très chic!") == ["runs", "small", ",", "isn't", "it", "?", "très",
                                                                "chic", "!"]
    ids, mask = encode_texts(["Runs small, runs", ""], max_len=4, vocab_size=100)
    runs, small, comma = (token_id(w, 100) for w in ("runs", "small", ","))
    assert ids.tolist() == [[CLS_ID, runs, small, comma], [CLS_ID, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    # The hash is fixed (a deployment recomputes it): these ids are part of the trained default's contract.
    assert [token_id(w, 4096) for w in ("love", "dress", "!")] == [2250, 4048, 1805]
    assert all(FIRST_WORD_ID <= token_id(str(i), 7) < 7 for i in range(200))
    with pytest.raises(ValueError, match="vocab_size must be > 2"):
        token_id("a", 2)
    assert truncate_words("One, two three", 2) == "one ,"


def test_bad_data_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data file not found: .*missing.parquet"):
        load_reviews(DataConfig(path=str(tmp_path / "missing.parquet")))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 nope")
    with pytest.raises(DataError, match=r"garbage.parquet is not a readable parquet file"):
        load_reviews(DataConfig(path=str(garbage)))
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"Title": ["a"], "Recommended IND": [1]}), wrong)
    with pytest.raises(DataError, match=r"wrong.parquet lacks columns \['Review Text', 'Age'"):
        load_reviews(DataConfig(path=str(wrong)))
    tiny = tmp_path / "tiny.parquet"
    pq.write_table(pq.read_table(default_data_path()).slice(0, 3), tiny)
    with pytest.raises(DataError, match=r"split 'test' is empty \(3 rows"):
        load_reviews(DataConfig(path=str(tiny)))


def test_slice_as_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "slice.parquet"
    pq.write_table(pq.read_table(default_data_path()).slice(0, 200), path)
    splits = load_reviews(DataConfig(path=str(path)))
    assert {k: len(v) for k, v in splits.items()} == {"train": 160, "val": 20, "test": 20}
    assert isinstance(splits["train"].batch([0, 1], 32, 512)[0]["input_ids"], torch.Tensor)
