"""manifest.json, the contract between building an artifact and deploying it: a typed, frozen `Manifest`,
the file names every artifact directory uses, and reading and verifying a directory in one place.

Schema history: 2 recorded the model source as prose ("checkpoint <path>", "config tiny" with the seed
in the label); 3 records it as data (`mahia.model.ModelSource.to_dict`) and adds "graphs", the file of
each format, so that a runtime backend finds its file without knowing how the exporter names it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mahia.artifact.files import sha256_file
from mahia.model import ModelConfig, ModelSource

SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
FAILED_SUFFIX = ".failed"
# Files every artifact has beside its graphs (Polygraphy's own formats for the first two).
INPUTS_FILE, EAGER_FILE, PARITY_FILE, REPORT_FILE = "inputs.json", "eager_outputs.json", "parity.json", "report.md"
PASSED, FAILED = "passed", "failed"


class ArtifactIntegrityError(RuntimeError):
    """An artifact directory that must not be loaded: tampered, missing or unverified files, or a manifest
    this version cannot read; the message names the file or field."""


@dataclass(frozen=True)
class DimRange:
    """One dynamic dimension's range: min <= opt <= max, all >= 1."""

    name: str
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if min(self.min, self.opt, self.max) < 1:
            raise ValueError(f"{self.name} range {self}: every value must be >= 1")
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"{self.name} range {self.min}:{self.opt}:{self.max}: expected min <= opt <= max")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @classmethod
    def parse(cls, name: str, text: str) -> DimRange:
        """Parse 'MIN:OPT:MAX' (integers), or raise ValueError saying what is wrong."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"{name} range {text!r}: expected MIN:OPT:MAX, e.g. 1:8:16")
        values = []
        for part in parts:
            try:
                values.append(int(part))
            except ValueError:
                raise ValueError(f"{name} range {text!r}: {part!r} is not an integer") from None
        return cls(name, *values)

    def clamp(self, value: int) -> int:
        """value moved into [min, max]."""
        return max(self.min, min(self.max, value))

    def contains(self, value: int) -> bool:
        """min <= value <= max."""
        return self.min <= value <= self.max

    def to_dict(self) -> dict[str, int]:
        """{'min': .., 'opt': .., 'max': ..} for the manifest."""
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class FileRecord:
    """One file of the directory as the manifest records it."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class ModelRecord:
    """The eager model the artifact was built from."""

    label: str
    trained: bool
    source: ModelSource
    weights_sha256: str
    config: ModelConfig


