"""The export pipeline: load -> export -> lower -> build/quantize -> verify -> package, one manifest.

`run_export` chains the stages, times each one, and records them all in manifest.json. Every input
is checked before any heavy work starts; artifacts are written atomically (mahia.artifact).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from mahia.artifact import (
    EAGER_FILE,
    FAILED,
    INPUTS_FILE,
    MANIFEST,
    PARITY_FILE,
    PASSED,
    REPORT_FILE,
    ArtifactDir,
    Manifest,
    ModelRecord,
    PrecisionRecord,
    check_writable,
    read_manifest,
    sigterm_as_interrupt,
    sweep_stale,
)
from mahia.calibration.recipes import CalibrationOptions
from mahia.data import feeds_at_points
from mahia.default import LoadedModel
from mahia.export import parity, report, stages, task_check
from mahia.export.config import ExportConfig, ShapeProfile, Tolerances
from mahia.export.flavours import Flavour, get_flavour
from mahia.export.formats import Format, in_registry_order
from mahia.export.precisions import BuildContext, Built, Precision, get_precision
from mahia.model import ModelConfig, weights_sha256
from mahia.model.inputs import input_spec
from mahia.runtime import get_backend

PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxconverter-common", "onnxslim", "polygraphy", "numpy")
UNTRAINED = {"skipped": "the model is untrained: its task metrics would mean nothing"}

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
    manifest: Manifest
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


def resolve_tolerances(precision: Precision, atol: float | None, rtol: float | None,
                       max_rel_error: float | None = None) -> Tolerances:
    """The precision's budget with the user's --atol/--rtol/--max-rel-error overrides."""
    return Tolerances(precision.atol if atol is None else atol, precision.rtol if rtol is None else rtol,
                      precision.max_rel_error if max_rel_error is None else max_rel_error)


def resolve_formats(precision: Precision, requested: tuple[str, ...]) -> tuple[tuple[str, ...], Flavour | None]:
    """The formats to write (default: every one the precision produces) and the ONNX flavour they need, if any."""
    formats = requested or precision.formats
    unsupported = [f for f in formats if f not in precision.formats]
    if unsupported:
        raise ValueError(f"precision {precision.name!r} produces {', '.join(precision.formats)}; "
                         f"cannot write {', '.join(unsupported)}")
    flavours = sorted({fmt.flavour for fmt in in_registry_order(formats) if fmt.flavour})
    if len(flavours) > 1:  # one lowered fp32 graph feeds the precision's build (BuildContext.onnx_fp32)
        raise ValueError(f"formats {', '.join(formats)} need ONNX flavours {', '.join(flavours)}: one per run")
    return formats, get_flavour(flavours[0]) if flavours else None


def artifact_name(config: ModelConfig, precision: Precision, weights: str, cfg: ExportConfig,
                  profile: ShapeProfile, tolerances: Tolerances) -> str:
    """`<config>-<precision>-<short hash>`: the hash covers weights and every setting that shapes the output."""
    key = json.dumps({"weights": weights, "config": config.to_json(), "precision": precision.name,
                      "formats": list(cfg.formats), "batch": str(profile.batch), "seq": str(profile.seq),
                      "tolerances": asdict(tolerances), "opset": cfg.opset,
                      **({"recipe": {"type": type(cfg.recipe).__name__, **asdict(cfg.recipe)}} if cfg.recipe else {}),
                      **({"calibration": asdict(cfg.calibration)} if cfg.calibration is not None else {})},
                     sort_keys=True)
    return f"{config.name}-{precision.name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


class _StageClock:
    """Runs stages, timing each one and reporting start and end to the progress callback."""

    def __init__(self, notify: StageCallback | None) -> None:
        self.notify = notify or (lambda name, status, seconds: None)
        self.records: list[StageRecord] = []

    def run(self, name: str, fn: Callable[[], Any], products: Callable[[Any], tuple[str, ...]] = lambda r: ()) -> Any:
        """fn(), recorded as stage `name` with the files it produced."""
        self.notify(name, "start", 0.0)
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        self.records.append(StageRecord(name, round(seconds, 3), products(result)))
        self.notify(name, "done", seconds)
        return result


def run_export(cfg: ExportConfig, on_stage: StageCallback | None = None) -> ExportResult:
    """Run every stage for `cfg`; raises on bad input or a failed stage, returns the result otherwise."""
    clock = _StageClock(on_stage)
    precision = get_precision(cfg.precision)
    formats, flavour = resolve_formats(precision, cfg.formats)
    check_writable(cfg.out_dir)

    loaded, weights = clock.run("load", lambda: _load(cfg))
    profile = stages.resolve_profile(loaded.config, cfg.batch, cfg.seq)
    tolerances = resolve_tolerances(precision, cfg.atol, cfg.rtol, cfg.max_rel_error)
    name = artifact_name(loaded.config, precision, weights, cfg, profile, tolerances)
    sweep_stale(cfg.out_dir)
    directory = ArtifactDir(cfg.out_dir / name)
    try:
        with sigterm_as_interrupt():
            return _Run(cfg, precision, formats, flavour, loaded, weights, profile, tolerances, directory, clock).run()
    except BaseException:
        directory.discard()
        raise


def _load(cfg: ExportConfig) -> tuple[LoadedModel, str]:
    loaded = stages.load_model(cfg.source, cfg.expected_config)
    return loaded, weights_sha256(loaded.model)


@dataclass
class _Run:
    """The stages after loading, in order: export, lower, build, verify, task, package."""

    cfg: ExportConfig
    precision: Precision
    formats: tuple[str, ...]
    flavour: Flavour | None
    loaded: LoadedModel
    weights: str
    profile: ShapeProfile
    tolerances: Tolerances
    directory: ArtifactDir
    clock: _StageClock

    def run(self) -> ExportResult:
        """Every remaining stage; the directory is renamed into place (or kept failed) at the end."""
        built, graphs, graph_files = self.build(self.export_and_lower())
        result: parity.ParityResult = self.clock.run("verify", lambda: self.verify(graphs),
                                                     lambda r: (INPUTS_FILE, EAGER_FILE, PARITY_FILE))
        task = self.clock.run("task", lambda: self.task_check(graphs)) if self.loaded.trained else None
        passed = result.passed and (task is None or task.passed)
        final = self.clock.run("package", lambda: self.package(built, graphs, graph_files, result, task, passed))
        return ExportResult(final, passed, read_manifest(final), result, task, tuple(self.clock.records))

    def export_and_lower(self) -> tuple[torch.export.ExportedProgram, Any]:
        """Stages export and (for ONNX formats) lower: the fp32 program and the fp32 ONNX graph, or None."""
        model, config, profile = self.loaded.model, self.loaded.config, self.profile
        program = self.clock.run("export", lambda: stages.export_program(model, profile))
        onnx_fp32 = None
        if self.flavour is not None:
            onnx_fp32 = self.clock.run("lower", lambda: stages.lower_to_onnx(program, config, profile, self.cfg.opset,
                                                                             self.flavour.name))
        return program, onnx_fp32

    def build(self, lowered: tuple[torch.export.ExportedProgram, Any]) -> tuple[Built, dict[str, str], list[str]]:
        """The precision's stage (build or quantize): its graphs saved in each format, and its extra files."""
        program, onnx_fp32 = lowered
        model, profile, precision = self.loaded.model, self.profile, self.precision

        def export_at(dtype: torch.dtype) -> torch.export.ExportedProgram:
            return program if dtype == torch.float32 else stages.export_program(model, profile, dtype)

        recipe = self.cfg.recipe or (precision.recipe() if precision.recipe else None)
        ctx = BuildContext(model, onnx_fp32, export_at, self.formats, recipe,
                           self.cfg.calibration or CalibrationOptions())

        def build_and_save() -> tuple[Built, dict[str, str], list[str]]:
            built = precision.build(ctx)
            graphs, files = {}, []
            for fmt in in_registry_order(self.formats):
                written = fmt.save(built, self.directory, fmt.file_name(precision.name))
                graphs[fmt.name] = written[0]
                files += written
            for name, data in built.files.items():
                self.directory.write_bytes(name, data)
                files.append(name)
            return built, graphs, files

        return self.clock.run(precision.stage_name, build_and_save, lambda r: tuple(r[2]))

    def verify(self, graphs: dict[str, str]) -> parity.ParityResult:
        """Stage verify: every graph on each of its verify backends against eager fp32, at the profile's points."""
        points = self.profile.points()
        feeds = feeds_at_points(self.loaded.config, points)
        reference = parity.eager_outputs(self.loaded.model, feeds)
        parity.save_polygraphy_files(feeds, reference, self.directory.path / INPUTS_FILE,
                                     self.directory.path / EAGER_FILE)
        checked = [parity.Graph(self.directory.path / graphs[fmt.name], get_backend(backend))
                   for fmt in in_registry_order(self.formats) for backend in fmt.verify_backends()]
        result = parity.compare(checked, input_spec(self.loaded.config), feeds, reference, points, self.tolerances)
        self.directory.write_json(PARITY_FILE, result.to_dict())
        return result

    def task_check(self, graphs: dict[str, str]) -> task_check.TaskResult:
        """Stage task (trained models): the deployed graph (the first format's) against eager on the test split."""
        fmt: Format = in_registry_order(self.formats)[0]
        return task_check.check_task(self.loaded.model, self.loaded.text_tokens, fmt.backend,
                                     self.directory.path / graphs[fmt.name], self.profile, self.cfg.task,
                                     self.precision.task_budget)

    def package(self, built: Built, graphs: dict[str, str], graph_files: list[str], result: parity.ParityResult,
                task: task_check.TaskResult | None, passed: bool) -> Path:
        """Stage package: report.md and manifest.json, then the directory renamed into place."""
        config, profile = self.loaded.config, self.profile
        onnx_section = None
        if self.flavour is not None:
            onnx_format = next(f for f in in_registry_order(self.formats) if f.flavour == self.flavour.name)
            onnx_section = {"file": graphs[onnx_format.name], "opset": self.cfg.opset, "flavour": self.flavour.name,
                            "optimizer": stages.OPTIMIZER,
                            **self.flavour.lowering_notes(stages.max_tokens(config, profile))}
        records = [*self.clock.records, StageRecord("package", 0.0, (REPORT_FILE, MANIFEST))]
        manifest = Manifest(
            status=PASSED if passed else FAILED,
            command=tuple(self.cfg.command_line) or (sys.argv[0], *sys.argv[1:]),
            created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            packages=package_versions(),
            model=ModelRecord(self.loaded.label, self.loaded.trained, self.loaded.source, self.weights, config),
            precision=PrecisionRecord(self.precision.name, self.precision.summary, dict(built.notes)),
            formats=tuple(self.formats), graphs=graphs, onnx=onnx_section,
            inputs=input_spec(config), outputs=output_spec(config), batch=profile.batch, seq=profile.seq,
            parity={"passed": result.passed, "tolerances": asdict(self.tolerances),
                    "points": [list(p) for p in profile.points()], "worst": asdict(result.worst()),
                    "file": PARITY_FILE},
            task=task.to_dict() if task is not None else UNTRAINED,
            stages=tuple(asdict(r) for r in records))
        self.directory.write_bytes(REPORT_FILE, report.render(manifest, result, records, graph_files).encode())
        return self.directory.finish(manifest)
