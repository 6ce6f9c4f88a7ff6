"""The default checkpoint's provenance: install a training run as the default, or re-run its command and compare.

    python -m mahia.train.reproduce install artifacts/default-model   # copy best + metrics into mahia/default/
    python -m mahia.train.reproduce check                             # re-run the recorded command, compare
    python -m mahia.train.reproduce prefix                            # re-run its first steps, compare bit for bit

`check` takes as long as the original run (see metrics.json "wall_seconds_this_run"), so it is a Make target
(`make check-default-model`) for people, not part of the unit-test suite. The suite runs `prefix`: the recorded
command stopped after the first steps the run recorded in metrics.json "prefix" (schedule unchanged), whose
losses and weights hash must come out bit for bit the same (same machine kind and thread count).
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
from mahia.train.trainer import BEST_NAME, METRICS_NAME, PREFIX_STEPS

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
                problems.append(f"{label} test {key}: shipped {old[key]:.4f}, re-run {new[key]:.4f} "
                                f"(tolerance {tolerance})")
    return problems


def compare_prefix(shipped: dict[str, object], rerun: dict[str, object]) -> list[str]:
    """Lines describing every difference between two prefix records (losses step by step, then the weights)."""
    problems = [f"{k}: shipped {shipped[k]!r}, re-run {rerun.get(k)!r}" for k in ("steps", "phase")
                if shipped[k] != rerun.get(k)]
    for step, (old, new) in enumerate(zip(shipped["losses"], rerun.get("losses", [])), start=1):
        if old != new:
            problems.append(f"loss at step {step}: shipped {old!r}, re-run {new!r}")
            break
    if shipped["weights_sha256"] != rerun.get("weights_sha256"):
        problems.append(f"weights after {shipped['steps']} steps: shipped sha256 {shipped['weights_sha256'][:16]}..., "
                        f"re-run {str(rerun.get('weights_sha256'))[:16]}...")
    return problems


def recorded_args(shipped: dict[str, object], out: Path) -> list[str]:
    """The recorded mahia-train arguments with --out replaced by `out`."""
    args = shlex.split(str(shipped["command"]))
    if args[0] != "mahia-train" or "--out" not in args:
        raise click.ClickException(f"unexpected recorded command: {shipped['command']}")
    args[args.index("--out") + 1] = str(out)
    return args[1:]


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
        raise click.ClickException(f"the default model is the small config; {run_dir / BEST_NAME} is "
                                   f"{model.config.name!r}")
    if not metrics.get("command"):
        raise click.ClickException(f"{run_dir / METRICS_NAME} records no command: it was not made by mahia-train")
    if not metrics.get("prefix") or metrics["prefix"]["steps"] != PREFIX_STEPS:
        raise click.ClickException(f"{run_dir / METRICS_NAME} records no {PREFIX_STEPS}-step prefix: "
                                   "the suite could not check its reproduction")
    shutil.copyfile(run_dir / BEST_NAME, DEFAULT_CHECKPOINT)
    metrics["checkpoint_sha256"] = sha256_of(DEFAULT_CHECKPOINT)
    write_json_atomically(metrics, DEFAULT_METRICS)
    click.echo(f"installed {DEFAULT_CHECKPOINT} ({DEFAULT_CHECKPOINT.stat().st_size} bytes) and {DEFAULT_METRICS}")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/default-check"))
def check(out: Path) -> None:
    """Re-run the command recorded in mahia/default/metrics.json into OUT and compare the test metrics."""
    shipped = default_metrics()
    args = recorded_args(shipped, out)
    click.echo("re-running: " + shlex.join(["mahia-train", *args]))
    subprocess.run([sys.executable, "-m", "mahia.train.cli", *args], check=True)
    rerun = json.loads((out / METRICS_NAME).read_text())
    shipped_weights, rerun_weights = load_file(DEFAULT_CHECKPOINT), load_file(out / BEST_NAME)
    same_bits = shipped_weights.keys() == rerun_weights.keys() and all(
        torch.equal(shipped_weights[k], rerun_weights[k]) for k in shipped_weights)
    click.echo(f"weights bit-identical to the shipped checkpoint's: {same_bits}")
    for label, metrics in (("shipped", shipped), ("re-run", rerun)):
        t = metrics["model"]["test"]
        click.echo(f"{label:8s} test accuracy {t['accuracy']:.4f}  roc_auc {t['roc_auc']:.4f}  f1 {t['f1']:.4f}")
    problems = compare_metrics(shipped, rerun)
    if shipped.get("prefix"):
        problems += [f"prefix {p}" for p in compare_prefix(shipped["prefix"], rerun["prefix"])]
    if problems:
        raise click.ClickException("the re-run does not reproduce the shipped metrics: " + "; ".join(problems))
    click.echo("reproduced within tolerance " + json.dumps(TOLERANCE))


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/default-prefix"))
def prefix(out: Path) -> None:
    """Re-run the first steps of the recorded command into OUT; their losses and weights must be bit-identical."""
    shipped = default_metrics()
    record = shipped.get("prefix")
    if not record:
        raise click.ClickException("mahia/default/metrics.json records no prefix")
    args = [*recorded_args(shipped, out), "--stop-after", str(record["steps"])]
    click.echo("re-running: " + shlex.join(["mahia-train", *args]))
    subprocess.run([sys.executable, "-m", "mahia.train.cli", *args], check=True)
    problems = compare_prefix(record, json.loads((out / METRICS_NAME).read_text())["prefix"])
    if problems:
        raise click.ClickException("the re-run's first steps differ from the recorded ones: " + "; ".join(problems))
    click.echo(f"prefix reproduced bit for bit: {record['steps']} {record['phase']} steps' losses and the weights "
               f"sha256 {record['weights_sha256'][:16]}...")


if __name__ == "__main__":
    main()
