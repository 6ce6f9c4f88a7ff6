"""`mahia-train`: train MAHIA-X on the reviews data and write a checkpoint plus metrics.json."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from rich.console import Console

from mahia.data import DataError
from mahia.model import CONFIGS, CheckpointError
from mahia.train.config import TrainConfig
from mahia.train.trainer import METRICS_NAME, TrainingError, train


@click.command(context_settings={"show_default": True})
@click.option("--config", "model", type=click.Choice(list(CONFIGS)), default="small", help="Model size.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, help="Passes over the training split.")
@click.option("--steps", "max_steps", type=click.IntRange(min=1), default=None,
              help="Stop after this many optimiser steps (even mid-epoch).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, help="Peak learning rate.")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=50)
@click.option("--batch-size", type=click.IntRange(min=1), default=32)
@click.option("--max-text-tokens", type=click.IntRange(min=1), default=None,
              help="Tokens per text ([CLS] + words); default: the model's max_seq_len.")
@click.option("--seed", type=int, default=0)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("artifacts/train"),
              help="Output folder: best.safetensors, last.safetensors (+ optimiser state), metrics.json.")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Teacher checkpoint for knowledge distillation.")
@click.option("--distill-temperature", type=click.FloatRange(min=0, min_open=True), default=2.0)
@click.option("--distill-weight", type=click.FloatRange(0, 1), default=0.5,
              help="Weight of the distillation loss against the hard loss.")
@click.option("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ...")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None,
              help="Reviews parquet file (default: the pinned file in the data cache; `python -m mahia.data.fetch`).")
@click.option("--train-rows", type=click.IntRange(min=1), default=None, help="Use only the first N training rows.")
@click.option("--eval-rows", type=click.IntRange(min=1), default=None, help="Use only the first N val / test rows.")
@click.option("--save-every", type=click.IntRange(min=1), default=50, help="Steps between resume checkpoints.")
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Continue from a last.safetensors written by mahia-train.")
@click.option("--no-baseline", is_flag=True, help="Skip the TF-IDF + logistic-regression baseline.")
def main(model: str, epochs: int, max_steps: int | None, lr: float, warmup_steps: int, batch_size: int,
         max_text_tokens: int | None, seed: int, out: Path, teacher: Path | None, distill_temperature: float,
         distill_weight: float, device: str, threads: int | None, data_path: str | None, train_rows: int | None,
         eval_rows: int | None, save_every: int, resume: Path | None, no_baseline: bool) -> None:
    """Train MAHIA-X on the reviews data; keep the best checkpoint by validation ROC AUC."""
    console = Console(stderr=True)
    try:
        config = TrainConfig(model=model, epochs=epochs, max_steps=max_steps, lr=lr, warmup_steps=warmup_steps,
                             batch_size=batch_size, max_text_tokens=max_text_tokens, seed=seed,
                             teacher=str(teacher) if teacher else None, distill_temperature=distill_temperature,
                             distill_weight=distill_weight, device=device, threads=threads, data_path=data_path,
                             train_rows=train_rows, eval_rows=eval_rows, save_every=save_every,
                             baseline=not no_baseline)
        command = shlex.join(["mahia-train", *sys.argv[1:]])
        result = train(config, out, resume=resume, command=command, console=console)
    except (DataError, CheckpointError, TrainingError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        last = out / "last.safetensors"
        hint = f"; resume with --resume {last}" if last.is_file() else ""
        raise click.ClickException(f"interrupted{hint}") from None
    test = result.metrics["model"]["test"]
    console.print(f"best checkpoint: {result.best_checkpoint} (step {result.metrics['best_step']} of {result.steps})")
    console.print(f"test: accuracy {test['accuracy']:.4f}  roc_auc {test['roc_auc']:.4f}  f1 {test['f1']:.4f}  "
                  f"(majority class {test['majority_accuracy']:.4f})")
    if "baseline" in result.metrics:
        for name, run in result.metrics["baseline"].items():
            b = run["test"]
            console.print(f"baseline ({name}): accuracy {b['accuracy']:.4f}  roc_auc {b['roc_auc']:.4f}  f1 {b['f1']:.4f}")
    console.print(f"metrics: {out / METRICS_NAME}")


if __name__ == "__main__":
    main()
