"""`mahia-export`: one command from the PyTorch model to verified deployable artifacts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from mahia.calibration.recipes import CalibrationOptions, Recipe, method_choices, methods_help
from mahia.export.config import DEFAULT_BATCH, DimRange, ExportConfig, TaskCheckConfig
from mahia.export.formats import formats as registered_formats
from mahia.export.precisions import get_precision, precisions
from mahia.model import CONFIGS, ModelSource

FORMATS = tuple(registered_formats())

EXAMPLES = """\b
Examples:
  mahia-export                                   # embedded default model, fp32 ONNX + .pt2
  mahia-export --config tiny --out /tmp/art      # seeded tiny model
  mahia-export --checkpoint run/model.safetensors --precision fp16
  mahia-export --config small --batch 1:8:32 --seq 16:128:384 --formats onnx
  mahia-export --config tiny --json --quiet      # machine-readable summary on stdout
  mahia-export --precision fp8                   # FP8 Q/DQ ONNX, calibration.json, calib.cache, sensitivity plot
  mahia-export --precision auto --accuracy-budget 0.05 --calib-samples 256
  mahia-export --precision fp8 --formats onnx,trt          # + TensorRT plugin graph: wiring parity, TensorRT-RTX build
  mahia-export --formats trt,rtx-engine,engine    # + engines (engine needs TensorRT >= 10.9; exit 2 without)
