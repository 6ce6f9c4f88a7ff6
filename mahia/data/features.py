"""Raw review records -> model inputs: the one feature code that the data set, the exporter and the server share.

A record is what a client sends (`mahia-serve`) and what a row of the data file holds:

    {"title": str | None, "text": str | None, "age": number, "positive_feedback_count": number,
     "division_name": str | None, "department_name": str | None, "class_name": str | None}

- text: title and review text joined by ". " (a missing or empty part is left out), then `tokenizer.encode_texts`;
- numeric: [age, log(1 + max(positive feedback, 0))], standardised with the train split's mean and std;
- categorical: each name's index + 1 in its table, 0 for a missing or unknown name (as in training).

`FeatureSpec` freezes the statistics and tables: the data set fits it on its train split, a deployment reads it
from the artifact's `features.json` (or re-derives it from the data, the same numbers), and both encode with it.
Missing values follow the data: titles, texts and category names may be missing (the file has rows without
them); age and positive feedback never are, so a record must carry both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mahia.data.tokenizer import encode_texts

if TYPE_CHECKING:
    from mahia.data.reviews import ReviewsDataset

TEXT_FIELDS = ("title", "text")
NUMERIC_FIELDS = ("age", "positive_feedback_count")
CATEGORY_FIELDS = ("division_name", "department_name", "class_name")
REVIEW_FIELDS = (*TEXT_FIELDS, *NUMERIC_FIELDS, *CATEGORY_FIELDS)
# Record field -> column of the reviews data file.
DATA_COLUMNS = {"title": "Title", "text": "Review Text", "age": "Age",
                "positive_feedback_count": "Positive Feedback Count", "division_name": "Division Name",
                "department_name": "Department Name", "class_name": "Class Name"}
# Category tables in a fixed order (index 0 = unknown or missing); spellings are the data's own.
CATEGORY_VALUES = {
    "Division Name": ("General", "General Petite", "Initmates"),
    "Department Name": ("Bottoms", "Dresses", "Intimate", "Jackets", "Tops", "Trend"),
    "Class Name": ("Blouses", "Casual bottoms", "Chemises", "Dresses", "Fine gauge", "Intimates", "Jackets",
                   "Jeans", "Knits", "Layering", "Legwear", "Lounge", "Outerwear", "Pants", "Shorts", "Skirts",
                   "Sleep", "Sweaters", "Swim", "Trend"),
}
# Input limits of a record. The longest title in the data has 52 characters and the longest review 508; the
# trained model reads at most its first 63 words. 5,000 characters is ten times the data's longest text and
# bounds the tokenizer's work per field; ages in the data are 18..99.
MAX_TEXT_CHARS = 5000
AGE_RANGE = (0.0, 150.0)
FEATURES_FILE = "features.json"


class ReviewValidationError(ValueError):
    """A review record that cannot be encoded; `field` names it (e.g. "reviews[2].age"), `rule` what was expected."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def review_text(title: object, text: object) -> str:
    """Title and review text joined by ". "; a missing (None) or empty part is left out."""
    return ". ".join(str(part).strip() for part in (title, text) if part)


def raw_numeric(age: object, positive_feedback_count: object) -> tuple[float, float]:
    """[age, log(1 + max(positive feedback, 0))] before standardisation."""
    return float(age), math.log1p(max(float(positive_feedback_count), 0.0))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ReviewRecord:
    """One validated review, in the record's field names."""

    title: str | None
    text: str | None
    age: float
    positive_feedback_count: float
    division_name: str | None
    department_name: str | None
    class_name: str | None


