"""The HTTP API's request and response bodies, and the status code of every way a request can be wrong.

POST /v1/classify {"reviews": [record, ...]} -> 200 {"artifact", "manifest_sha256", "predictions": [{"probability",
"label"}, ...]} (records: mahia.data.features). Bad requests are answered with {"error": {"status", "field",
"message"}}:

- 400: the body is not JSON (or not UTF-8);
- 413: the body is over MAX_BODY_BYTES, or holds more than MAX_REVIEWS reviews;
- 422: well-formed JSON of the wrong shape: not an object, no "reviews" array, an empty one, a review field of the
  wrong type, a text over its length limit, a number out of range, a missing required number, an unknown field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from mahia.data.features import ReviewRecord, ReviewValidationError, parse_review
from mahia.serve.classifier import Prediction

# Reviews per request: 16 batches of the default artifact's largest batch, so one request cannot hold a replica
# for long; bigger jobs split into several requests. The body limit admits 256 reviews of typical size (the
# data's reviews are under 1 KiB) and refuses a body before it is parsed.
MAX_REVIEWS = 256
MAX_BODY_BYTES = 4 << 20


class RequestError(Exception):
    """A request the API refuses: HTTP status, the offending field ("" for the body) and the rule it broke."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{status} {field}: {message}" if field else f"{status} {message}")
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict[str, object]:
        """The JSON error body."""
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


def parse_classify_request(body: bytes, max_reviews: int = MAX_REVIEWS) -> list[ReviewRecord]:
    """The validated reviews of a /v1/classify body, or RequestError (400, 413 or 422)."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, "", f"request body of {len(body)} bytes is over the limit of {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except UnicodeDecodeError as exc:
        raise RequestError(400, "", f"request body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, "", f"request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                    f"column {exc.colno}") from None
    except RecursionError:
        raise RequestError(400, "", "request body is nested too deeply to parse") from None
    if not isinstance(data, dict):
        raise RequestError(422, "", f'expected an object {{"reviews": [...]}}, got {type(data).__name__}')
    unknown = sorted(k for k in data if k != "reviews")
    if unknown:
        raise RequestError(422, unknown[0], 'unknown field; the body holds only "reviews"')
    reviews = data.get("reviews")
    if not isinstance(reviews, list):
        raise RequestError(422, "reviews", f"expected an array of reviews, got {_kind(reviews)}")
    if not reviews:
        raise RequestError(422, "reviews", "expected at least one review")
    if len(reviews) > max_reviews:
        raise RequestError(413, "reviews", f"{len(reviews)} reviews is over the limit of {max_reviews} per request")
    try:
        return [parse_review(review, f"reviews[{i}]") for i, review in enumerate(reviews)]
    except ReviewValidationError as exc:
        raise RequestError(422, exc.field, exc.rule) from None


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def classify_response(predictions: Sequence[Prediction], artifact: str, manifest_sha256: str) -> dict[str, object]:
    """The 200 body of /v1/classify."""
    return {"artifact": artifact, "manifest_sha256": manifest_sha256,
            "predictions": [{"probability": p.probability, "label": p.label} for p in predictions]}
