"""The export pipeline: load -> export -> lower -> build/quantize -> verify -> package, one manifest.

`run_export` chains the stages, times each one, and records them all in manifest.json. Every input
is checked before any heavy work starts; artifacts are written atomically (mahia.artifact).
"""

from __future__ import annotations

import dataclasses
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
from mahia.data import feeds_at_points, load_reviews
from mahia.data.features import FEATURES_FILE, FeatureSpec
from mahia.default import LoadedModel
from mahia.export import engines, parity, report, stages, task_check
from mahia.export.config import ExportConfig, ShapeProfile, Tolerances
from mahia.export.errors import MissingPackageError
from mahia.export.flavours import Flavour, get_flavour
from mahia.export.formats import Format, get_format, in_registry_order
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
    extra_tasks: dict[str, task_check.TaskResult] = field(default_factory=dict)  # task checks of other formats
    rtx: dict[str, dict] = field(default_factory=dict)  # TensorRT-RTX checks of the TensorRT graphs, by file


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


PORTABLE = "portable"


def resolve_formats(precision: Precision, requested: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[Flavour, ...]]:
    """The formats to write (default: the precision's default formats) and the ONNX flavours to lower, in order:
    the portable graph first where a format needs it or a derived flavour of a quantized precision takes its
    quantization from it (mahia.export.trt_graphs)."""
    formats = requested or tuple(f for f in precision.formats if get_format(f).default)
    unsupported = [f for f in formats if f not in precision.formats]
    if unsupported:
        raise ValueError(f"precision {precision.name!r} produces {', '.join(precision.formats)}; "
                         f"cannot write {', '.join(unsupported)}")
    chosen = in_registry_order(formats)
    for fmt in chosen:
        if fmt.engine_of and fmt.engine_of not in formats:
            raise ValueError(f"format {fmt.name} is built from the {fmt.engine_of} graph: add {fmt.engine_of} to "
                             "--formats")
    names = list(dict.fromkeys(fmt.flavour for fmt in chosen if fmt.flavour))
    if precision.recipe is not None and any(get_flavour(n).derive for n in names) and PORTABLE not in names:
        names.insert(0, PORTABLE)
    return formats, tuple(get_flavour(n) for n in sorted(names, key=lambda n: n != PORTABLE))


def check_packages(formats: tuple[str, ...]) -> None:
    """MissingPackageError (one line naming what to install) when a requested format's packages are missing; the
    engine format imports TensorRT to check its version (>= 10.9, AOT plugins)."""
    missing = list(dict.fromkeys(p for fmt in in_registry_order(formats) for p in fmt.missing_packages()))
    if missing:
        raise MissingPackageError(f"--formats {','.join(formats)} needs {'; '.join(missing)}, which is not "
                                  "installed")
    if "engine" in formats:
        engines.require_tensorrt()


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
        self.check_interrupted: Callable[[], None] = lambda: None  # set while signals are turned into interrupts

    def run(self, name: str, fn: Callable[[], Any], products: Callable[[Any], tuple[str, ...]] = lambda r: ()) -> Any:
        """fn(), recorded as stage `name` with the files it produced."""
        self.notify(name, "start", 0.0)
        start = time.perf_counter()
        result = fn()
        self.check_interrupted()
        seconds = time.perf_counter() - start
        self.records.append(StageRecord(name, round(seconds, 3), products(result)))
        self.notify(name, "done", seconds)
        return result


def run_export(cfg: ExportConfig, on_stage: StageCallback | None = None) -> ExportResult:
    """Run every stage for `cfg`; raises on bad input or a failed stage, returns the result otherwise."""
    clock = _StageClock(on_stage)
    precision = get_precision(cfg.precision)
    formats, flavours = resolve_formats(precision, cfg.formats)
    check_packages(formats)
    check_writable(cfg.out_dir)

    loaded, weights = clock.run("load", lambda: _load(cfg))
    profile = stages.resolve_profile(loaded.config, cfg.batch, cfg.seq)
    tolerances = resolve_tolerances(precision, cfg.atol, cfg.rtol, cfg.max_rel_error)
    name = artifact_name(loaded.config, precision, weights, cfg, profile, tolerances)
    sweep_stale(cfg.out_dir)
    directory = ArtifactDir(cfg.out_dir / name)
    try:
        with sigterm_as_interrupt() as clock.check_interrupted:
            return _Run(cfg, precision, formats, flavours, loaded, weights, profile, tolerances, directory, clock).run()
    except BaseException:
        directory.discard()
        raise