def parse_review(record: object, where: str = "review") -> ReviewRecord:
    """A validated ReviewRecord, or ReviewValidationError naming the first bad field (`where` prefixes the name).

    Text and category fields: a string or null, or absent; texts at most MAX_TEXT_CHARS characters.
    age: a number in AGE_RANGE; positive_feedback_count: a number >= 0 (both required: the data has no row
    without them). Booleans are not numbers here, and unknown fields are refused (a misspelt field would
    otherwise be dropped without a word).
    """
    if not isinstance(record, Mapping):
        raise ReviewValidationError(where, f"expected an object with fields {', '.join(REVIEW_FIELDS)}, "
                                           f"got {_json_type(record)}")
    unknown = sorted(str(k) for k in record if k not in REVIEW_FIELDS)
    if unknown:
        raise ReviewValidationError(f"{where}.{unknown[0]}", f"unknown field; expected only {', '.join(REVIEW_FIELDS)}")
    values: dict[str, object] = {}
    for name in (*TEXT_FIELDS, *CATEGORY_FIELDS):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise ReviewValidationError(f"{where}.{name}", f"expected a string or null, got {_json_type(value)}")
        if name in TEXT_FIELDS and value is not None and len(value) > MAX_TEXT_CHARS:
            raise ReviewValidationError(f"{where}.{name}",
                                        f"text of {len(value)} characters is over the limit of {MAX_TEXT_CHARS}")
        values[name] = value
    for name in NUMERIC_FIELDS:
        if name not in record or record[name] is None:
            raise ReviewValidationError(f"{where}.{name}", "required number is missing")
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReviewValidationError(f"{where}.{name}", f"expected a number, got {_json_type(value)}")
        number = float(value)
        low, high = AGE_RANGE if name == "age" else (0.0, math.inf)
        if not (math.isfinite(number) and low <= number <= high):
            expected = f"in [{low:g}, {high:g}]" if name == "age" else ">= 0"
            raise ReviewValidationError(f"{where}.{name}", f"expected a finite number {expected}, got {value!r}")
        values[name] = number
    return ReviewRecord(**values)  # type: ignore[arg-type]


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", str: "a string", int: "a number", float: "a number",
             list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class FeatureSpec:
    """The train split's numeric statistics and the category tables: everything a record's encoding depends on."""

    numeric_mean: tuple[float, ...]  # per NUMERIC_FIELDS, of raw_numeric
    numeric_std: tuple[float, ...]
    categories: tuple[tuple[str, ...], ...]  # per CATEGORY_FIELDS; code = index + 1, 0 = unknown

    @classmethod
    def fit(cls, raw_train: np.ndarray, categories: Mapping[str, Sequence[str]] = CATEGORY_VALUES) -> FeatureSpec:
        """Mean and std (float64, population) of raw_numeric rows of the train split [N, 2]; tables by data column."""
        raw_train = np.asarray(raw_train, dtype=np.float64)
        mean, std = raw_train.mean(axis=0), raw_train.std(axis=0)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std),
                   tuple(tuple(categories[DATA_COLUMNS[f]]) for f in CATEGORY_FIELDS))

    @classmethod
    def from_dataset(cls, dataset: ReviewsDataset) -> FeatureSpec:
        """The spec a loaded split was encoded with (fitted on its train split):
        `FeatureSpec.from_dataset(load_reviews()["train"])`."""
        return dataset.features

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """float32 [N, 2] standardised features of raw_numeric rows [N, 2] (float64 arithmetic, as in training)."""
        raw = np.asarray(raw, dtype=np.float64)
        return ((raw - np.array(self.numeric_mean)) / np.array(self.numeric_std)).astype(np.float32)

    def category_codes(self, names: Sequence[object]) -> list[int]:
        """Codes of one row's category names (per CATEGORY_FIELDS): index + 1 in its table, 0 if missing or unknown."""
        return [table.index(name) + 1 if name in table else 0 for table, name in zip(self.categories, names)]

    def model_inputs(self, records: Sequence[ReviewRecord], max_len: int, vocab_size: int) -> dict[str, Tensor]:
        """Model inputs for validated records, texts cut to max_len tokens and right-padded to the longest."""
        ids, mask = encode_texts([review_text(r.title, r.text) for r in records], max_len, vocab_size)
        raw = np.array([raw_numeric(r.age, r.positive_feedback_count) for r in records], dtype=np.float64)
        raw = raw.reshape(-1, len(NUMERIC_FIELDS))
        codes = np.array([self.category_codes([getattr(r, f) for f in CATEGORY_FIELDS]) for r in records],
                         dtype=np.int64).reshape(-1, len(CATEGORY_FIELDS))
        return {"input_ids": ids, "attention_mask": mask, "numeric": torch.from_numpy(self.standardise(raw)),
                "categorical": torch.from_numpy(codes)}

    def to_json(self) -> str:
        """JSON text (float64 values round-trip exactly)."""
        return json.dumps({"numeric_fields": list(NUMERIC_FIELDS), "numeric_mean": list(self.numeric_mean),
                           "numeric_std": list(self.numeric_std),
                           "categories": {f: list(t) for f, t in zip(CATEGORY_FIELDS, self.categories)}}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        """The spec written by to_json, or ValueError naming what is wrong."""
        try:
            data = json.loads(text)
            if data["numeric_fields"] != list(NUMERIC_FIELDS):
                raise ValueError(f"numeric_fields {data['numeric_fields']} != {list(NUMERIC_FIELDS)}")
            mean, std = (tuple(float(v) for v in data[k]) for k in ("numeric_mean", "numeric_std"))
            categories = tuple(tuple(str(v) for v in data["categories"][f]) for f in CATEGORY_FIELDS)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a feature spec ({FEATURES_FILE}): {exc}") from None
        if len(mean) != len(NUMERIC_FIELDS) or len(std) != len(NUMERIC_FIELDS) or not all(s > 0 for s in std):
            raise ValueError(f"not a feature spec ({FEATURES_FILE}): numeric_mean/std must hold "
                             f"{len(NUMERIC_FIELDS)} values, std > 0")
        return cls(mean, std, categories)
