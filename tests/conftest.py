"""Shared fixtures: seeded generators so every test draws fresh, reproducible random inputs."""

from __future__ import annotations

import os

# Triton reads this switch when it is first imported (mahia.kernels imports it): CI has no GPU, so
# every Triton kernel in the suite runs in Triton's CPU interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")

import fcntl  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Under `pytest -n N` each xdist worker gets its share of the cores for torch's intra-op threads: by default each
    of the 2 workers on 2 cores ran 2 OpenMP threads, which spin on the core the other worker is using (mahia-bench's
    tests took 36 s instead of 4 s, mahia-eval's 36 s instead of 5 s)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture
def generator(request: pytest.FixtureRequest) -> torch.Generator:
    """A generator seeded from the test's name: fresh inputs per test, the same on every run."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


BIN = Path(sys.executable).parent


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory shared by every xdist worker of this session (the workers' common base temp), or
    $MAHIA_TEST_SHARED_DIR when set: `make mutation` starts a pytest session per mutant, and this lets all
    of them share one tiny export instead of re-exporting (about a minute) in each."""
    if os.environ.get("MAHIA_TEST_SHARED_DIR"):
        shared = Path(os.environ["MAHIA_TEST_SHARED_DIR"])
        shared.mkdir(parents=True, exist_ok=True)
        return shared
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`mahia-export --config tiny --json` run once per session (across xdist workers, under a file lock).

    Returns {"dir": artifact Path, "summary": the --json summary, "returncode", "stderr"}; tests must
    not modify the directory (copy it first).
    """
    root = _shared_root(tmp_path_factory)
    record = root / "tiny-export.json"
    with open(root / "tiny-export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            out = root / "tiny-artifacts"
            proc = subprocess.run([str(BIN / "mahia-export"), "--config", "tiny", "--out", str(out), "--json"],
                                  capture_output=True, text=True, timeout=600)
            record.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))
        data = json.loads(record.read_text())
    assert data["returncode"] == 0, data["stderr"][-3000:]
    summary = json.loads(data["stdout"])
    return {"dir": Path(summary["artifact_dir"]), "summary": summary, "stderr": data["stderr"]}
