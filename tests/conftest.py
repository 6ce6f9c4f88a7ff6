"""Shared fixtures: seeded generators so every test draws fresh, reproducible random inputs."""

from __future__ import annotations

import os

# Triton reads this switch when it is first imported (mahia.kernels imports it): CI has no GPU, so
# every Triton kernel in the suite runs in Triton's CPU interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")

import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def generator(request: pytest.FixtureRequest) -> torch.Generator:
    """A generator seeded from the test's name: fresh inputs per test, the same on every run."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))
