"""The default checkpoint's provenance: install a training run as the default, or re-run its command and compare.

    python -m mahia.train.reproduce install artifacts/default-model   # copy best + metrics into mahia/default/
    python -m mahia.train.reproduce check                             # re-run the recorded command, compare

`check` takes as long as the original run (see metrics.json "train_seconds_this_run"), so it is a Make
target for people, not part of the unit-test suite; the suite checks a shortened run of the same code
path for bit-identical weights instead.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import torch
from safetensors.torch import load_file

from mahia.artifact import write_json_atomically
from mahia.default import DEFAULT_CHECKPOINT, DEFAULT_METRICS, default_metrics
from mahia.model import load_checkpoint
from mahia.train.trainer import BEST_NAME, METRICS_NAME

# Differences allowed between the shipped metrics and a re-run's: a re-run on another CPU may differ in
# floating-point summation order; the same machine and thread count reproduces the weights bit for bit.
TOLERANCE = {"accuracy": 0.01, "roc_auc": 0.01, "f1": 0.01}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_metrics(shipped: dict[str, object], rerun: dict[str, object]) -> list[str]:
    """Lines describing every test metric (model and baseline) that moved more than TOLERANCE."""
    problems = []
    pairs = [("model", shipped["model"]["test"], rerun["model"]["test"])]
    for name in shipped.get("baseline", {}):
        pairs.append((f"baseline {name}", shipped["baseline"][name]["test"], rerun["baseline"][name]["test"]))
    for label, old, new in pairs:
        for key, tolerance in TOLERANCE.items():
            if abs(float(old[key]) - float(new[key])) > tolerance:
                problems.append(f"{label} test {key}: shipped {old[key]:.4f}, re-run {new[key]:.4f} (tolerance {tolerance})")
    return problems


@click.group()
def main() -> None:
    """Install or re-check the default checkpoint."""


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
def install(run_dir: Path) -> None:
    """Copy RUN_DIR's best checkpoint and metrics.json into mahia/default/."""
    metrics = json.loads((run_dir / METRICS_NAME).read_text())
    model, _ = load_checkpoint(run_dir / BEST_NAME)
    if model.config.name != "small":
        raise click.ClickException(f"the default model is the small config; {run_dir / BEST_NAME} is {model.config.name!r}")
    if not metrics.get("command"):
        raise click.ClickException(f"{run_dir / METRICS_NAME} records no command: it was not made by mahia-train")
    shutil.copyfile(run_dir / BEST_NAME, DEFAULT_CHECKPOINT)
    metrics["checkpoint_sha256"] = sha256_of(DEFAULT_CHECKPOINT)
    write_json_atomically(metrics, DEFAULT_METRICS)
    click.echo(f"installed {DEFAULT_CHECKPOINT} ({DEFAULT_CHECKPOINT.stat().st_size} bytes) and {DEFAULT_METRICS}")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/default-check"))
def check(out: Path) -> None:
    """Re-run the command recorded in mahia/default/metrics.json into OUT and compare the test metrics."""
    shipped = default_metrics()
    args = shlex.split(str(shipped["command"]))
    if args[0] != "mahia-train" or "--out" not in args:
        raise click.ClickException(f"unexpected recorded command: {shipped['command']}")
    args[args.index("--out") + 1] = str(out)
    click.echo("re-running: " + shlex.join(args))
    subprocess.run([sys.executable, "-m", "mahia.train.cli", *args[1:]], check=True)
    rerun = json.loads((out / METRICS_NAME).read_text())
    shipped_weights, rerun_weights = load_file(DEFAULT_CHECKPOINT), load_file(out / BEST_NAME)
    same_bits = shipped_weights.keys() == rerun_weights.keys() and all(
        torch.equal(shipped_weights[k], rerun_weights[k]) for k in shipped_weights)
    click.echo(f"weights bit-identical to the shipped checkpoint's: {same_bits}")
    for label, metrics in (("shipped", shipped), ("re-run", rerun)):
        t = metrics["model"]["test"]
        click.echo(f"{label:8s} test accuracy {t['accuracy']:.4f}  roc_auc {t['roc_auc']:.4f}  f1 {t['f1']:.4f}")
    problems = compare_metrics(shipped, rerun)
    if problems:
        raise click.ClickException("the re-run does not reproduce the shipped metrics: " + "; ".join(problems))
    click.echo("reproduced within tolerance " + json.dumps(TOLERANCE))


if __name__ == "__main__":
    main()
