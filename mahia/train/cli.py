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
from mahia.train.trainer import LAST_NAME, LAST_SHARDED_NAME, METRICS_NAME, TrainingError, train


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
@click.option("--teacher", default=None,
              help="Knowledge distillation from 'tfidf' (the full-text TF-IDF baseline, cross-fitted) or a MAHIA-X "
                   "checkpoint; its outputs are computed once and cached in the data cache.")
@click.option("--distill-mode", default="kl", help="kl (soft labels at a temperature), mse (centred logits), "
              "features (pooled-feature similarity), or a '+'-joined combination such as kl+features.")
@click.option("--distill-temperature", type=click.FloatRange(min=0, min_open=True), default=2.0)
@click.option("--distill-weight", type=click.FloatRange(0, 1), default=0.5,
              help="Weight of the distillation loss against the hard loss.")
@click.option("--pretrain-epochs", type=click.IntRange(min=0), default=0,
              help="Epochs of masked-word pretraining on the training texts before fine-tuning.")
@click.option("--pretrain-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate of pretraining (default: --lr).")
@click.option("--mask-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.15,
              help="Fraction of word tokens predicted in pretraining.")
@click.option("--grad-clip", type=click.FloatRange(min=0), default=1.0,
              help="Clip the global gradient L2 norm to this (0: no clipping); norms are logged either way.")
@click.option("--length-groups", type=click.IntRange(min=0), default=0,
              help="Batch texts of similar length: pools of this many batches sorted by length (0: plain shuffle).")
@click.option("--eval-every", type=click.IntRange(min=1), default=None,
              help="Also validate every N steps (default: at each epoch's end only).")
@click.option("--init", "init_checkpoint", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Start from this checkpoint's weights instead of the seeded initialisation.")
@click.option("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (under torchrun: cpu or cuda, "
              "each process taking GPU LOCAL_RANK).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads (default: torch's).")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None,
              help="Reviews parquet file (default: the pinned file in the data cache; `python -m mahia.data.fetch`).")
@click.option("--train-rows", type=click.IntRange(min=1), default=None, help="Use only the first N training rows.")
@click.option("--eval-rows", type=click.IntRange(min=1), default=None, help="Use only the first N val / test rows.")
@click.option("--save-every", type=click.IntRange(min=1), default=50, help="Steps between resume checkpoints.")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue from a last.safetensors or (distributed runs, any number of processes) a last.dcp "
              "directory written by mahia-train.")
@click.option("--no-baseline", is_flag=True, help="Skip the TF-IDF + logistic-regression baseline.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None, hidden=True,
              help="Stop after N steps, schedule unchanged, recording only the prefix (mahia.train.reproduce prefix).")
def main(model: str, epochs: int, max_steps: int | None, lr: float, warmup_steps: int, batch_size: int,
         max_text_tokens: int | None, seed: int, out: Path, teacher: str | None, distill_mode: str,
         distill_temperature: float, distill_weight: float, pretrain_epochs: int, pretrain_lr: float | None,
         mask_fraction: float, grad_clip: float, length_groups: int, eval_every: int | None,
         init_checkpoint: str | None, device: str, threads: int | None, data_path: str | None,
         train_rows: int | None, eval_rows: int | None, save_every: int, resume: Path | None, no_baseline: bool,
         stop_after: int | None) -> None:
    """Train MAHIA-X on the reviews data; keep the best checkpoint by validation ROC AUC.

    \b
    Distributed: torchrun --nproc-per-node N -m mahia.train.cli --device cuda ...
    trains one model on N GPUs (N CPU processes with --device cpu) with FSDP2.
    --batch-size is the global batch, split across the processes; rank 0
    writes the files. The resume point is the last.dcp directory: it resumes on
    any number of processes, and `python -m mahia.train.convert last.dcp
    model.safetensors` turns it into a checkpoint for mahia-export.
    """
    console = Console(stderr=True)
    try:
        config = TrainConfig(model=model, epochs=epochs, max_steps=max_steps, lr=lr, warmup_steps=warmup_steps,
                             batch_size=batch_size, max_text_tokens=max_text_tokens, seed=seed, teacher=teacher,
                             distill_mode=distill_mode, distill_temperature=distill_temperature,
                             distill_weight=distill_weight, pretrain_epochs=pretrain_epochs, pretrain_lr=pretrain_lr,
                             mask_fraction=mask_fraction, grad_clip=grad_clip, length_groups=length_groups,
                             eval_every=eval_every, init_checkpoint=init_checkpoint, device=device, threads=threads,
                             data_path=data_path, train_rows=train_rows, eval_rows=eval_rows, save_every=save_every,
                             baseline=not no_baseline)
        command = shlex.join(["mahia-train", *sys.argv[1:]])
        result = train(config, out, resume=resume, command=command, console=console, stop_after=stop_after)
    except (DataError, CheckpointError, TrainingError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        last = next((p for p in (out / LAST_NAME, out / LAST_SHARDED_NAME) if p.exists()), None)
        hint = f"; resume with --resume {last}" if last is not None else ""
        raise click.ClickException(f"interrupted{hint}") from None
    if not result.main_process:
        return
    if stop_after is not None:
        console.print(f"stopped after {stop_after} steps; prefix recorded in {out / METRICS_NAME}")
        return
    test = result.metrics["model"]["test"]
    console.print(f"best checkpoint: {result.best_checkpoint} (step {result.metrics['best_step']} of {result.steps})")
    console.print(f"test: accuracy {test['accuracy']:.4f}  roc_auc {test['roc_auc']:.4f}  f1 {test['f1']:.4f}  "
                  f"(majority class {test['majority_accuracy']:.4f})")
    if "baseline" in result.metrics:
        for name, run in result.metrics["baseline"].items():
            b = run["test"]
            console.print(f"baseline ({name}): accuracy {b['accuracy']:.4f}  roc_auc {b['roc_auc']:.4f}  "
                          f"f1 {b['f1']:.4f}")
    norms = result.metrics["grad_norms"].get("finetune")
    if norms:
        console.print(f"gradient norm (before clipping to {result.metrics['grad_norms']['clip']}): median "
                      f"{norms['global']['median']:.3f}, max {norms['global']['max']:.3f}; clipped on "
                      f"{norms['clipped_steps']} of {norms['steps']} steps")
    console.print(f"metrics: {out / METRICS_NAME}; curves: {out / result.metrics['curves']}")


if __name__ == "__main__":
    main()
