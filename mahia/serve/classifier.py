"""A verified artifact that classifies validated review records: the part of a serving replica Ray does not see.

`ReviewClassifier.load` verifies the artifact (sha256 of every file, through `mahia.runtime.load`), takes the
feature spec from the artifact's `features.json` or re-derives it from the reviews data, and runs one warm-up
call; only then does it exist. `predict` encodes records with the shared feature code, pads the batch's
sequences to the next bucket and runs the deployment: padding positions are masked, so a review's answer does
not depend on what it was batched with (the model's padding invariance, tested in tests/test_serve.py).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mahia.runtime
from mahia.artifact import Manifest
from mahia.data import load_reviews
from mahia.data.features import FEATURES_FILE, FeatureSpec, ReviewRecord

logger = logging.getLogger(__name__)
LABELS = ("not recommended", "recommended")  # index = class of the `Recommended IND` label


@dataclass(frozen=True)
class Prediction:
    """One review's answer: probability of "recommended" (softmax of the logits) and the argmax label."""

    probability: float
    label: str


def text_budget(manifest: Manifest) -> int:
    """Tokens per text the model reads: what the export's task check fed it (the training budget), else the
    model's max_seq_len; at most the exported seq range's maximum."""
    tokens = manifest.task.get("text_tokens") or manifest.model.config.max_seq_len
    return int(min(tokens, manifest.seq.max))


def seq_buckets(seq_min: int, seq_max: int, budget: int) -> tuple[int, ...]:
    """Sequence lengths a batch is padded to: powers of two clamped to [seq_min, min(seq_max, budget)], and
    that maximum; a handful of shapes instead of one per length, so ONNX Runtime meets few distinct shapes."""
    top = min(seq_max, budget)
    if top < seq_min:
        raise ValueError(f"the text budget {budget} is below the exported sequence minimum {seq_min}")
    powers = {min(max(1 << k, seq_min), top) for k in range(int(math.log2(top)) + 1)}
    return tuple(sorted(powers | {top}))


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length."""
    for bucket in buckets:
        if bucket >= length:
            return bucket
    raise ValueError(f"sequence of {length} tokens is longer than the largest bucket {buckets[-1]}")


def pad_to(inputs: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask right-padded with zeros (pad id, masked) to `length` tokens."""
    short = length - inputs["input_ids"].shape[1]
    if short <= 0:
        return inputs
    padded = {name: torch.nn.functional.pad(inputs[name], (0, short)) for name in ("input_ids", "attention_mask")}
    return {**inputs, **padded}


def load_feature_spec(artifact_dir: Path, manifest: Manifest) -> tuple[FeatureSpec, str]:
    """(spec, where it came from): the artifact's features.json, else fitted on the reviews data's train split.

    features.json is trusted only when manifest.json lists it (so its sha256 was checked with the other files).
    """
    path = Path(artifact_dir) / FEATURES_FILE
    if FEATURES_FILE in manifest.files:
        return FeatureSpec.from_json(path.read_text()), FEATURES_FILE
    if path.exists():
        raise mahia.runtime.ArtifactIntegrityError(f"{path} is not listed in manifest.json (its sha256 is unknown): "
                                                   "refusing to use it")
    logger.warning("%s has no %s: deriving the feature statistics from the reviews data (train split)",
                   artifact_dir, FEATURES_FILE)
    return FeatureSpec.from_dataset(load_reviews()["train"]), "reviews data, train split (no features.json)"


@dataclass
class ReviewClassifier:
    """A loaded deployment with its feature spec, text budget and sequence buckets."""

    deployment: mahia.runtime.Deployment
    features: FeatureSpec
    features_source: str
    max_len: int
    buckets: tuple[int, ...]
    artifact_id: str
    manifest_sha256: str

    @classmethod
    def load(cls, artifact_dir: str | Path, backend: str = "onnx", options: Any = None) -> ReviewClassifier:
        """Verify and load the artifact (`options` go to the backend, as in `mahia.runtime.load`), then one
        warm-up call; raises ArtifactIntegrityError for a tampered one."""
        directory = Path(artifact_dir).resolve()
        deployment = mahia.runtime.load(directory, backend=backend, options=options)
        manifest = deployment.manifest
        if manifest.model.config.num_classes != len(LABELS):
            raise ValueError(f"{directory} classifies into {manifest.model.config.num_classes} classes; "
                             f"this server answers {' / '.join(LABELS)}")
        features, source = load_feature_spec(directory, manifest)
        max_len = text_budget(manifest)
        manifest_sha256 = hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()
        buckets = seq_buckets(manifest.seq.min, manifest.seq.max, max_len)
        classifier = cls(deployment, features, source, max_len, buckets, directory.name, manifest_sha256)
        classifier.warm_up()
        return classifier

    @property
    def max_batch(self) -> int:
        """The largest batch the artifact was exported for."""
        return self.deployment.manifest.batch.max

    def inputs(self, records: Sequence[ReviewRecord]) -> dict[str, torch.Tensor]:
        """Model inputs of records, sequences padded to the bucket of the longest."""
        inputs = self.features.model_inputs(records, self.max_len, self.deployment.config.vocab_size)
        return pad_to(inputs, bucket_length(inputs["input_ids"].shape[1], self.buckets))

    def logits(self, records: Sequence[ReviewRecord]) -> np.ndarray:
        """Logits [N, 2] of up to max_batch records."""
        if not 0 < len(records) <= self.max_batch:
            raise ValueError(f"a batch holds 1..{self.max_batch} reviews, got {len(records)}")
        return self.deployment.run(self.inputs(records))

    def predict(self, records: Sequence[ReviewRecord]) -> list[Prediction]:
        """One Prediction per record, in order."""
        return predictions(self.logits(records))

    def warm_up(self) -> None:
        """One call at the smallest and the largest bucket: the first run of a shape allocates its buffers."""
        record = ReviewRecord("warm-up", "a review", 40.0, 0.0, None, None, None)
        for length in (self.buckets[0], self.buckets[-1]):
            inputs = pad_to(self.features.model_inputs([record], length, self.deployment.config.vocab_size), length)
            logits = self.deployment.run(inputs)
            if logits.shape != (1, len(LABELS)) or not np.isfinite(logits).all():
                raise RuntimeError(f"warm-up of {self.artifact_id} returned logits {logits!r}")

    def describe(self) -> dict[str, object]:
        """What /healthz reports about the loaded artifact."""
        return {"artifact": self.artifact_id, "manifest_sha256": self.manifest_sha256,
                "precision": self.deployment.precision, "backend": self.deployment.backend,
                "features": self.features_source, "text_tokens": self.max_len, "seq_buckets": list(self.buckets),
                "max_batch": self.max_batch}


def predictions(logits: np.ndarray) -> list[Prediction]:
    """Softmax probability of class 1 and the argmax label of each row (float64 softmax)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return [Prediction(float(p[1]), LABELS[int(i)]) for p, i in zip(probs, np.asarray(logits).argmax(axis=1))]
