"""Task check: a trained model's accuracy on the test split, eager fp32 vs the exported graph.

Parity bounds the logit error at a few shape points; this stage measures what a deployment loses on the
task itself: the accuracy drop in percentage points and the fraction of unchanged predictions (argmax
agreement) over the test split, each gated by the precision's budget. Untrained models skip it (their
task metrics mean nothing) and the manifest says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mahia.data import load_reviews, run_batches
from mahia.export.config import ShapeProfile, TaskBudget, TaskCheckConfig
from mahia.model import MahiaX
from mahia.model.inputs import input_spec
from mahia.runtime import get_backend


@dataclass(frozen=True)
class TaskResult:
    """Eager vs deployed task metrics on `rows` test rows, and the verdict against `budget`."""

    backend: str
    rows: int
    text_tokens: int
    eager_accuracy: float
    deployed_accuracy: float
    agreement: float
    budget: TaskBudget

    @property
    def accuracy_drop_pt(self) -> float:
        """Eager minus deployed accuracy, in percentage points (negative: the deployment scored higher)."""
        return 100.0 * (self.eager_accuracy - self.deployed_accuracy)

    @property
    def passed(self) -> bool:
        """Both the accuracy drop and the agreement are within budget."""
        return self.accuracy_drop_pt <= self.budget.max_accuracy_drop_pt + 1e-9 and \
            self.agreement >= self.budget.min_agreement

    def failure(self) -> str:
        """One line naming what missed its budget (empty when passed)."""
        misses = []
        if self.accuracy_drop_pt > self.budget.max_accuracy_drop_pt + 1e-9:
            misses.append(f"accuracy drop {self.accuracy_drop_pt:.2f} pt > {self.budget.max_accuracy_drop_pt} pt")
        if self.agreement < self.budget.min_agreement:
            misses.append(f"argmax agreement {self.agreement:.4f} < {self.budget.min_agreement}")
        return "; ".join(misses)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for the manifest."""
        return {"passed": self.passed, "backend": self.backend, "split": "test", "rows": self.rows,
                "text_tokens": self.text_tokens, "eager_accuracy": self.eager_accuracy,
                "deployed_accuracy": self.deployed_accuracy, "accuracy_drop_pt": self.accuracy_drop_pt,
                "argmax_agreement": self.agreement, "budget": asdict(self.budget)}


def check_task(model: MahiaX, text_tokens: int, backend: str, graph: Path, profile: ShapeProfile,
               config: TaskCheckConfig, budget: TaskBudget) -> TaskResult:
    """Accuracy and argmax agreement of the exported graph (run by the mahia.runtime `backend` a deployment
    loads) against the eager model on the test split."""
    test = load_reviews()["test"]
    if config.rows is not None:
        test = test.subset(np.arange(min(config.rows, len(test))))
    max_len = min(text_tokens, profile.seq.max)
    batch_size = profile.batch.max

    def eager(inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return model(**inputs).float().numpy()

    deployed = get_backend(backend).load(graph, input_spec(model.config))  # the runner a deployment uses
    vocab = model.config.vocab_size
    reference = run_batches(eager, test, max_len, vocab, batch_size, profile.seq.min)
    logits = run_batches(deployed, test, max_len, vocab, batch_size, profile.seq.min)

    def accuracy(logits: np.ndarray) -> float:
        return float((logits.argmax(1) == test.labels).mean())

    agreement = float((reference.argmax(1) == logits.argmax(1)).mean())
    return TaskResult(backend, len(test), max_len, accuracy(reference), accuracy(logits), agreement,
                      config.budget(budget))
