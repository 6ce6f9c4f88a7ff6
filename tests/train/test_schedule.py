"""The learning-rate schedule at its edges: a run no longer than its warmup, and the last steps of the cosine."""

from __future__ import annotations

import math

import pytest

from mahia.train import TrainConfig
from mahia.train.trainer import learning_rate


def test_learning_rate_at_the_edges_of_warmup_and_decay() -> None:
    config = TrainConfig(lr=2e-3, warmup_steps=4, min_lr_ratio=0.25)
    floor = 5e-4
    # one decay step after warmup: the span is 1 step, so step 4 starts the cosine and step 5 is the floor
    assert learning_rate(4, 5, config) == pytest.approx(2e-3, rel=1e-12)
    assert learning_rate(5, 5, config) == pytest.approx(floor, rel=1e-12)
    # a run that ends inside its warmup (total <= warmup): the span is clamped to 1 step, never 0 or negative
    assert learning_rate(4, 4, config) == pytest.approx(2e-3, rel=1e-12)
    assert learning_rate(5, 3, config) == pytest.approx(floor, rel=1e-12)
    # a quarter into the cosine, from the formula floor + (lr - floor) * (1 + cos(pi t)) / 2
    assert learning_rate(7, 16, config) == pytest.approx(floor + 1.5e-3 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert learning_rate(3, 16, config) == pytest.approx(2e-3, rel=1e-12)  # the last warmup step reaches lr


def test_learning_rate_toward_a_given_peak_instead_of_the_configured_lr() -> None:
    config = TrainConfig(lr=2e-3, warmup_steps=4, min_lr_ratio=0.25)
    assert learning_rate(1, 10, config, peak=1e-2) == pytest.approx(1e-2 * 2 / 4, rel=1e-12)  # warmup toward it
    assert learning_rate(10, 10, config, peak=1e-2) == pytest.approx(1e-2 * 0.25, rel=1e-12)  # its floor
