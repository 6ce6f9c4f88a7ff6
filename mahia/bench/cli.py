"""`mahia-bench`: what each way of running the model costs, measured on this machine, in one process.

    mahia-bench --config base --shapes 1x128,8x512,32x2048 --out bench/       # GPU: eager vs compile vs deployed
    mahia-bench artifacts/small-fp8-... --shapes 1x128,8x384                  # an artifact's model and graphs
    mahia-bench --config tiny --shapes 1x64,8x128                             # CPU: eager fp32 vs ONNX Runtime

On a GPU: eager bf16 with the reference ops and with the Triton kernels, torch.compile of the eager model, and
the CUDA backend's bf16 and fp8 deployments (CUDA graphs, with and without torch.compile). On a CPU: eager fp32
and ONNX Runtime fp32 / int8 / fp8 (with --config they are exported first, into OUT/artifacts). Per variant and
shape: p50/p99 latency, samples/s and tokens/s, MFU against the matmul peak measured in the same run, peak GPU
memory, energy per inference from NVML (or why it is unavailable), the logits' relative error against eager
fp32, and the first call's seconds (compilation and graph capture); plus a per-component profile of the eager
model. Writes OUT/bench.json and OUT/bench.png.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import click
import torch
from rich.console import Console

from mahia.artifact import ArtifactIntegrityError, DimRange, Manifest, open_artifact, write_json_atomically
from mahia.bench.flops import forward_flops
from mahia.bench.report import BENCH_JSON, components_table, results_table, write_outputs
from mahia.bench.run import BenchOptions, run_bench, shape_label
from mahia.bench.variants import CPU_VARIANTS, GPU_VARIANTS, Variant, cpu_variants, gpu_variants
from mahia.calibration.data import CalibrationError
from mahia.data import DataConfig, DataError
from mahia.model import CONFIGS, CheckpointError, MahiaX, build_model, get_config
from mahia.runtime.backends.cuda import rebuild_model
from mahia.runtime.backends.cuda_buckets import Buckets
from mahia.runtime.backends.cuda_fp8 import activation_scales, scales_from_ranges

CALIBRATION_FILE = "calibration.json"


def parse_shapes(text: str, max_seq_len: int) -> tuple[tuple[int, int], ...]:
    """'1x128,8x512' -> ((1, 128), (8, 512)); a ValueError names the bad entry."""
    shapes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            batch, seq = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise ValueError(f"--shapes entry {part!r}: expected BATCHxSEQ, e.g. 8x512") from None
        if batch < 1 or seq < 1:
            raise ValueError(f"--shapes entry {part!r}: batch and sequence length must be >= 1")
        if seq > max_seq_len:
            raise ValueError(f"--shapes entry {part!r}: sequence length {seq} is above the model's max_seq_len "
                             f"{max_seq_len}")
        shapes.append((batch, seq))
    if not shapes:
        raise ValueError("--shapes is empty: give BATCHxSEQ entries, e.g. 1x128,8x512")
    return tuple(dict.fromkeys(shapes))


def calibrated_scales(model: MahiaX, samples: int, data_path: str | None) -> dict[str, float]:
    """FP8 activation scales calibrated as the fp8 export calibrates (its recipe's range method) on `samples` real
    training reviews."""
    from mahia.calibration.data import CalibrationDataConfig, load_calibration_data
    from mahia.calibration.ranges import collect_ranges
    from mahia.calibration.recipes import Fp8Recipe

    method = Fp8Recipe().range_method()
    data = load_calibration_data(model.config, CalibrationDataConfig(samples), DataConfig(path=data_path))
    ranges = collect_ranges(model, data, (method.method,))
    return scales_from_ranges({name: ranges.amax(name, method) for name in ranges.names()})


def _artifacts(directories: tuple[Path, ...]) -> list[tuple[Path, Manifest]]:
    opened = [(d, open_artifact(d, allow_failed=True)) for d in directories]
    weights = {m.model.weights_sha256 for _, m in opened}
    if len(weights) > 1:
        raise ValueError("the artifacts were exported from different weights: benchmark one model at a time")
    return opened


def _export_onnx(config: str, seed: int, shapes: tuple[tuple[int, int], ...], out: Path, samples: int,
                 data_path: str | None, precisions: list[str], log: Callable[[str], None]) -> dict[str, Path]:
    """Export the config's ONNX artifacts for the CPU variants (mahia-export's pipeline, sensitivity off)."""
    from mahia.calibration.recipes import CalibrationOptions
    from mahia.export.config import ExportConfig
    from mahia.export.pipeline import run_export
    from mahia.model import ModelSource

    if data_path is not None and any(p != "fp32" for p in precisions):
        raise ValueError("--data with --config on a CPU: the exports calibrate on the installed reviews data; "
                         "export with mahia-export and pass the artifacts instead")
    batch = DimRange("batch", 1, max(b for b, _ in shapes), max(b for b, _ in shapes))
    seq = DimRange("seq", 1, max(s for _, s in shapes), max(s for _, s in shapes))
    exported = {}
    for precision in precisions:
        log(f"exporting {config} {precision} ONNX into {out} ...")
        result = run_export(ExportConfig(
            ModelSource.from_config(config, seed), precision, ("onnx",), batch=batch, seq=seq, out_dir=out,
            calibration=None if precision == "fp32" else CalibrationOptions(samples, sensitivity=False)))
        log(f"  {result.artifact_dir.name}: parity {'passed' if result.passed else 'FAILED'} "
            f"(worst rel L2 {result.parity.worst().rel_l2_error:.2e})")
        exported[precision] = result.artifact_dir
    return exported


def _select(variants: list[Variant], wanted: str | None, known: tuple[str, ...]) -> list[Variant]:
    if wanted is None:
        return variants
    keys = [k.strip() for k in wanted.split(",") if k.strip()]
    unknown = [k for k in keys if k not in known and not k.startswith("onnx-")]
    if unknown:
        raise ValueError(f"--variants: unknown {', '.join(unknown)}; this device runs {', '.join(known)}")
    chosen = [v for v in variants if v.key in keys]
    if not chosen:
        raise ValueError(f"--variants {wanted}: none of them is available here ({', '.join(v.key for v in variants)})")
    return chosen


@click.command(context_settings={"show_default": True})
@click.argument("artifact_dirs", nargs=-1, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--config", "config_name", type=click.Choice(list(CONFIGS)), default=None,
              help="Benchmark this config with random weights (seeded) instead of an artifact's model.")
@click.option("--seed", type=int, default=0, help="Seed of --config's weights and of the random inputs.")
@click.option("--shapes", default="1x128,8x512", help="BATCHxSEQ list (text tokens per sample).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench"),
              help="Where bench.json and bench.png go.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
              help="auto: the GPU when there is one.")
@click.option("--variants", "wanted", default=None,
              help=f"Comma list of variants (GPU: {', '.join(GPU_VARIANTS)}; CPU: {', '.join(CPU_VARIANTS)}).")
@click.option("--window", type=click.FloatRange(min=0.0), default=1.0,
              help="Seconds of timed calls per variant and shape (at least 10 calls; on a GPU at least 12.5 steps "
                   "of NVML's energy counter, 1.25 s on an H200, so that energy is read).")
@click.option("--time-budget", type=click.FloatRange(min=0.0), default=None,
              help="Seconds; measurements that would start later are reported as skipped.")
@click.option("--data", "data_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Reviews parquet file for the fp8 calibration (default: the installed one).")
@click.option("--calib-samples", type=click.IntRange(min=16), default=128,
              help="Real reviews the fp8 activation ranges are calibrated on (without an fp8 artifact).")
@click.option("--no-profile", is_flag=True, help="Skip the per-component profile.")
def main(artifact_dirs: tuple[Path, ...], config_name: str | None, seed: int, shapes: str, out: Path, device: str,
         wanted: str | None, window: float, time_budget: float | None, data_path: str | None, calib_samples: int,
         no_profile: bool) -> None:
    """Latency, throughput, MFU, memory, energy and accuracy of each way of running the model."""
    console = Console() if Console().is_terminal else Console(width=200)
    try:
        if bool(artifact_dirs) == bool(config_name):
            raise ValueError("give ARTIFACT_DIR(s) or --config NAME (one of the two)")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA GPU")
        target = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available())
                              else "cpu")
        artifacts = _artifacts(artifact_dirs)
        if config_name:
            model = build_model(get_config(config_name), seed).eval()
            label = f"{config_name}, seed {seed}, random weights (untrained)"
        else:
            directory, manifest = artifacts[0]
            model, label = rebuild_model(directory, manifest), manifest.model.label
        parsed = parse_shapes(shapes, model.config.max_seq_len)
        for directory, manifest in artifacts:
            for batch, seq in parsed:
                if not (manifest.batch.contains(batch) and manifest.seq.contains(seq)):
                    raise ValueError(f"--shapes {batch}x{seq} is outside {directory.name}'s exported range "
                                     f"batch {manifest.batch}, seq {manifest.seq}")
        variants = _variants(model, target, parsed, artifacts, config_name, seed, out, data_path, calib_samples,
                             wanted, console.print)
        header = {"command": ["mahia-bench", *sys.argv[1:]],
                  "model": {"label": label, "config": model.config.name,
                            "parameters": sum(p.numel() for p in model.parameters()),
                            "artifacts": [str(d) for d, _ in artifacts]},
                  "flops": {"method": "analytic from the config (mahia.bench.flops): dense layers, the top-k "
                                      "experts, the SSD scan's matmuls and the FFT long convolutions",
                            **{shape_label(s): forward_flops(model.config, *s) for s in parsed}},
                  "notes": _notes(target, seed)}
        out.mkdir(parents=True, exist_ok=True)
        document = {**header, **run_bench(
            model, variants, target, BenchOptions(parsed, window, time_budget=time_budget, seed=seed,
                                                  profile=not no_profile), console.print,
            lambda partial: write_json_atomically({**header, "partial": True, **partial}, out / BENCH_JSON))}
    except (ValueError, ArtifactIntegrityError, CheckpointError, DataError, CalibrationError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(results_table(document))
    table = components_table(document)
    if table is not None:
        console.print(table)
    written = write_outputs(document, out)
    console.print("wrote " + ", ".join(str(p) for p in written))


def _variants(model: MahiaX, target: torch.device, shapes: tuple[tuple[int, int], ...],
              artifacts: list[tuple[Path, Manifest]], config_name: str | None, seed: int, out: Path,
              data_path: str | None, calib_samples: int, wanted: str | None,
              log: Callable[[str], None]) -> list[Variant]:
    if target.type == "cuda":
        fp8 = [d for d, m in artifacts if m.precision.name == "fp8"]

        def fp8_scales() -> Mapping[str, float]:
            if fp8:
                from mahia.calibration.table import read_table_json

                return activation_scales(read_table_json(fp8[0] / CALIBRATION_FILE))
            log(f"calibrating fp8 activation ranges on {calib_samples} real reviews (CPU) ...")
            return calibrated_scales(model, calib_samples, data_path)

        batch = DimRange("batch", 1, 1, max(b for b, _ in shapes))
        seq = DimRange("seq", 1, 1, max(s for _, s in shapes))
        buckets = Buckets.from_ranges(batch, seq, model.config.num_tabular_tokens, model.config.max_seq_len)
        return _select(gpu_variants(model, target, buckets, fp8_scales), wanted, GPU_VARIANTS)
    onnx = {m.precision.name: d for d, m in artifacts if "onnx" in m.graphs}
    if config_name:
        keys = [k for k in CPU_VARIANTS if k.startswith("onnx-") and (wanted is None or k in wanted.split(","))]
        onnx = _export_onnx(config_name, seed, shapes, out / "artifacts", calib_samples, data_path,
                            [k.removeprefix("onnx-") for k in keys], log)
    return _select(cpu_variants(model, onnx), wanted, CPU_VARIANTS + tuple(f"onnx-{p}" for p in onnx))


def _notes(target: torch.device, seed: int) -> list[str]:
    notes = [f"inputs: random word ids and features (seed {seed}), every position real (no padding)",
             "rel err vs fp32: ||logits - ref|| / ||ref|| against the eager fp32 model with the reference ops on the "
             "same device (TF32 off)",
             "MFU: the analytic FLOPs / p50 / the matmul peak measured in this run"]
    if target.type == "cuda":
        notes += ["latency: CUDA events around each call, calls back to back after the first call and the warm-up",
                  "cuda-* variants: timed from device-resident inputs to device-resident logits (padding into the "
                  "bucket's graph inputs included); Deployment.run adds input validation and host copies",
                  "buckets: mahia.runtime.backends.cuda_buckets over batch 1..max and seq 1..max of --shapes",
                  "peak mem: torch.cuda.max_memory_allocated during the variant, every resident model included",
                  "fp8 rel err: its activation scales come from real reviews (an fp8 artifact's calibration, or "
                  "--calib-samples of them) while the timed inputs are random, past the calibrated ranges (base: up "
                  "to 1.19x at 2 x 64): 0.95 on the CPU, 0.25 with the linear layers' scales from the timed inputs, "
                  "bf16 0.23 (benchmarks/fp8_random_input_error.py); so it is no parity measure: "
                  "benchmarks/cuda_backend_check.py checks an fp8 artifact's parity on real reviews"]
    else:
        notes += ["latency: time.perf_counter around each call", "onnx variants: the deployment's runner (ONNX "
                  "Runtime, CPU execution provider, default threads) without input validation"]
    return notes


if __name__ == "__main__":
    main()
