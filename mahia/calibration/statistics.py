"""Range statistics of one tensor stream: max, percentile, entropy (KL) and MSE amax.

Which library does what:
- percentile and entropy: ONNX Runtime's `HistogramCollector` (onnxruntime.quantization.calibrate),
  fed with the values captured from the eager model. Its entropy search is TensorRT's KL method
  (reference histogram vs. 128 quantized bins) on a signed histogram; we pass the bin count ourselves.
- max: a running absolute maximum (a one-liner; no library needed).
- mse: written here, on the same absolute-value histogram the percentile method uses: for each
  candidate amax, the expected clipping plus rounding error on the target grid (int8, or float8
  E4M3FN with its exponent-dependent step), as pytorch-quantization's and ModelOpt's MSE
  calibrators minimise. ONNX Runtime has no MSE calibrator, and torch.ao's HistogramObserver
  searches an asymmetric range with its own L2 proxy.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from onnxruntime.quantization.calibrate import HistogramCollector

from mahia.calibration.data import CalibrationError

METHODS = ("max", "percentile", "entropy", "mse")
INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0
# Quantization grid each method's search targets: entropy is an int8 notion (128 uniform bins).
METHODS_FOR_GRID = {"int8": METHODS, "fp8": ("max", "percentile", "mse")}


@dataclass(frozen=True)
class MethodConfig:
    """How to turn a histogram into an amax."""

    method: str = "max"
    percentile: float = 99.99
    num_bins: int = 2048
    num_quantized_bins: int = 128
    grid: str = "int8"  # the target grid for "mse" and the validity check: "int8" or "fp8"

    def __post_init__(self) -> None:
        if self.grid not in METHODS_FOR_GRID:
            raise CalibrationError(f"unknown quantization grid {self.grid!r}; expected int8 or fp8")
        if self.method not in METHODS_FOR_GRID[self.grid]:
            raise CalibrationError(f"calibration method {self.method!r} is not available for {self.grid}; "
                                   f"expected one of {', '.join(METHODS_FOR_GRID[self.grid])}")
        if not 0.0 < self.percentile <= 100.0:
            raise CalibrationError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.num_bins < 2 * self.num_quantized_bins:
            raise CalibrationError(f"num_bins ({self.num_bins}) must be at least twice num_quantized_bins "
                                   f"({self.num_quantized_bins})")


class RangeStatistics:
    """Accumulates the values of many named tensors, then gives each one's amax for any method."""

    def __init__(self, methods: tuple[str, ...], num_bins: int = 2048, num_quantized_bins: int = 128) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise CalibrationError(f"unknown calibration method(s) {unknown}; expected some of {', '.join(METHODS)}")
        self.methods = tuple(methods)
        self.abs_max: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        needs_abs = any(m in ("percentile", "mse") for m in methods)
        # The collector's percentile argument is only read at compute time; we set it per query.
        self._abs = HistogramCollector("percentile", True, num_bins, num_quantized_bins, 100.0, "same") \
            if needs_abs else None
        self._signed = HistogramCollector("entropy", True, num_bins, num_quantized_bins, 100.0, "same") \
            if "entropy" in methods else None
        self._percentiles: dict[float, dict] = {}

    def add(self, name: str, values: np.ndarray) -> None:
        """Add one batch of values (any shape, float32) of tensor `name`."""
        flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        if flat.size == 0:
            return
        if not np.isfinite(flat).all():
            raise CalibrationError(f"tensor {name!r} has non-finite values on the calibration data")
        self._percentiles.clear()
        self.abs_max[name] = max(self.abs_max.get(name, 0.0), float(np.abs(flat).max()))
        self.counts[name] = self.counts.get(name, 0) + flat.size
        with contextlib.redirect_stdout(io.StringIO()):  # the collectors print progress lines
            if self._abs is not None:
                self._abs.collect({name: flat})
            if self._signed is not None:
                self._signed.collect({name: flat})

    def names(self) -> list[str]:
        """Every tensor seen, in first-seen order."""
        return list(self.abs_max)

    def amax(self, name: str, config: MethodConfig) -> float:
        """The amax of tensor `name` under `config` (never above the observed absolute maximum)."""
        if config.method not in self.methods:
            raise CalibrationError(f"method {config.method!r} was not collected (collected: {', '.join(self.methods)})")
        observed = self.abs_max[name]
        if config.method == "max" or observed == 0.0:
            return observed
        if config.method == "entropy":
            collector = self._signed
            lo, hi = collector.get_entropy_threshold(collector.histogram_dict[name], config.num_quantized_bins)
            return min(float(max(abs(lo), abs(hi))), observed)
        if config.method == "percentile":
            if config.percentile not in self._percentiles:
                self._abs.percentile = config.percentile
                with contextlib.redirect_stdout(io.StringIO()):
                    self._percentiles[config.percentile] = self._abs.compute_percentile()
            return min(float(self._percentiles[config.percentile][name][1]), observed)
        hist, edges = self._abs.histogram_dict[name][:2]
        return min(mse_amax(hist, edges, config.grid), observed)


def _rounding_step(values: np.ndarray, amax: np.ndarray, grid: str) -> np.ndarray:
    """Spacing of the quantization grid around each value (|values| <= amax), in real units."""
    if grid == "int8":
        return np.broadcast_to(amax / INT8_MAX, np.broadcast_shapes(values.shape, np.shape(amax)))
    scale = amax / FP8_E4M3_MAX
    # E4M3FN: 3 mantissa bits; exponents below -6 are subnormal with the fixed spacing 2^-9.
    exponent = np.floor(np.log2(np.maximum(values / scale, 2.0 ** -6)))
    return 2.0 ** (exponent - 3) * scale


def mse_amax(hist: np.ndarray, edges: np.ndarray, grid: str, candidates: int = 512) -> float:
    """The amax minimising the expected squared quantization error of |x| given its histogram.

    Per bin (at its centre c): clipping error (c - amax)^2 above amax, and below it the rounding error
    of a uniform quantizer, step^2 / 12, with the grid's local step (constant for int8, growing with
    the exponent for E4M3FN). Modelling rounding rather than fake-quantizing bin centres keeps the
    estimate valid when a bin is wider than a quantization step.
    """
    centres = 0.5 * (edges[:-1] + edges[1:]).astype(np.float64)
    counts = hist.astype(np.float64)
    top = float(edges[-1])
    trial = np.linspace(top / candidates, top, candidates)
    errors = []
    for block in np.array_split(trial, max(1, candidates // 64)):  # 64 candidates x bins at a time
        amax = block[:, None]
        inside = centres[None, :] <= amax
        clip = np.where(inside, 0.0, (centres[None, :] - amax) ** 2)
        step = _rounding_step(np.minimum(centres[None, :], amax), amax, grid)
        errors.append(((np.where(inside, step ** 2 / 12.0, 0.0) + clip) * counts[None, :]).sum(axis=1))
    return float(trial[int(np.argmin(np.concatenate(errors)))])
