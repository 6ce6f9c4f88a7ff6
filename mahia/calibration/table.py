"""Calibration tables: `calibration.json` (every range with its provenance) and the TensorRT
calibration cache (`calib.cache`), with readers that check what they read.

The cache is TensorRT's text format: a header line `TRT-<version>-EntropyCalibration2`, then one
`<tensor name>: <scale>` line per tensor, the scale a big-endian IEEE float32 written as 8 hex digits
(scale = amax / 127). No installable tool writes it without TensorRT, so it is written here;
`polygraphy convert --int8 --calibration-cache calib.cache` and ModelOpt's `calibration_cache_path`
read this format.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mahia.calibration.data import CalibrationError
from mahia.calibration.onnx_names import QuantizableNode
from mahia.calibration.ranges import EagerRanges
from mahia.calibration.statistics import FP8_E4M3_MAX, INT8_MAX, MethodConfig

SCHEMA_VERSION = 1
# TensorRT 10.x (NV_TENSORRT_VERSION = major * 10000 + minor * 100 + patch); 11 has no calibrator.
TRT_CACHE_VERSION = 100900
TRT_CACHE_ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")
QMAX = {"int8": INT8_MAX, "float8e4m3fn": FP8_E4M3_MAX}


@dataclass(frozen=True)
class TensorRange:
    """One tensor's calibrated range and its quantization parameters."""

    amax: float
    scale: float
    zero_point: int
    dtype: str  # "int8" or "float8e4m3fn"
    method: str
    percentile: float | None
    samples: int
    data_hash: str
    eager: tuple[str, ...] = ()


@dataclass(frozen=True)
class CalibrationTable:
    """Ranges keyed by ONNX tensor name (`tensors`) plus every eager tensor observed (`eager_tensors`)."""

    dtype: str
    method: str
    samples: int
    data_hash: str
    tensors: dict[str, TensorRange]
    eager_tensors: dict[str, TensorRange] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)  # ONNX activation tensor -> layer (module path)
    nodes: dict[str, str] = field(default_factory=dict)  # ONNX node to quantize -> its layer

    def scale(self, name: str) -> float:
        """The scale of one ONNX tensor, or an error listing what the table holds."""
        if name not in self.tensors:
            raise CalibrationError(f"calibration table has no tensor {name!r}; it has {sorted(self.tensors)}")
        return self.tensors[name].scale

    def check_covers(self, names: list[str]) -> None:
        """Raise naming every tensor in `names` the table lacks (a table from another model)."""
        missing = [n for n in names if n not in self.tensors]
        if missing:
            raise CalibrationError(f"calibration table lacks {len(missing)} tensor(s) this graph quantizes "
                                   f"(from another model?): {', '.join(missing)}")


def _range(amax: float, dtype: str, config: MethodConfig, ranges: EagerRanges, eager: tuple[str, ...]) -> TensorRange:
    if not math.isfinite(amax) or amax < 0:
        raise CalibrationError(f"invalid amax {amax} for {eager}")
    # A tensor that is identically zero on the data keeps a tiny positive scale (a zero scale is invalid).
    scale = float(np.float32(max(amax, 1e-12) / QMAX[dtype]))
    return TensorRange(float(amax), scale, 0, dtype, config.method,
                       config.percentile if config.method == "percentile" else None,
                       ranges.samples, ranges.data_hash, eager)


def build_table(ranges: EagerRanges, nodes: list[QuantizableNode], config: MethodConfig,
                include_eager: bool = True) -> CalibrationTable:
    """The table for the quantized activations of `nodes` (ONNX names) and (optionally) every eager tensor."""
    dtype = "int8" if config.grid == "int8" else "float8e4m3fn"
    tensors, layers, selected = {}, {}, {}
    for node in nodes:
        if node.keep_float or not node.eager:
            continue
        amax = max(ranges.amax(n, config) for n in node.eager)
        if node.activation in tensors:
            amax = max(amax, tensors[node.activation].amax)
        tensors[node.activation] = _range(amax, dtype, config, ranges, node.eager)
        layers[node.activation] = node.layer
        selected[node.node] = node.layer
    if not selected:
        raise CalibrationError("no quantizable node has an eager range: nothing to calibrate")
    eager = {n: _range(ranges.amax(n, config), dtype, config, ranges, (n,)) for n in ranges.names()} \
        if include_eager else {}
    return CalibrationTable(dtype, config.method, ranges.samples, ranges.data_hash, tensors, eager, layers, selected)


