"""One frozen recipe per quantized precision, as torchao gives each quantization scheme its own config type:
what a precision's quantization is (range method, block size, AWQ or not, accuracy budget) is decided here
and nowhere else. `build.build_quantized` dispatches on the recipe's type; the export's precision registry
names each quantized precision's recipe, and `mahia-export --calib-method` offers the recipes' methods.

Adding a quantized precision: a recipe class here (with `from_options`) and its entry in RECIPES, a
handler in build.py, and a `Precision` entry naming the recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from mahia.calibration.data import MIN_CALIBRATION_SAMPLES, CalibrationError
from mahia.calibration.statistics import METHODS_FOR_GRID, MethodConfig


@dataclass(frozen=True)
class CalibrationOptions:
    """Settings every quantized precision shares: how many real samples calibrate, and the per-layer
    sensitivity measurement (`--calib-samples`; the rest are for tests and benchmarks)."""

    samples: int = 512
    batch_size: int = 32
    sensitivity_samples: int = 32  # calibration samples the per-layer errors are measured on ...
    sensitivity_max_len: int = 128  # ... truncated to this many text tokens (each layer costs one ORT pass)
    sensitivity: bool = True  # measure and plot per-layer sensitivity (auto always does)

    def __post_init__(self) -> None:
        if self.samples < MIN_CALIBRATION_SAMPLES:
            raise CalibrationError(f"too few calibration samples: {self.samples}; at least {MIN_CALIBRATION_SAMPLES} "
                                   "are needed for stable ranges (default 512)")


def _no_budget(accuracy_budget: float | None) -> None:
    if accuracy_budget is not None:
        raise CalibrationError("--accuracy-budget applies to --precision auto only")


@dataclass(frozen=True)
class _QdqRecipe:
    """Q/DQ on activations and weights, activation ranges from the eager model by `method`."""

    precision: ClassVar[str]
    grid: ClassVar[str]  # the quantization grid the range search targets (statistics.METHODS_FOR_GRID)
    method: str = "mse"  # chosen by measurement (benchmarks/quantize.py, RESULTS.md)
    percentile: float = 99.99
    num_bins: int = 2048

    def __post_init__(self) -> None:
        self.range_method()  # an unknown method names the valid ones

    @classmethod
    def methods(cls) -> tuple[str, ...]:
        """The `--calib-method` values this recipe takes."""
        return METHODS_FOR_GRID[cls.grid]

    @property
    def calib_method(self) -> str:
        """The `--calib-method` value this recipe stands for."""
        return self.method

    def range_method(self) -> MethodConfig:
        """The activation range method, validated for this recipe's grid."""
        return MethodConfig(self.method, self.percentile, self.num_bins, grid=self.grid)

    @classmethod
    def from_options(cls, method: str | None = None, accuracy_budget: float | None = None) -> _QdqRecipe:
        """The recipe with the user's `--calib-method`; `--accuracy-budget` is refused."""
        _no_budget(accuracy_budget)
        return cls() if method is None else cls(method=method)


@dataclass(frozen=True)
class Int8Recipe(_QdqRecipe):
    """Symmetric signed int8: per-channel weights, per-tensor activations, sensitive ops float."""

    precision: ClassVar[str] = "int8"
    grid: ClassVar[str] = "int8"


@dataclass(frozen=True)
class Fp8Recipe(_QdqRecipe):
    """E4M3FN Q/DQ; weight scales amax / 448 per output channel."""

    precision: ClassVar[str] = "fp8"
    grid: ClassVar[str] = "fp8"


@dataclass(frozen=True)
class Int4Recipe:
    """Weight-only blocked int4 (opset-21 blocked DequantizeLinear): round to nearest, or AWQ scales and clips first."""

    precision: ClassVar[str] = "int4"
    method: str = "rtn"  # "rtn" or "awq": AWQ lowers the logit error but not the task metric (RESULTS.md)
    block_size: int = 128

    def __post_init__(self) -> None:
        if self.method not in self.methods():
            raise CalibrationError(f"int4 is weight-only: its methods are {' and '.join(self.methods())}, not the "
                                   f"activation range method {self.method!r}")

    @classmethod
    def methods(cls) -> tuple[str, ...]:
        """The `--calib-method` values this recipe takes."""
        return ("rtn", "awq")

    @property
    def calib_method(self) -> str:
        """The `--calib-method` value this recipe stands for."""
        return self.method

    @property
    def awq(self) -> bool:
        """Search activation-aware scales and clips before rounding."""
        return self.method == "awq"

    @classmethod
    def from_options(cls, method: str | None = None, accuracy_budget: float | None = None) -> Int4Recipe:
        """The recipe with the user's `--calib-method`; `--accuracy-budget` is refused."""
        _no_budget(accuracy_budget)
        return cls() if method is None else cls(method=method)


@dataclass(frozen=True)
class AutoRecipe:
    """Mixed int8/fp32: int8 Q/DQ by `base`, the most sensitive layers kept fp32 until the relative logit error
    on the calibration samples is within `budget` (default: half the int8 parity budget)."""

    precision: ClassVar[str] = "auto"
    base: Int8Recipe = field(default_factory=Int8Recipe)
    budget: float = 0.05

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise CalibrationError(f"accuracy budget must be > 0 (a relative logit error), got {self.budget}")

    @classmethod
    def methods(cls) -> tuple[str, ...]:
        """The `--calib-method` values this recipe takes (its base's)."""
        return Int8Recipe.methods()

    @property
    def calib_method(self) -> str:
        """The `--calib-method` value this recipe stands for (its base's range method)."""
        return self.base.method

    @classmethod
    def from_options(cls, method: str | None = None, accuracy_budget: float | None = None) -> AutoRecipe:
        """The recipe with the user's `--calib-method` (for the int8 base) and `--accuracy-budget`."""
        base = Int8Recipe.from_options(method)
        return cls(base) if accuracy_budget is None else cls(base, accuracy_budget)


Recipe = Int8Recipe | Fp8Recipe | Int4Recipe | AutoRecipe
RecipeType = type[Int8Recipe] | type[Fp8Recipe] | type[Int4Recipe] | type[AutoRecipe]
RECIPES: Mapping[str, RecipeType] = MappingProxyType({r.precision: r for r in (Int8Recipe, Fp8Recipe, Int4Recipe,
                                                                                AutoRecipe)})


def method_choices() -> tuple[str, ...]:
    """Every recipe's `--calib-method` values, each once, in recipe order."""
    return tuple(dict.fromkeys(m for recipe in RECIPES.values() for m in recipe.methods()))


def methods_help() -> str:
    """`--calib-method`'s help: each recipe's methods and its default."""
    return "; ".join(f"{name}: {', '.join(r.methods())} (default {r.from_options().calib_method})"
                     for name, r in RECIPES.items())
