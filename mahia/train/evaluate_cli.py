"""`mahia-eval`: task metrics of an exported artifact on the test split, next to the eager model's.

    mahia-eval artifacts/export                  # every runnable backend of the artifact vs eager
    mahia-eval artifacts/export --backend onnx   # one backend
    mahia-eval --checkpoint run/best.safetensors # the eager model alone

The eager model is --checkpoint if given, else the embedded default; its weights must be the ones the
artifact was exported from (the manifest's weights hash), or the comparison would mean nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mahia.data import DataConfig, DataError, ReviewsDataset, load_reviews
from mahia.model import CheckpointError, MahiaX, load_checkpoint
from mahia.train.evaluation import length_sorted_order, predict
from mahia.train.metrics import classification_metrics, logits_to_prob_positive
from mahia.train.trainer import write_json_atomically

BACKENDS = ("onnx", "pt2")


def eager_source(checkpoint: Path | None) -> tuple[MahiaX, int, str]:
    """(eager model, text budget it was trained with, description) from a checkpoint or the default."""
    if checkpoint is not None:
        model, metadata = load_checkpoint(checkpoint)
        name = str(checkpoint)
    else:
        from mahia.default import DEFAULT_CHECKPOINT, load_default_model

        model = load_default_model().model
        _, metadata = load_checkpoint(DEFAULT_CHECKPOINT)
        name = f"embedded default ({DEFAULT_CHECKPOINT.name})"
    max_len = int(metadata.get("max_text_bytes") or model.config.max_seq_len)
    return model.eval(), max_len, name


def run_batches(run: Callable[[dict[str, torch.Tensor]], np.ndarray], dataset: ReviewsDataset, max_len: int,
                batch_size: int) -> np.ndarray:
    """Logits [N, C] of `run` over the dataset (length-sorted batches), in the dataset's order."""
    order = length_sorted_order(dataset, max_len)
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        inputs, _ = dataset.batch(rows, max_len)
        logits = np.asarray(run(inputs), dtype=np.float32)
        if logits.shape != (len(rows), logits.shape[-1]):
            raise ValueError(f"artifact returned logits of shape {logits.shape} for a batch of {len(rows)}")
        if out is None:
            out = np.zeros((len(dataset), logits.shape[-1]), dtype=np.float32)
        out[rows] = logits
    assert out is not None
    return out


def compare_to_eager(name: str, logits: np.ndarray, eager_logits: np.ndarray, labels: np.ndarray,
                     eager_metrics: dict[str, float]) -> dict[str, object]:
    """Metrics of `logits`, their deltas against the eager model's, and how often the two agree."""
    metrics: dict[str, object] = dict(classification_metrics(labels, logits_to_prob_positive(logits)))
    metrics["name"] = name
    for key in ("accuracy", "roc_auc", "f1"):
        metrics[f"delta_{key}"] = float(metrics[key]) - eager_metrics[key]
    metrics["prediction_agreement"] = float((logits.argmax(1) == eager_logits.argmax(1)).mean())
    metrics["max_abs_logit_diff"] = float(np.abs(logits.astype(np.float64) - eager_logits).max())
    return metrics


def metrics_table(rows: list[dict[str, object]], title: str) -> Table:
    """A rich table of the eager row and each artifact row."""
    table = Table(title=title)
    for column in ("model", "accuracy", "ROC AUC", "F1", "d accuracy", "agreement", "max |d logit|"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        eager = "delta_accuracy" not in row
        table.add_row(str(row["name"]), f"{row['accuracy']:.4f}", f"{row['roc_auc']:.4f}", f"{row['f1']:.4f}",
                      "" if eager else f"{row['delta_accuracy']:+.4f}",
                      "" if eager else f"{row['prediction_agreement']:.4f}",
                      "" if eager else f"{row['max_abs_logit_diff']:.2e}")
    return table


@click.command(context_settings={"show_default": True})
@click.argument("artifact_dir", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), multiple=True,
              help="Backend(s) to evaluate (repeatable); default: every one the artifact has.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Eager model checkpoint; default: the embedded default model.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test")
@click.option("--rows", type=click.IntRange(min=2), default=None, help="Only the first N rows of the split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64)
@click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None, help="Reviews parquet file.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results here.")
def main(artifact_dir: Path | None, backend: tuple[str, ...], checkpoint: Path | None, split: str, rows: int | None,
         batch_size: int, data_path: str | None, json_out: Path | None) -> None:
    """Accuracy, ROC AUC and F1 of ARTIFACT_DIR's deployments next to the eager model's."""
    console = Console()
    try:
        model, max_len, eager_name = eager_source(checkpoint)
        dataset = load_reviews(DataConfig(path=data_path))[split]
        if rows is not None:
            dataset = dataset.subset(np.arange(min(rows, len(dataset))))
        eager_logits = predict(model, dataset, max_len, batch_size).logits.astype(np.float64)
        eager = dict(classification_metrics(dataset.labels, logits_to_prob_positive(eager_logits)))
        results: list[dict[str, object]] = [{"name": f"eager fp32 ({eager_name})", **eager}]
        if artifact_dir is not None:
            from mahia.train.artifact_eval import evaluate_artifact

            for name, logits in evaluate_artifact(artifact_dir, backend, model, dataset, max_len, batch_size):
                results.append(compare_to_eager(name, logits, eager_logits, dataset.labels, eager))
    except (DataError, CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(metrics_table(results, f"{split} split, {len(dataset)} rows, texts cut to {max_len} tokens"))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically({"split": split, "rows": len(dataset), "max_text_bytes": max_len, "results": results},
                              json_out)


if __name__ == "__main__":
    main()