def _load(cfg: ExportConfig) -> tuple[LoadedModel, str]:
    loaded = stages.load_model(cfg.source, cfg.expected_config)
    return loaded, weights_sha256(loaded.model)


@dataclass
class _Run:
    """The stages after loading, in order: export, lower (per flavour), build, tensorrt (TensorRT graphs only),
    verify, task, package."""

    cfg: ExportConfig
    precision: Precision
    formats: tuple[str, ...]
    flavours: tuple[Flavour, ...]
    loaded: LoadedModel
    weights: str
    profile: ShapeProfile
    tolerances: Tolerances
    directory: ArtifactDir
    clock: _StageClock
    flavour_notes: dict[str, dict] = field(default_factory=dict)  # derived flavours' build notes

    def run(self) -> ExportResult:
        """Every remaining stage; the directory is renamed into place (or kept failed) at the end."""
        built, graphs, graph_files = self.build(self.export_and_lower())
        rtx: dict[str, dict] = {}
        engine_formats = [f for f in in_registry_order(self.formats) if f.engine_of]
        if any(f.flavour and get_flavour(f.flavour).derive for f in in_registry_order(self.formats)):
            rtx = self.clock.run("tensorrt", lambda: self.tensorrt(graphs, graph_files),
                                 lambda r: tuple(graphs[f.name] for f in engine_formats if f.name in graphs))
        result: parity.ParityResult = self.clock.run("verify", lambda: self.verify(graphs),
                                                     lambda r: (INPUTS_FILE, EAGER_FILE, PARITY_FILE))
        tasks = self.clock.run("task", lambda: self.task_check(graphs)) if self.loaded.trained else {}
        if self.loaded.trained:  # mahia-serve encodes raw reviews with the statistics the model was trained on
            spec = FeatureSpec.from_dataset(load_reviews()["train"])
            self.directory.write_bytes(FEATURES_FILE, spec.to_json().encode())
        task = tasks.pop(self.task_formats()[0].name, None)
        passed = (result.passed and all(t.passed for t in (task, *tasks.values()) if t is not None)
                  and all(r["ok"] for r in rtx.values()))
        final = self.clock.run("package", lambda: self.package(built, graphs, graph_files, result, task, tasks, rtx,
                                                               passed))
        return ExportResult(final, passed, read_manifest(final), result, task, tuple(self.clock.records), tasks, rtx)

    def export_and_lower(self) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
        """Stages export and (for ONNX formats) lower, one stage per flavour ("lower" for the first, then
        "lower-<flavour>"): the fp32 program and the fp32 graph of each flavour."""
        model, config, profile = self.loaded.model, self.loaded.config, self.profile
        program = self.clock.run("export", lambda: stages.export_program(model, profile))
        lowered = {}
        for index, flavour in enumerate(self.flavours):
            lowered[flavour.name] = self.clock.run("lower" if index == 0 else f"lower-{flavour.name}",
                                                   lambda f=flavour: stages.lower_to_onnx(program, config, profile,
                                                                                          self.cfg.opset, f.name))
        return program, lowered

    def build(self, lowered: tuple[torch.export.ExportedProgram, dict[str, Any]]
              ) -> tuple[Built, dict[str, str], list[str]]:
        """The precision's stage (build or quantize): the portable build, each derived flavour's graph made from its
        fp32 graph (and the portable build), all saved in each format, and the extra files."""
        program, graphs_fp32 = lowered
        model, profile, precision = self.loaded.model, self.profile, self.precision

        def export_at(dtype: torch.dtype) -> torch.export.ExportedProgram:
            return program if dtype == torch.float32 else stages.export_program(model, profile, dtype)

        recipe = self.cfg.recipe or (precision.recipe() if precision.recipe else None)
        ctx = BuildContext(model, graphs_fp32.get(PORTABLE), export_at, self.formats, recipe,
                           self.cfg.calibration or CalibrationOptions())

        def build_and_save() -> tuple[Built, dict[str, str], list[str]]:
            portable = ctx.onnx_fp32 is not None or "pt2" in self.formats
            built = precision.build(ctx) if portable else Built()
            derived = {}
            for flavour in self.flavours:
                if flavour.derive is not None:
                    derived[flavour.name], self.flavour_notes[flavour.name] = flavour.derive(
                        precision.name, graphs_fp32[flavour.name], ctx, built if portable else None)
            built = dataclasses.replace(built, flavours=derived)
            graphs, files = {}, []
            for fmt in in_registry_order(self.formats):
                if fmt.save is None:  # an engine: the tensorrt stage builds it
                    continue
                written = fmt.save(built, self.directory, fmt.file_name(precision.name))
                graphs[fmt.name] = written[0]
                files += written
            for name, data in built.files.items():
                self.directory.write_bytes(name, data)
                files.append(name)
            return built, graphs, files

        return self.clock.run(precision.stage_name, build_and_save, lambda r: tuple(r[2]))

    def tensorrt(self, graphs: dict[str, str], graph_files: list[str]) -> dict[str, dict]:
        """Stage tensorrt: TensorRT-RTX parses and builds each TensorRT graph with the plugins registered (writing
        the rtx-engine format), and, with TensorRT installed, the engine format is built (engines.py). Adds the
        engines to `graphs` and `graph_files`; returns the RTX reports by graph file."""
        shapes = engines.profile_shapes(self.loaded.config, self.profile)
        name = self.precision.name
        reports = {}
        for fmt in in_registry_order(self.formats):
            if not (fmt.flavour and get_flavour(fmt.flavour).derive):
                continue
            engine = get_format("rtx-engine") if "rtx-engine" in self.formats else None
            target = self.directory.path / engine.file_name(name) if engine else None
            reports[graphs[fmt.name]] = report_ = engines.rtx_check(self.directory.path / graphs[fmt.name], shapes,
                                                                    target)
            if engine and report_["built"]:
                graphs[engine.name] = engine.file_name(name)
                graph_files.append(engine.file_name(name))
        if "engine" in self.formats:
            fmt = get_format("engine")
            cache = f"model.{name}.timing.cache"
            blob, timing, notes = engines.build_tensorrt_engine(self.directory.path / graphs["trt"], shapes,
                                                                self.directory.path / cache)
            self.directory.write_bytes(fmt.file_name(name), blob)
            self.directory.write_bytes(cache, timing)
            graphs[fmt.name] = fmt.file_name(name)
            graph_files += [fmt.file_name(name), cache]
            self.flavour_notes.setdefault("engine", {}).update(notes, timing_cache=cache)
        return reports

    def task_formats(self) -> list[Format]:
        """The formats the task check runs: the first (what the artifact deploys by default), and every
        task-checked format with a graph here."""
        chosen = [f for f in in_registry_order(self.formats) if f.save is not None]
        return chosen[:1] + [f for f in chosen[1:] if f.task_checked]

    def verify(self, graphs: dict[str, str]) -> parity.ParityResult:
        """Stage verify: every graph on each of its verify backends against eager fp32, at the profile's points."""
        points = self.profile.points()
        feeds = feeds_at_points(self.loaded.config, points)
        reference = parity.eager_outputs(self.loaded.model, feeds)
        parity.save_polygraphy_files(feeds, reference, self.directory.path / INPUTS_FILE,
                                     self.directory.path / EAGER_FILE)
        checked = [parity.Graph(self.directory.path / graphs[fmt.name], get_backend(backend))
                   for fmt in in_registry_order(self.formats) if fmt.name in graphs
                   for backend in fmt.verify_backends()]
        result = parity.compare(checked, input_spec(self.loaded.config), feeds, reference, points, self.tolerances)
        self.directory.write_json(PARITY_FILE, result.to_dict())
        return result

    def task_check(self, graphs: dict[str, str]) -> dict[str, task_check.TaskResult]:
        """Stage task (trained models): the deployed graph (the first format's), and each other task-checked format's
        (the TensorRT graph), against eager on the test split; results by format."""
        return {fmt.name: task_check.check_task(self.loaded.model, self.loaded.text_tokens, fmt.backend,
                                                self.directory.path / graphs[fmt.name], self.profile, self.cfg.task,
                                                self.precision.task_budget)
                for fmt in self.task_formats()}

    def package(self, built: Built, graphs: dict[str, str], graph_files: list[str], result: parity.ParityResult,
                task: task_check.TaskResult | None, tasks: dict[str, task_check.TaskResult], rtx: dict[str, dict],
                passed: bool) -> Path:
        """Stage package: report.md and manifest.json, then the directory renamed into place."""
        config, profile = self.loaded.config, self.profile
        sizes = stages.lowering_sizes(config, profile)
        onnx_section, tensorrt_section = None, None
        for fmt in in_registry_order(self.formats):
            if not fmt.flavour:
                continue
            flavour = get_flavour(fmt.flavour)
            section = {"file": graphs[fmt.name], "opset": self.cfg.opset, "flavour": flavour.name,
                       "optimizer": stages.OPTIMIZER, **flavour.lowering_notes(sizes)}
            if flavour.derive is None and onnx_section is None:
                onnx_section = section
            elif flavour.derive is not None:
                tensorrt_section = {"graph": section, **self.flavour_notes.get(flavour.name, {}),
                                    "rtx": rtx.get(graphs[fmt.name]),
                                    "task": tasks[fmt.name].to_dict() if fmt.name in tasks else None,
                                    "engine": self.engine_record(graphs)}
        if onnx_section is None and tensorrt_section is not None:
            onnx_section = tensorrt_section["graph"]
        records = [*self.clock.records, StageRecord("package", 0.0, (REPORT_FILE, MANIFEST))]
        manifest = Manifest(
            status=PASSED if passed else FAILED,
            command=tuple(self.cfg.command_line) or (sys.argv[0], *sys.argv[1:]),
            created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            packages=package_versions(),
            model=ModelRecord(self.loaded.label, self.loaded.trained, self.loaded.source, self.weights, config),
            precision=PrecisionRecord(self.precision.name, self.precision.summary, dict(built.notes)),
            formats=tuple(self.formats), graphs=graphs, onnx=onnx_section, tensorrt=tensorrt_section,
            inputs=input_spec(config), outputs=output_spec(config), batch=profile.batch, seq=profile.seq,
            parity={"passed": result.passed, "tolerances": asdict(self.tolerances),
                    "points": [list(p) for p in profile.points()], "worst": asdict(result.worst()),
                    "file": PARITY_FILE},
            task=task.to_dict() if task is not None else UNTRAINED,
            stages=tuple(asdict(r) for r in records))
        self.directory.write_bytes(REPORT_FILE, report.render(manifest, result, records, graph_files).encode())
        return self.directory.finish(manifest)

    def engine_record(self, graphs: dict[str, str]) -> dict[str, object]:
        """The TensorRT engine as the manifest records it: built (file, timing cache, TensorRT version), or not built
        here and how to build it."""
        name = self.precision.name
        if "engine" in graphs:
            return {"status": "built", "file": graphs["engine"], **self.flavour_notes.get("engine", {})}
        return {"status": "not built: TensorRT >= 10.9 is not installed here (--formats trt,engine builds it where "
                          "it is)", "file": get_format("engine").file_name(name)}
