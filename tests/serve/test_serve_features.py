"""Feature code shared by the data set and the server, review validation, request parsing, sequence buckets, and
`Deployment.run` refusing string / object / ragged arrays (no Ray here)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import mahia.runtime as runtime
from mahia.data import default_data_path, load_reviews
from mahia.data.features import DATA_COLUMNS, MAX_TEXT_CHARS, FeatureSpec, ReviewValidationError, parse_review
from mahia.model import InputValidationError
from mahia.serve.classifier import ReviewClassifier, bucket_length, pad_to, seq_buckets
from mahia.serve.protocol import MAX_REVIEWS, RequestError, parse_classify_request

GOOD = {"title": "Lovely", "text": "Soft fabric, true to size.", "age": 41, "positive_feedback_count": 3,
        "division_name": "General", "department_name": "Tops", "class_name": "Knits"}


def data_records(rows: np.ndarray) -> list[dict]:
    """Rows of the data file as the records a client sends (None where the file has no value)."""
    table = pq.read_table(default_data_path(), columns=list(DATA_COLUMNS.values())).to_pydict()
    return [{field: table[column][int(i)] for field, column in DATA_COLUMNS.items()} for i in rows]


@pytest.fixture(scope="module")
def splits():
    return load_reviews()


def test_server_features_equal_the_data_sets(splits) -> None:
    """Records from the raw file, encoded as the server does, give exactly the data set's model inputs."""
    test = splits["test"]
    rows = np.arange(0, len(test), 37)[:64]  # 64 rows spread over the split: missing titles and categories among them
    spec = FeatureSpec.from_dataset(splits["train"])
    records = [parse_review(r) for r in data_records(test.row_ids[rows])]
    assert any(r.title is None for r in records), "the sample should hold a review without a title"
    got = spec.model_inputs(records, 64, 4096)
    want, _ = test.batch(rows, 64, 4096)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


def test_feature_spec_json_round_trip_and_errors(splits) -> None:
    spec = FeatureSpec.from_dataset(splits["test"])
    assert spec == FeatureSpec.from_dataset(splits["train"]), "every split carries the train split's statistics"
    assert FeatureSpec.from_json(spec.to_json()) == spec  # float64 statistics survive JSON exactly
    assert spec.category_codes(["General", "Nope", None]) == [1, 0, 0]  # unknown and missing -> 0
    broken = json.loads(spec.to_json())
    broken["numeric_std"] = [1.0, 0.0]
    with pytest.raises(ValueError, match="std > 0"):
        FeatureSpec.from_json(json.dumps(broken))
    with pytest.raises(ValueError, match="not a feature spec.*categories"):
        FeatureSpec.from_json(json.dumps({k: v for k, v in json.loads(spec.to_json()).items() if k != "categories"}))


def test_missing_values_follow_the_data() -> None:
    record = parse_review({"age": 30, "positive_feedback_count": 0})  # texts and categories may be missing
    assert (record.title, record.text, record.class_name) == (None, None, None)
    assert parse_review({**GOOD, "title": "", "text": None}).title == ""


@pytest.mark.parametrize("change, field, rule", [
    ({"age": "41"}, "age", "expected a number, got a string"),
    ({"age": True}, "age", "expected a number, got a boolean"),
    ({"age": None}, "age", "required number is missing"),
    ({"age": 400}, "age", r"expected a finite number in \[0, 150\]"),
    ({"age": math.nan}, "age", "expected a finite number"),
    ({"positive_feedback_count": -1}, "positive_feedback_count", ">= 0"),
    ({"text": 5}, "text", "expected a string or null, got a number"),
    ({"title": ["a"]}, "title", "got an array"),
    ({"class_name": {"x": 1}}, "class_name", "got an object"),
    ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "text", f"over the limit of {MAX_TEXT_CHARS}"),
    ({"txt": "typo"}, "txt", "unknown field"),
])
def test_bad_fields_are_named(change: dict, field: str, rule: str) -> None:
    with pytest.raises(ReviewValidationError, match=rule) as info:
        parse_review({**GOOD, **change}, "reviews[3]")
    assert info.value.field == f"reviews[3].{field}"
    missing = {k: v for k, v in GOOD.items() if k != "positive_feedback_count"}
    with pytest.raises(ReviewValidationError, match="positive_feedback_count: required"):
        parse_review(missing)


@pytest.mark.parametrize("body, status, field", [
    (b'{"reviews": [', 400, ""),
    (b"\xff\xfe", 400, ""),
    (b"[1, 2]", 422, ""),
    (b'{"reviews": {}}', 422, "reviews"),
    (b'{"reviews": []}', 422, "reviews"),
    (b'{"reviews": [], "extra": 1}', 422, "extra"),
    (b'{"reviews": [7]}', 422, "reviews[0]"),
    (json.dumps({"reviews": [GOOD] * (MAX_REVIEWS + 1)}).encode(), 413, "reviews"),
    (b"[" * 100_000, 400, ""),
    (b" " * (5 << 20), 413, ""),
])
def test_request_errors_have_status_and_field(body: bytes, status: int, field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_classify_request(body)
    assert (info.value.status, info.value.field) == (status, field)
    assert info.value.body()["error"]["message"]
    assert len(parse_classify_request(json.dumps({"reviews": [GOOD] * 3}).encode())) == 3


def test_buckets_cover_the_exported_range() -> None:
    assert seq_buckets(1, 384, 64) == (1, 2, 4, 8, 16, 32, 64)
    assert seq_buckets(1, 160, 160) == (1, 2, 4, 8, 16, 32, 64, 128, 160)
    assert seq_buckets(8, 100, 512) == (8, 16, 32, 64, 100)
    assert [bucket_length(n, (8, 16, 100)) for n in (1, 8, 9, 100)] == [8, 8, 16, 100]
    with pytest.raises(ValueError, match="longer than the largest bucket"):
        bucket_length(101, (8, 16, 100))
    padded = pad_to({"input_ids": torch.ones(2, 3, dtype=torch.int64), "attention_mask": torch.ones(2, 3)}, 8)
    assert padded["input_ids"].shape == (2, 8) and padded["attention_mask"][:, 3:].sum() == 0


@pytest.mark.parametrize("bad", [np.array([["a", "b"]]), np.array([[1, 2]], dtype=object), [[1, 2], [3]], "ids"])
def test_deployment_run_refuses_non_numeric_arrays(tiny_export: dict, bad: object) -> None:
    deployment = runtime.load(tiny_export["dir"])
    good = {"input_ids": np.ones((1, 2), np.int64), "attention_mask": np.ones((1, 2), np.int64),
            "numeric": np.zeros((1, 2), np.float32), "categorical": np.zeros((1, 3), np.int64)}
    assert deployment.run(good).shape == (1, 2)
    with pytest.raises(InputValidationError, match="input 'input_ids'"):
        deployment.run({**good, "input_ids": bad})


def test_classifier_refuses_an_unlisted_features_file(tiny_export: dict, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_export["dir"], tmp_path / "artifact"))
    (copy / "features.json").write_text("{}")
    with pytest.raises(runtime.ArtifactIntegrityError, match="features.json is not listed in manifest.json"):
        ReviewClassifier.load(copy)

