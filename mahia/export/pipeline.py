"""The export pipeline: load -> export -> lower -> build/quantize -> verify -> package, one manifest.

`run_export` chains the stages, times each one, and records them all in manifest.json. Every input
is checked before any heavy work starts; artifacts are written atomically (see artifact.py).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import torch

from mahia.export import artifact, parity, report, stages, task_check
from mahia.export.config import ExportConfig, ShapeProfile, Tolerances
from mahia.export.onnx_lowering import long_conv_lowering
from mahia.export.precisions import ONNX, PT2, BuildContext, Built, Precision, get_precision
from mahia.model import ModelConfig
from mahia.model.inputs import input_spec

PT2_FILE = "model.pt2"
INPUTS_FILE, EAGER_FILE, PARITY_FILE, REPORT_FILE = "inputs.json", "eager_outputs.json", "parity.json", "report.md"
# Above this many bytes of weights the ONNX weights go to an external data file (protobuf caps at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxconverter-common", "onnxslim", "polygraphy", "numpy")

StageCallback = Callable[[str, str, float], None]  # (stage name, "start" | "done", seconds)


@dataclass(frozen=True)
class StageRecord:
    """One stage as the manifest records it."""

    name: str
    seconds: float
    products: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportResult:
    """What a run produced: where, whether parity passed, and the manifest written."""

    artifact_dir: Path
    passed: bool  # parity passed, and the task check too where it ran
    manifest: dict
    parity: parity.ParityResult
    task: task_check.TaskResult | None = None  # None: untrained model, no task check
    stages: tuple[StageRecord, ...] = field(default_factory=tuple)


def output_spec(config: ModelConfig) -> dict[str, dict]:
    """The graph output: logits [batch, num_classes], float32."""
    return {"logits": {"dtype": "float32", "shape": ["batch", config.num_classes]}}


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the artifacts."""
    versions = {"python": platform.python_version(), "mahia": __import__("mahia").__version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def resolve_tolerances(precision: Precision, atol: float | None, rtol: float | None) -> Tolerances:
    """The precision's budget with the user's --atol/--rtol overrides."""
    return Tolerances(precision.atol if atol is None else atol, precision.rtol if rtol is None else rtol,
                      precision.max_rel_error)


def artifact_name(config: ModelConfig, precision: Precision, weights: str, cfg: ExportConfig,
                  profile: ShapeProfile, tolerances: Tolerances) -> str:
    """`<config>-<precision>-<short hash>`: the hash covers weights and every setting that shapes the output."""
    key = json.dumps({"weights": weights, "config": config.to_json(), "precision": precision.name,
                      "formats": list(cfg.formats), "batch": str(profile.batch), "seq": str(profile.seq),
                      "tolerances": asdict(tolerances), "opset": cfg.opset, "flavour": cfg.flavour,
                      **({"calibration": asdict(cfg.calibration)} if cfg.calibration is not None else {})}, sort_keys=True)
    return f"{config.name}-{precision.name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def onnx_file_name(precision: str) -> str:
    """model.onnx for fp32, model.<precision>.onnx for every other precision."""
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


def save_onnx(model: onnx.ModelProto, directory: artifact.ArtifactDir, file_name: str,
              external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[str]:
    """Save the graph (weights in `<file>.data` above the threshold), run the full checker; returns file names."""
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights > external_data_threshold:
        data_name = f"{file_name}.data"
        try:
            onnx.save_model(model, str(directory.path / file_name), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        except OSError as exc:
            raise artifact.ArtifactError(artifact.describe_os_error(exc, directory.target / file_name)) from None
        files = [file_name, data_name]
    else:
        directory.write_bytes(file_name, model.SerializeToString(deterministic=True))
        files = [file_name]
    stages.check_onnx(directory.path / file_name)
    return files


def run_export(cfg: ExportConfig, on_stage: StageCallback | None = None) -> ExportResult:
    """Run every stage for `cfg`; raises on bad input or a failed stage, returns the result otherwise."""
    notify = on_stage or (lambda name, status, seconds: None)
    records: list[StageRecord] = []

    def timed(name: str, fn: Callable[[], object], products: Callable[[object], tuple[str, ...]] = lambda r: ()) -> object:
        notify(name, "start", 0.0)
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        records.append(StageRecord(name, round(seconds, 3), products(result)))
        notify(name, "done", seconds)
        return result

    precision = get_precision(cfg.precision)
    formats = cfg.formats or precision.formats
    unsupported = [f for f in formats if f not in precision.formats]
    if unsupported:
        raise ValueError(f"precision {precision.name!r} produces {', '.join(precision.formats)}; "
                         f"cannot write {', '.join(unsupported)}")
    if cfg.flavour not in stages.ONNX_FLAVOURS:
        raise ValueError(f"unknown ONNX flavour {cfg.flavour!r}; built here: {', '.join(stages.ONNX_FLAVOURS)}")
    artifact.check_writable(cfg.out_dir)

    loaded: stages.LoadedModel = timed("load", lambda: stages.load_model(cfg.source))
    profile = stages.resolve_profile(loaded.config, cfg.batch, cfg.seq)
    tolerances = resolve_tolerances(precision, cfg.atol, cfg.rtol)
    name = artifact_name(loaded.config, precision, loaded.weights_sha256, cfg, profile, tolerances)
    artifact.sweep_stale(cfg.out_dir)
    directory = artifact.ArtifactDir(cfg.out_dir / name)
    try:
        with artifact.sigterm_as_interrupt():
            return _run_stages(cfg, precision, formats, loaded, profile, tolerances, directory, timed, records)
    except BaseException:
        directory.discard()
        raise


def _run_stages(cfg: ExportConfig, precision: Precision, formats: tuple[str, ...], loaded: stages.LoadedModel,
                profile: ShapeProfile, tolerances: Tolerances, directory: artifact.ArtifactDir,
                timed: Callable, records: list[StageRecord]) -> ExportResult:
    model, config = loaded.model, loaded.config
    onnx_file = onnx_file_name(precision.name)
    program = timed("export", lambda: stages.export_program(model, profile))
    onnx_fp32 = None
    if ONNX in formats:
        onnx_fp32 = timed("lower", lambda: stages.lower_to_onnx(program, config, profile, cfg.opset, cfg.flavour))

    def export_at(dtype: torch.dtype) -> torch.export.ExportedProgram:
        return program if dtype == torch.float32 else stages.export_program(model, profile, dtype)

    def calibration_inputs(n: int) -> list[dict[str, torch.Tensor]]:
        feeds = parity.real_samples(config, [(1, profile.seq.opt)] * n, split="train")
        return [{k: torch.from_numpy(v) for k, v in f.items()} for f in feeds]

    ctx = BuildContext(model, onnx_fp32, export_at, calibration_inputs, formats, cfg.calibration)

    def build() -> tuple[Built, list[str]]:
        built = precision.build(ctx)
        files = []
        if ONNX in formats:
            if built.onnx is None:
                raise stages.ExportError(f"precision {precision.name!r} built no ONNX graph")
            files += save_onnx(built.onnx, directory, onnx_file)
        if PT2 in formats:
            if built.program is None:
                raise stages.ExportError(f"precision {precision.name!r} built no ExportedProgram")
            with directory.open_for_write(PT2_FILE) as f, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "No complete tensor found in the group": CPU-only weights, harmless
                torch.export.save(built.program, f)
            files.append(PT2_FILE)
        for name, data in built.files.items():
            directory.write_bytes(name, data)
            files.append(name)
        return built, files

    built, graph_files = timed(precision.stage_name, build, lambda r: tuple(r[1]))

    def verify() -> parity.ParityResult:
        points = profile.points()
        feeds = parity.real_samples(config, points)
        reference = parity.eager_outputs(model, feeds)
        parity.save_polygraphy_files(feeds, reference, directory.path / INPUTS_FILE, directory.path / EAGER_FILE)
        backends = {}
        if ONNX in formats:
            backends["onnxrt"] = directory.path / onnx_file
        if PT2 in formats:
            backends["pt2"] = directory.path / PT2_FILE
        spec = {n: (np.dtype(s["dtype"]), tuple(None if isinstance(d, str) else d for d in s["shape"]))
                for n, s in input_spec(config).items()}
        result = parity.compare(backends, spec, feeds, reference, points, tolerances)
        directory.write_json(PARITY_FILE, result.to_dict())
        return result

    result: parity.ParityResult = timed("verify", verify, lambda r: (INPUTS_FILE, EAGER_FILE, PARITY_FILE))

    task: task_check.TaskResult | None = None
    if loaded.trained:
        backend = ONNX if ONNX in formats else PT2
        graph = directory.path / (onnx_file if backend == ONNX else PT2_FILE)
        task = timed("task", lambda: task_check.check_task(model, loaded.text_tokens, backend, graph, profile,
                                                           cfg.task, precision.task_budget))
    passed = result.passed and (task is None or task.passed)

    manifest = {
        "schema_version": artifact.SCHEMA_VERSION,
        "status": "passed" if passed else "failed",
        "command": list(cfg.command_line) or [sys.argv[0], *sys.argv[1:]],
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "packages": package_versions(),
        "model": {"label": loaded.label, "trained": loaded.trained, "source": loaded.source,
                  "weights_sha256": loaded.weights_sha256, "config": json.loads(config.to_json())},
        "precision": {"name": precision.name, "summary": precision.summary, "notes": dict(built.notes)},
        "formats": list(formats),
        "onnx": {"file": onnx_file, "opset": cfg.opset, "flavour": cfg.flavour,
                 "optimizer": "onnxscript (torch.onnx optimize=True), then graph_passes.share_equal_shapes and "
                              "a second onnxscript pass (constant folding without size limits, CSE)",
                 "long_conv": long_conv_lowering(stages.max_tokens(config, profile)).__name__}
        if ONNX in formats else None,
        "inputs": input_spec(config),
        "outputs": output_spec(config),
        "dims": {"batch": profile.batch.to_dict(), "seq": profile.seq.to_dict()},
        "parity": {"passed": result.passed, "tolerances": asdict(tolerances), "points": [list(p) for p in profile.points()],
                   "worst": asdict(result.worst()), "file": PARITY_FILE},
        "task": task.to_dict() if task is not None else
        {"skipped": "the model is untrained: its task metrics would mean nothing"},
        "stages": [asdict(r) for r in records],
    }

    def package() -> Path:
        stage_records = records + [StageRecord("package", 0.0, (REPORT_FILE, artifact.MANIFEST))]
        directory.write_bytes(REPORT_FILE, report.render(manifest, result, stage_records, graph_files).encode())
        return directory.finish({**manifest, "stages": [asdict(r) for r in stage_records]}, passed)

    final = timed("package", package)
    manifest = json.loads((final / artifact.MANIFEST).read_text())
    return ExportResult(final, passed, manifest, result, task, tuple(records))
