"""`mahia-eval`: task metrics of an exported artifact on the test split, next to the eager model's.

    mahia-eval artifacts/export                  # every backend of the artifact vs the eager model
    mahia-eval artifacts/export --backend onnx   # one backend
    mahia-eval --checkpoint run/best.safetensors # the eager model alone

The eager model is --checkpoint if given, else the source the artifact's manifest records (a
checkpoint, a seeded config, or the embedded default); its weights must hash to the manifest's.
Texts are cut to the tokens the model was trained with (checkpoint metadata), within the exported
sequence range.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from mahia.artifact import ArtifactIntegrityError, read_manifest, write_json_atomically
from mahia.data import DataConfig, DataError, load_reviews
from mahia.evaluate.artifact import artifact_limits, check_same_weights, eager_model, evaluate_artifact
from mahia.evaluate.metrics import classification_metrics, logits_to_prob_positive
from mahia.evaluate.prediction import predict
from mahia.model import CheckpointError, InputValidationError
from mahia.runtime import backends


def compare_to_eager(name: str, logits: np.ndarray, eager_logits: np.ndarray, labels: np.ndarray,
                     eager_metrics: dict[str, float]) -> dict[str, object]:
    """Metrics of `logits`, their deltas against the eager model's, and how often the two agree."""
    metrics: dict[str, object] = {"name": name, **classification_metrics(labels, logits_to_prob_positive(logits))}
    for key in ("accuracy", "roc_auc", "f1"):
        metrics[f"delta_{key}"] = float(metrics[key]) - eager_metrics[key]  # type: ignore[arg-type]
    metrics["prediction_agreement"] = float((logits.argmax(1) == eager_logits.argmax(1)).mean())
    metrics["max_abs_logit_diff"] = float(np.abs(logits.astype(np.float64) - eager_logits).max())
    return metrics


def metrics_table(rows: list[dict[str, object]], title: str) -> Table:
    """A rich table: the eager row, then each artifact row with its deltas."""
    table = Table(title=title)
    for column in ("model", "accuracy", "ROC AUC", "F1", "d accuracy", "d ROC AUC", "agreement", "max |d logit|"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        eager = "delta_accuracy" not in row
        table.add_row(str(row["name"]), f"{row['accuracy']:.4f}", f"{row['roc_auc']:.4f}", f"{row['f1']:.4f}",
                      *(("",) * 4 if eager else (f"{row['delta_accuracy']:+.4f}", f"{row['delta_roc_auc']:+.4f}",
                                                 f"{row['prediction_agreement']:.4f}",
                                                 f"{row['max_abs_logit_diff']:.2e}")))
    return table


@click.command(context_settings={"show_default": True})
@click.argument("artifact_dir", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--backend", type=click.Choice(list(backends())), multiple=True,
              help="Backend(s) to evaluate (repeatable); default: every one the artifact holds.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Eager model checkpoint; default: the artifact's recorded source, else the embedded default.")
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
    if not console.is_terminal:  # a log or a pipe: do not wrap the table at 80 columns
        console = Console(width=160)
    try:
        manifest = read_manifest(artifact_dir) if artifact_dir is not None else None
        model, max_len, eager_name = eager_model(checkpoint, manifest)
        if manifest is not None:
            check_same_weights(manifest, model, artifact_dir)
            max_len = artifact_limits(manifest, max_len, batch_size)[0]
        dataset = load_reviews(DataConfig(path=data_path))[split]
        if rows is not None:
            dataset = dataset.subset(np.arange(min(rows, len(dataset))))
        eager_logits = predict(model, dataset, max_len, batch_size).logits.astype(np.float64)
        eager = classification_metrics(dataset.labels, logits_to_prob_positive(eager_logits))
        results: list[dict[str, object]] = [{"name": f"eager fp32 ({eager_name})", **eager}]
        if artifact_dir is not None and manifest is not None:
            for name, logits in evaluate_artifact(artifact_dir, manifest, backend, dataset, max_len,
                                                        model.config.vocab_size, batch_size):
                results.append(compare_to_eager(name, logits, eager_logits, dataset.labels, eager))
    except (DataError, CheckpointError, InputValidationError, ArtifactIntegrityError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(metrics_table(results, f"{split} split, {len(dataset)} rows, texts cut to {max_len} tokens"))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically({"artifact": str(artifact_dir) if artifact_dir else None, "split": split,
                               "rows": len(dataset), "max_text_tokens": max_len, "results": results}, json_out)


if __name__ == "__main__":
    main()
