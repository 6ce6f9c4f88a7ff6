"""Export configuration: one frozen dataclass per concern (shape profile, tolerances, the export itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The odd shape point every parity run includes (clamped into the profile): batch 3 x sequence 37.
ODD_POINT = (3, 37)
DEFAULT_BATCH = (1, 8, 16)
DEFAULT_SEQ = (1, 128, 512)


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
    def parse(cls, name: str, text: str) -> "DimRange":
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

    def to_dict(self) -> dict[str, int]:
        """{'min': .., 'opt': .., 'max': ..} for the manifest."""
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class ShapeProfile:
    """Dynamic batch and sequence ranges of the exported graphs; parity runs at its points."""

    batch: DimRange
    seq: DimRange

    def points(self) -> tuple[tuple[int, int], ...]:
        """(batch, seq) parity points: min, opt, max and the odd point (clamped), without repeats."""
        odd = (self.batch.clamp(ODD_POINT[0]), self.seq.clamp(ODD_POINT[1]))
        points = [(self.batch.min, self.seq.min), (self.batch.opt, self.seq.opt), (self.batch.max, self.seq.max), odd]
        return tuple(dict.fromkeys(points))

    def example_point(self) -> tuple[int, int]:
        """A shape to trace with: neither dimension 0/1 (torch.export would specialise it), within range."""
        return self.batch.clamp(max(2, min(self.batch.opt, 4))), self.seq.clamp(max(2, min(self.seq.opt, 32)))


@dataclass(frozen=True)
class Tolerances:
    """Parity budget: per element |out - ref| <= atol or |out - ref| / |ref| <= rtol (Polygraphy's
    elemwise check), and ||out - ref|| / ||ref|| <= max_rel_error for every output at every shape point.
    """

    atol: float
    rtol: float
    max_rel_error: float

    def __post_init__(self) -> None:
        for name in ("atol", "rtol", "max_rel_error"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"tolerance {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class TaskBudget:
    """What a precision may lose on the task: accuracy drop (points) and the least argmax agreement."""

    max_accuracy_drop_pt: float
    min_agreement: float

    def __post_init__(self) -> None:
        if not self.max_accuracy_drop_pt >= 0 or not 0 <= self.min_agreement <= 1:
            raise ValueError(f"task budget {self}: the drop must be >= 0 points and the agreement in [0, 1]")


@dataclass(frozen=True)
class TaskCheckConfig:
    """How the task check runs: how many test rows (None: the whole split) and the user's budget overrides."""

    rows: int | None = None
    max_accuracy_drop_pt: float | None = None
    min_agreement: float | None = None

    def budget(self, default: TaskBudget) -> TaskBudget:
        """The precision's budget with this run's overrides."""
        return TaskBudget(default.max_accuracy_drop_pt if self.max_accuracy_drop_pt is None else self.max_accuracy_drop_pt,
                          default.min_agreement if self.min_agreement is None else self.min_agreement)


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: a named config (seeded weights), a checkpoint, or the embedded default."""

    config_name: str | None = None
    checkpoint: Path | None = None
    seed: int = 0

    def describe(self) -> str:
        """Human-readable origin."""
        if self.checkpoint is not None:
            return f"checkpoint {self.checkpoint}"
        if self.config_name is not None:
            return f"config {self.config_name!r}, seed {self.seed}"
        return "embedded default"


@dataclass(frozen=True)
class ExportConfig:
    """Everything one `mahia-export` run needs; the CLI builds it, the pipeline only reads it."""

    source: ModelSource
    precision: str
    formats: tuple[str, ...]
    batch: DimRange = DimRange("batch", *DEFAULT_BATCH)
    seq: DimRange | None = None  # None: 1:128:min(max_seq_len, 512), known once the model is loaded
    atol: float | None = None  # None: the precision's budget
    rtol: float | None = None
    out_dir: Path = Path("artifacts")
    opset: int = 21
    flavour: str = "portable"
    command_line: tuple[str, ...] = field(default_factory=tuple)
    calibration: object | None = None  # mahia.calibration.build.CalibrationOptions (quantized precisions)
    task: TaskCheckConfig = TaskCheckConfig()  # the test-split accuracy check of trained models