@dataclass(frozen=True)
class PrecisionRecord:
    """The deployed precision, in words, with its build's notes (kept fp32 ops, calibration, ...)."""

    name: str
    summary: str
    notes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Everything manifest.json says. Sub-documents only the exporter's report reads (parity, task, stages,
    packages, the ONNX section) stay JSON mappings; what a deployment relies on is typed."""

    status: str  # PASSED or FAILED
    command: tuple[str, ...]
    created_utc: str
    packages: Mapping[str, str]
    model: ModelRecord
    precision: PrecisionRecord
    formats: tuple[str, ...]
    graphs: Mapping[str, str]  # format -> its file (the first file for a graph with external data)
    onnx: Mapping[str, Any] | None  # file, opset, flavour, optimizer and lowering notes; None without ONNX
    inputs: Mapping[str, Mapping[str, Any]]  # name -> {"dtype", "shape"} ("batch"/"seq" for dynamic dims)
    outputs: Mapping[str, Mapping[str, Any]]
    batch: DimRange
    seq: DimRange
    parity: Mapping[str, Any]
    task: Mapping[str, Any]
    stages: tuple[Mapping[str, Any], ...]
    files: Mapping[str, FileRecord] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # The TensorRT graph (when written): its lowering, what each plugin receives, the TensorRT-RTX parse + build,
    # its task check and the engine; None otherwise (an optional key: manifests without it read the same)
    tensorrt: Mapping[str, Any] | None = None

    @property
    def passed(self) -> bool:
        """Parity (and the task check, where it ran) passed."""
        return self.status == PASSED

    def graph_file(self, fmt: str) -> str:
        """The file holding format `fmt`, or a ValueError naming the formats there are."""
        if fmt not in self.graphs:
            raise ValueError(f"the artifact has no {fmt} graph (formats: {', '.join(self.formats)})")
        return self.graphs[fmt]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document."""
        return {
            "schema_version": self.schema_version, "status": self.status, "command": list(self.command),
            "created_utc": self.created_utc, "packages": dict(self.packages),
            "model": {"label": self.model.label, "trained": self.model.trained, "source": self.model.source.to_dict(),
                      "weights_sha256": self.model.weights_sha256, "config": json.loads(self.model.config.to_json())},
            "precision": {"name": self.precision.name, "summary": self.precision.summary,
                          "notes": dict(self.precision.notes)},
            "formats": list(self.formats), "graphs": dict(self.graphs),
            "onnx": None if self.onnx is None else dict(self.onnx),
            "inputs": {k: dict(v) for k, v in self.inputs.items()},
            "outputs": {k: dict(v) for k, v in self.outputs.items()},
            "dims": {"batch": self.batch.to_dict(), "seq": self.seq.to_dict()},
            "parity": dict(self.parity), "task": dict(self.task), "stages": [dict(s) for s in self.stages],
            "files": {name: {"sha256": r.sha256, "bytes": r.bytes} for name, r in self.files.items()},
            **({"tensorrt": dict(self.tensorrt)} if self.tensorrt is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = MANIFEST) -> Manifest:
        """Parse a manifest document of this schema version; ArtifactIntegrityError names what does not fit."""
        if not isinstance(data, Mapping):
            raise ArtifactIntegrityError(f"{where} is not a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactIntegrityError(f"{where} has schema_version {version!r}; this mahia reads {SCHEMA_VERSION}: "
                                         "re-export the artifact")
        key = "?"
        try:
            key = "model"
            model = data["model"]
            record = ModelRecord(str(model["label"]), bool(model["trained"]), ModelSource.from_dict(model["source"]),
                                 str(model["weights_sha256"]), ModelConfig.from_json(json.dumps(model["config"])))
            key = "precision"
            precision = PrecisionRecord(data["precision"]["name"], data["precision"]["summary"],
                                        data["precision"].get("notes", {}))
            key = "dims"
            batch, seq = (DimRange(dim, **data["dims"][dim]) for dim in ("batch", "seq"))
            key = "files"
            files = {str(name): FileRecord(str(r["sha256"]), int(r["bytes"])) for name, r in data["files"].items()}
            key = "status"
            if data["status"] not in (PASSED, FAILED):
                raise ValueError(f"expected {PASSED!r} or {FAILED!r}, got {data['status']!r}")
            key = "formats"
            formats, graphs = tuple(data["formats"]), dict(data["graphs"])
            if set(formats) != set(graphs):
                raise ValueError(f"formats {list(formats)} and graphs {sorted(graphs)} differ")
            key = "command"
            return cls(status=data["status"], command=tuple(data["command"]), created_utc=data["created_utc"],
                       packages=data["packages"], model=record, precision=precision, formats=formats, graphs=graphs,
                       onnx=data["onnx"], inputs=data["inputs"], outputs=data["outputs"], batch=batch, seq=seq,
                       parity=data["parity"], task=data["task"], stages=tuple(data["stages"]), files=files,
                       tensorrt=data.get("tensorrt"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactIntegrityError(f"{where}: field {key!r} is missing or malformed ({exc!r})") from None


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of an artifact directory, parsed (files not verified: see `open_artifact`)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactIntegrityError(f"not an artifact directory (no manifest.json): {path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactIntegrityError(f"{path} is not valid JSON: {exc}") from None
    return Manifest.from_dict(data, str(path))


def verify_files(directory: str | Path, files: Mapping[str, FileRecord]) -> None:
    """Raise ArtifactIntegrityError naming the first listed file that lies outside the directory, is missing, or
    whose size or sha256 differs from its record in the manifest."""
    directory = Path(directory)
    if not files:
        raise ArtifactIntegrityError(f"{directory / MANIFEST} lists no files")
    for name, record in sorted(files.items()):
        if Path(name).name != name or name in ("", ".", ".."):
            raise ArtifactIntegrityError(f"{MANIFEST} lists a file outside the directory: {name!r}")
        path = directory / name
        if not path.is_file():
            raise ArtifactIntegrityError(f"artifact file missing: {path}")
        if path.stat().st_size != record.bytes or sha256_file(path) != record.sha256:
            raise ArtifactIntegrityError(f"artifact file {path} does not match its sha256 in {MANIFEST}: "
                                         "it was modified after export; refusing to load it")


def open_artifact(directory: str | Path, allow_failed: bool = False) -> Manifest:
    """Read the manifest and verify every file against it; a failed artifact only with `allow_failed`."""
    manifest = read_manifest(directory)
    verify_files(directory, manifest.files)
    if not manifest.passed and not allow_failed:
        raise ArtifactIntegrityError(f"{directory} failed its parity check (status {manifest.status!r}); "
                                     "pass allow_failed=True to load it for debugging")
    return manifest
