"""The embedded default checkpoint's recorded command reproduces its first steps bit for bit.

The whole recorded run takes longer than the suite can afford (metrics.json "wall_seconds_this_run"); `make
check-default-model` re-runs it in full and compares the test metrics. The suite re-runs the same command
stopped after the prefix the run recorded (its first 16 steps, schedule unchanged): their losses and the weights
hash after them must come out bit for bit the same (same machine kind and thread count).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_recorded_command_reproduces_the_shipped_prefix(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mahia.train.reproduce", "prefix", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "prefix reproduced bit for bit" in proc.stdout
