"""The embedded default checkpoint's recorded command, re-run in full, reproduces its test metrics.

This is the slowest test of the suite (about 3.5 minutes on 2 idle cores: one epoch of 588 training steps, test
evaluation and the baseline fit), kept in it because the shipped checkpoint is only as good as the
command that made it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_recorded_command_reproduces_the_shipped_metrics(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mahia.train.reproduce", "check", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "reproduced within tolerance" in proc.stdout
