"""The embedded default checkpoint: it loads, it is labelled trained, and it has learned the task."""

from __future__ import annotations

import copy
import hashlib

import numpy as np

from mahia.data import load_reviews
from mahia.default import DEFAULT_CHECKPOINT, default_metrics, load_default_model
from mahia.evaluate import predict
from mahia.evaluate.metrics import classification_metrics, logits_to_prob_positive
from mahia.model import get_config
from mahia.model.checkpoint import read_checkpoint_metadata
from mahia.train.reproduce import compare_metrics


def test_default_model_is_the_trained_small_checkpoint() -> None:
    default = load_default_model()
    assert default.trained is True
    assert "trained" in default.label and "untrained" not in default.label
    assert default.model.config == get_config("small")
    assert not default.model.training
    assert DEFAULT_CHECKPOINT.stat().st_size <= 10 * 2 ** 20
    metrics = default_metrics()
    assert metrics["command"].startswith("mahia-train ")
    assert hashlib.sha256(DEFAULT_CHECKPOINT.read_bytes()).hexdigest() == metrics["checkpoint_sha256"]
    assert read_checkpoint_metadata(DEFAULT_CHECKPOINT)["step"] == str(metrics["best_step"])


def test_default_model_has_learned_the_task() -> None:
    # 256 test rows keep this to a few seconds: ROC AUC well above chance (0.5) shows the weights are
    # the trained ones; the full-split figures are metrics.json's.
    default = load_default_model()
    max_len = int(read_checkpoint_metadata(DEFAULT_CHECKPOINT)["max_text_tokens"])
    test = load_reviews()["test"].subset(np.arange(256))
    metrics = classification_metrics(test.labels, logits_to_prob_positive(predict(default.model, test, max_len).logits))
    assert metrics["roc_auc"] > 0.85, metrics
    shipped = default_metrics()["model"]["test"]  # the whole split: clearly above the majority class
    assert shipped["accuracy"] > shipped["majority_accuracy"] + 0.05 and shipped["roc_auc"] > 0.9, shipped


def test_reproduction_check_flags_moved_metrics() -> None:
    shipped = default_metrics()
    assert compare_metrics(shipped, copy.deepcopy(shipped)) == []
    moved = copy.deepcopy(shipped)
    moved["model"]["test"]["accuracy"] -= 0.02
    problems = compare_metrics(shipped, moved)
    assert len(problems) == 1 and problems[0].startswith("model test accuracy")
