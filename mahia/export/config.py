"""Export configuration: one frozen dataclass per concern (shape profile, tolerances, the export itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mahia.artifact import DimRange
from mahia.calibration.recipes import CalibrationOptions, Recipe
from mahia.model import ModelSource

# The odd shape point every parity run includes (clamped into the profile): batch 3 x sequence 37.
ODD_POINT = (3, 37)
DEFAULT_BATCH = (1, 8, 16)
DEFAULT_SEQ = (1, 128, 512)


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
        return TaskBudget(default.max_accuracy_drop_pt if self.max_accuracy_drop_pt is None
                          else self.max_accuracy_drop_pt,
                          default.min_agreement if self.min_agreement is None else self.min_agreement)


@dataclass(frozen=True)
class ExportConfig:
    """Everything one `mahia-export` run needs; the CLI builds it, the pipeline only reads it."""

    source: ModelSource
    precision: str
    formats: tuple[str, ...]
    expected_config: str | None = None  # a checkpoint source must have this named config (--config with --checkpoint)
    batch: DimRange = DimRange("batch", *DEFAULT_BATCH)
    seq: DimRange | None = None  # None: 1:128:min(max_seq_len, 512), known once the model is loaded
    atol: float | None = None  # None: the precision's budget
    rtol: float | None = None
    max_rel_error: float | None = None  # None: the precision's budget
    out_dir: Path = Path("artifacts")
    opset: int = 21
    command_line: tuple[str, ...] = field(default_factory=tuple)
    recipe: Recipe | None = None  # quantized precisions: None means the precision's default recipe
    calibration: CalibrationOptions | None = None  # quantized precisions: None means the defaults
    task: TaskCheckConfig = TaskCheckConfig()  # the test-split accuracy check of trained models