"""


def _parse_range(name: str):
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> DimRange | None:
        if value is None:
            return None
        try:
            return DimRange.parse(name, value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return callback


def _parse_formats(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    formats = tuple(dict.fromkeys(f.strip() for f in value.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise click.BadParameter(f"unknown format {', '.join(map(repr, unknown)) or repr(value)}; "
                                 f"expected a comma-separated subset of {', '.join(FORMATS)}")
    return formats


@click.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_name", type=click.Choice(list(CONFIGS)), default=None,
              help="Named model size; without --checkpoint: seeded, untrained weights. "
                   "Default: the embedded default model.")
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Model weights (.safetensors written by mahia); with --config it must match that config.")
@click.option("--seed", type=int, default=0, show_default=True, help="Weight seed for --config without --checkpoint.")
@click.option("--precision", type=click.Choice(list(precisions())), default="fp32", show_default=True,
              help="Deployed precision (" + "; ".join(f"{p.name}: {p.summary}" for p in precisions().values()) + ").")
@click.option("--formats", callback=_parse_formats, default=None,
              help=f"Comma-separated subset of {', '.join(FORMATS)}. Default: every format the precision produces.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("artifacts"), show_default=True,
              help="Directory that receives <config>-<precision>-<hash>/.")
@click.option("--batch", callback=_parse_range("batch"), default=":".join(map(str, DEFAULT_BATCH)), show_default=True,
              help="Dynamic batch range MIN:OPT:MAX.")
@click.option("--seq", callback=_parse_range("seq"), default=None,
              help="Dynamic sequence range MIN:OPT:MAX. Default: 1:128:min(max_seq_len, 512).")
@click.option("--atol", type=click.FloatRange(min=0), default=None, help="Override the precision's absolute tolerance.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, help="Override the precision's relative tolerance.")
@click.option("--max-rel-error", type=click.FloatRange(min=0), default=None,
              help="Override the precision's budget on ||out - ref|| / ||ref|| of the logits.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=None,
              help="Quantized precisions: real training samples to calibrate on (default 512).")
@click.option("--calib-method", type=click.Choice(method_choices()), default=None,
              help="Quantized precisions: the activation range method (int8, fp8, auto) or the int4 weight rounding "
                   "(rtn: round to nearest; awq: activation-aware scale and clip search). " + methods_help() + ".")
@click.option("--accuracy-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="auto: largest relative logit error on calibration samples; the most sensitive layers stay fp32 "
                   "until met.")
@click.option("--eval-rows", type=click.IntRange(min=2), default=None,
              help="Trained models: test-split rows of the task check (default: the whole split).")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=None,
              help="Relax the precision's task budget: largest accepted accuracy drop, in points.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Relax the precision's task budget: least fraction of unchanged predictions.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--quiet", is_flag=True, help="No progress display or summary (errors are still printed).")
def main(config_name: str | None, checkpoint: Path | None, seed: int, precision: str, formats: tuple[str, ...],
         out_dir: Path, batch: DimRange, seq: DimRange | None, atol: float | None, rtol: float | None,
         max_rel_error: float | None,
         calib_samples: int | None, calib_method: str | None, accuracy_budget: float | None,
         eval_rows: int | None, max_accuracy_drop: float | None, min_agreement: float | None,
         as_json: bool, quiet: bool) -> None:
    """Export MAHIA-X to verified deployable artifacts: a torch.export program (.pt2), portable ONNX, and a
    Polygraphy parity report against the eager PyTorch model; for a trained model, the accuracy drop and
    argmax agreement on the test split. Exits 0 only when every check is within its budget."""
    from mahia.artifact import ArtifactError
    from mahia.export.errors import ExportError, MissingPackageError
    from mahia.export.parity import ParityRunError, failure_message
    from mahia.export.pipeline import check_packages, resolve_formats, run_export
    from mahia.model import CheckpointError, InputValidationError

    if checkpoint is not None:
        source, expected = ModelSource.from_checkpoint(checkpoint), config_name
    else:
        source = ModelSource.from_config(config_name, seed) if config_name else ModelSource.embedded_default()
        expected = None
    recipe, calibration = _quantization(precision, calib_samples, calib_method, accuracy_budget)
    cfg = ExportConfig(source=source, precision=precision, formats=formats, expected_config=expected, batch=batch,
                       seq=seq, atol=atol, rtol=rtol, max_rel_error=max_rel_error, out_dir=out_dir,
                       command_line=("mahia-export", *sys.argv[1:]),
                       recipe=recipe, calibration=calibration,
                       task=TaskCheckConfig(eval_rows, max_accuracy_drop, min_agreement))
    start = time.perf_counter()
    try:
        check_packages(resolve_formats(get_precision(precision), formats)[0])  # before any output: nothing partial
        with _progress(quiet) as on_stage:
            result = run_export(cfg, on_stage)
    except MissingPackageError as exc:
        click.echo(f"Error: {str(exc).splitlines()[0]}", err=True)
        sys.exit(2)
    except (CheckpointError, InputValidationError, ValueError) as exc:
        raise click.UsageError(str(exc).splitlines()[0]) from None
    except (ArtifactError, ExportError, ParityRunError, OSError) as exc:
        click.echo(f"Error: {str(exc).splitlines()[0]}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted: nothing was written.", err=True)
        sys.exit(130)
    seconds = time.perf_counter() - start
    worst = result.parity.worst()
    if as_json:
        manifest = result.manifest.to_dict()
        click.echo(json.dumps({"status": manifest["status"], "artifact_dir": str(result.artifact_dir),
                               "precision": precision, "formats": manifest["formats"],
                               "model": {k: manifest["model"][k] for k in ("label", "trained", "source")},
                               "parity": result.parity.to_dict(), "task": manifest["task"],
                               "stages": manifest["stages"], "files": manifest["files"],
                               "tensorrt": manifest.get("tensorrt"), "seconds": round(seconds, 2)}, indent=2))
    task = result.task
    for checked in (task, *result.extra_tasks.values()):
        if checked is not None and not checked.passed:
            click.echo(f"Task check FAILED on {checked.rows} test rows ({checked.backend}): {checked.failure()} "
                       f"(eager accuracy {checked.eager_accuracy:.4f}, deployed {checked.deployed_accuracy:.4f}; relax "
                       f"with --max-accuracy-drop / --min-agreement); kept for debugging: {result.artifact_dir}",
                       err=True)
    for graph, rtx in result.rtx.items():
        if not rtx["ok"]:
            click.echo(f"{graph}: {rtx['summary']}; kept for debugging: {result.artifact_dir}", err=True)
    if not result.parity.passed:
        click.echo(f"{failure_message(result.parity, result.manifest.model.trained, precision)} Kept for debugging: "
                   f"{result.artifact_dir}", err=True)
    if not result.passed:
        sys.exit(1)
    if not quiet and not as_json:
        click.echo(f"Parity passed (worst rel L2 error {worst.rel_l2_error:.2e}, {worst.backend} at "
                   f"{worst.batch} x {worst.seq}).")
        for checked in (task, *result.extra_tasks.values()):
            if checked is not None:
                change = 100 * (checked.deployed_accuracy - checked.eager_accuracy)
                which = "" if checked is task else f" ({checked.backend})"
                click.echo(f"Task check passed on {checked.rows} test rows{which}: accuracy "
                           f"{checked.deployed_accuracy:.4f} vs eager {checked.eager_accuracy:.4f} ({change:+.2f} pt), "
                           f"argmax agreement {checked.agreement:.4f}.")
        for graph, rtx in result.rtx.items():
            click.echo(f"{graph}: {rtx['summary']}.")
        click.echo(f"Artifacts: {result.artifact_dir} ({seconds:.1f} s)")


def _quantization(precision: str, samples: int | None, method: str | None,
                  budget: float | None) -> tuple[Recipe | None, CalibrationOptions | None]:
    """The recipe and calibration options of a quantized precision, from the precision's recipe type; (None, None)
    for the others, which take no such option."""
    from mahia.calibration.data import CalibrationError

    given = [name for name, value in (("--calib-samples", samples), ("--calib-method", method),
                                      ("--accuracy-budget", budget)) if value is not None]
    recipe_type = get_precision(precision).recipe
    if recipe_type is None:
        if given:
            quantized = [p.name for p in precisions().values() if p.recipe is not None]
            raise click.UsageError(f"{', '.join(given)} apply to the quantized precisions "
                                   f"({', '.join(quantized)}), not {precision}")
        return None, None
    try:
        return (recipe_type.from_options(method, budget),
                CalibrationOptions() if samples is None else CalibrationOptions(samples=samples))
    except CalibrationError as exc:
        raise click.UsageError(str(exc)) from None


class _progress:
    """Context manager yielding a stage callback that drives a rich progress display on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self):
        if self.quiet:
            return lambda name, status, seconds: None
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(finished_text="[green]done"), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=False)
        self.progress.__enter__()
        tasks: dict[str, int] = {}

        def on_stage(name: str, status: str, seconds: float) -> None:
            if status == "start":
                tasks[name] = self.progress.add_task(name, total=1)
            else:
                self.progress.update(tasks[name], completed=1, description=f"{name} ({seconds:.1f} s)")
        return on_stage

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.progress.__exit__(*exc)
