"""Task metrics, expert load counting, the distillation loss and the training loss's weighting on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mahia.evaluate.metrics import (
    classification_metrics,
    expert_assignment_counts,
    load_fractions,
    logits_to_prob_positive,
)
from mahia.model import moe_aux_losses
from mahia.model.mahia_x import ModelOutput
from mahia.train.losses import distillation_loss, training_loss


def test_classification_metrics_hand_made_case() -> None:
    labels = np.array([1, 0, 1, 1, 0, 1])
    prob = np.array([0.9, 0.2, 0.6, 0.4, 0.7, 0.8])
    # Predictions 1,0,1,0,1,1: TP = 3, FN = 1 (row 3), FP = 1 (row 4), TN = 1.
    m = classification_metrics(labels, prob)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    # 8 (positive, negative) pairs; the positive scores higher in 6 of them.
    assert m["roc_auc"] == pytest.approx(6 / 8)
    assert m["majority_accuracy"] == pytest.approx(4 / 6)
    expected_log_loss = -np.mean([math.log(0.9), math.log(0.8), math.log(0.6), math.log(0.4), math.log(0.3),
                                  math.log(0.8)])
    assert m["log_loss"] == pytest.approx(expected_log_loss)


def test_classification_metrics_threshold_is_inclusive() -> None:
    m = classification_metrics(np.array([1, 0]), np.array([0.5, 0.49]))
    assert m["accuracy"] == 1.0 and m["roc_auc"] == 1.0


@pytest.mark.parametrize(("labels", "prob", "message"), [
    ([], [], "empty"),
    ([1, 1, 1], [0.2, 0.5, 0.9], "both classes"),
    ([1, 0], [0.5], "same length"),
    ([1, 0], [0.5, float("nan")], "finite"),
    ([1, 2], [0.5, 0.5], "0 or 1"),
])
def test_classification_metrics_rejects_bad_input(labels: list, prob: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.array(labels), np.array(prob))


def test_logits_to_prob_positive() -> None:
    prob = logits_to_prob_positive(np.array([[0.0, 0.0], [0.0, math.log(3.0)]], dtype=np.float32))
    np.testing.assert_allclose(prob, [0.5, 0.75], rtol=1e-6)


def test_expert_assignment_counts_hand_made_case() -> None:
    # 4 tokens, 3 experts, top-2; token 3 is padding and must not be counted.
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [3.0, 1.0, 2.0], [9.0, 8.0, 0.0]])
    mask = torch.tensor([1, 1, 1, 0])
    counts = expert_assignment_counts(logits, mask, top_k=2)
    assert counts.tolist() == [2.0, 2.0, 2.0]
    assert load_fractions(counts) == pytest.approx([1 / 3] * 3)
    assert expert_assignment_counts(logits, torch.tensor([1, 0, 0, 1]), top_k=1).tolist() == [2.0, 0.0, 0.0]


def test_distillation_loss_is_zero_when_student_equals_teacher(generator: torch.Generator) -> None:
    logits = torch.randn(7, 2, generator=generator) * 3
    assert float(distillation_loss(logits, logits.clone(), temperature=2.0)) == 0.0


def test_distillation_loss_value(generator: torch.Generator) -> None:
    student, teacher = torch.randn(5, 2, generator=generator), torch.randn(5, 2, generator=generator)
    t = 3.0
    p_teacher = torch.softmax(teacher.double() / t, -1)
    p_student = torch.softmax(student.double() / t, -1)
    expected = (p_teacher * (p_teacher.log() - p_student.log())).sum(-1).mean() * t * t
    assert float(distillation_loss(student, teacher, t)) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 0


def test_training_loss_weights_each_term_as_configured(generator: torch.Generator) -> None:
    batch, length, experts = 3, 5, 4
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    routers = tuple(torch.randn(batch * length, experts, generator=generator) * scale for scale in (1.0, 3.0))
    output = ModelOutput(torch.randn(batch, 2, generator=generator), routers, mask)
    labels = torch.tensor([1, 0, 1])
    cross_entropy = torch.nn.functional.cross_entropy(output.logits, labels)
    layers = [moe_aux_losses(r, mask, 2) for r in routers]
    balance, z = ((layers[0][i] + layers[1][i]) / 2 for i in (0, 1))  # the mean over the MoE layers
    assert abs(float(layers[0][1] - layers[1][1])) > 1.0, "the layers' z-losses must differ to tell mean from sum"

    parts = training_loss(output, labels, top_k=2, aux_loss_weight=0.3, z_loss_weight=0.05)
    assert float(parts.task) == pytest.approx(float(cross_entropy), rel=1e-6)
    assert float(parts.load_balance) == pytest.approx(float(balance), rel=1e-6)
    assert float(parts.z_loss) == pytest.approx(float(z), rel=1e-6)
    assert float(parts.distill) == 0.0
    assert float(parts.total) == pytest.approx(float(cross_entropy + 0.3 * balance + 0.05 * z), rel=1e-6)

    teacher = torch.randn(batch, 2, generator=generator)
    distill = distillation_loss(output.logits, teacher, 3.0)
    parts = training_loss(output, labels, 2, aux_loss_weight=0.0, z_loss_weight=0.2, teacher_logits=teacher,
                          temperature=3.0, distill_weight=0.25)
    assert float(parts.task) == pytest.approx(float(cross_entropy), rel=1e-6)  # logged: the hard loss alone
    assert float(parts.distill) == pytest.approx(float(distill), rel=1e-6)
    expected = 0.75 * cross_entropy + 0.25 * distill + 0.2 * z
    assert float(parts.total) == pytest.approx(float(expected), rel=1e-6)