def write_table_json(table: CalibrationTable, path: str | Path) -> Path:
    """Write calibration.json (sorted keys, stable across runs)."""
    path = Path(path)
    payload = {"schema_version": SCHEMA_VERSION, "dtype": table.dtype, "method": table.method,
               "samples": table.samples, "data_hash": table.data_hash,
               "tensors": {k: {**asdict(v), "layer": table.layers.get(k)} for k, v in table.tensors.items()},
               "eager_tensors": {k: asdict(v) for k, v in table.eager_tensors.items()},
               "nodes": table.nodes}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path


def read_table_json(path: str | Path) -> CalibrationTable:
    """Read calibration.json, naming the file and the field on any problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"calibration table {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise CalibrationError(f"calibration table {path}: expected schema_version {SCHEMA_VERSION}")
    try:
        def entries(section: str) -> dict[str, TensorRange]:
            return {k: TensorRange(**{f: (tuple(v[f]) if f == "eager" else v[f])
                                      for f in TensorRange.__dataclass_fields__})
                    for k, v in data[section].items()}
        return CalibrationTable(data["dtype"], data["method"], data["samples"], data["data_hash"],
                                entries("tensors"), entries("eager_tensors"),
                                {k: v["layer"] for k, v in data["tensors"].items() if v.get("layer")},
                                dict(data["nodes"]))
    except (KeyError, TypeError) as exc:
        raise CalibrationError(f"calibration table {path}: missing or malformed field {exc}") from None


def trt_cache_scales(table: CalibrationTable) -> dict[str, float]:
    """TensorRT's int8 scales (amax / 127, as float32) of every ONNX tensor in the table."""
    return {name: float(np.float32(max(entry.amax, 1e-12) / INT8_MAX)) for name, entry in table.tensors.items()}


def scale_to_hex(scale: float) -> str:
    """A scale as TensorRT writes it: big-endian float32, 8 lowercase hex digits."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    """Inverse of scale_to_hex."""
    return struct.unpack(">f", bytes.fromhex(text))[0]


def write_trt_cache(scales: dict[str, float], path: str | Path, version: int = TRT_CACHE_VERSION) -> Path:
    """Write a TensorRT calibration cache: header, then `name: hexscale` lines in sorted name order."""
    path = Path(path)
    bad = [n for n, s in scales.items() if not (math.isfinite(s) and s > 0) or "\n" in n]
    if bad:
        raise CalibrationError(f"cannot write calibration cache {path}: invalid scale or name for {bad}")
    lines = [f"TRT-{version}-{TRT_CACHE_ALGORITHM}"] + [f"{n}: {scale_to_hex(scales[n])}" for n in sorted(scales)]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_trt_cache(path: str | Path) -> tuple[int, str, dict[str, float]]:
    """(TensorRT version, algorithm, {tensor name: scale}) from a calibration cache; errors name the line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration cache {path} is not readable text: {exc}") from None
    if not lines or not (header := _HEADER.match(lines[0].strip())):
        raise CalibrationError(f"calibration cache {path}: line 1 is not a 'TRT-<version>-<algorithm>' header: "
                               f"{lines[0][:80] if lines else '(empty file)'!r}")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        match = _LINE.match(line.rstrip())
        if not match:
            raise CalibrationError(f"calibration cache {path}: line {number} is not '<tensor>: <8 hex digits>': "
                                   f"{line[:80]!r}")
        name, scale = match.group(1), hex_to_scale(match.group(2))
        if name in scales:
            raise CalibrationError(f"calibration cache {path}: tensor {name!r} appears twice (line {number})")
        if not (math.isfinite(scale) and scale > 0):
            raise CalibrationError(f"calibration cache {path}: line {number}: scale of {name!r} is {scale}, "
                                   "not a positive number")
        scales[name] = scale
    return int(header.group(1)), header.group(2), scales
