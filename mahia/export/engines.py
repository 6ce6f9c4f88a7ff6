"""Engines of the TensorRT-flavour graph: TensorRT-RTX's parse + build (runs here, on the CPU) and TensorRT 11's
(guarded: needs `tensorrt` >= 10.9, which these machines cannot install; never stood in for).

- `rtx_check`: TensorRT-RTX 1.7 parses the saved graph with every plugin registered (mahia.plugins_trt.rtx's
  adapters: shapes and dtypes from the plugin specs), checks that every plugin node became a PLUGIN_V3 layer and
  builds an engine for sm_80/86/89/120 (sm_89/120 for FP8 graphs) with the export's profile: the parser-coverage
  check. The engine is
  written as `model.<precision>.rtx.engine` when the rtx-engine format is asked for; it is built, never run here
  (no GPU; RTX engines do not run on the H200 either).
- `build_tensorrt_engine`: TensorRT 11's engine through Polygraphy: the QDP plugins registered
  (mahia.plugins_trt.qdp), a strongly typed network from the ONNX file, one optimization profile (min/opt/max),
  the timing cache loaded and saved, a builder optimization level; never a precision flag (TensorRT 11 has none:
  the graph's dtypes and Q/DQ decide).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mahia.export.config import ShapeProfile
from mahia.export.errors import MissingPackageError
from mahia.model import ModelConfig
from mahia.model.inputs import input_spec

Shapes = Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]
TENSORRT_PACKAGE = "tensorrt>=10.9 (NVIDIA's TensorRT with its libnvinfer; module tensorrt.plugin with AOT plugins)"
BUILDER_OPTIMIZATION_LEVEL = 3  # TensorRT's default: the level's time/quality trade-off is the user's to change


def profile_shapes(config: ModelConfig, profile: ShapeProfile) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """Every graph input's (min, opt, max) shape from the export's batch and sequence ranges."""
    def at(dims: Sequence[object], batch: int, seq: int) -> list[int]:
        return [batch if d == "batch" else seq if d == "seq" else int(d) for d in dims]

    b, s = profile.batch, profile.seq
    return {name: (at(spec["shape"], b.min, s.min), at(spec["shape"], b.opt, s.opt), at(spec["shape"], b.max, s.max))
            for name, spec in input_spec(config).items()}


def compute_capabilities(onnx_path: Path) -> tuple[str, ...]:
    """The RTX build targets of a graph: sm_80/86/89/120, or sm_89/120 for a graph holding FP8 tensors (TensorRT-RTX
    1.7 refuses the others: "Cannot compile for target(s) sm80, sm86, because the model contains HW-specific
    datatypes: fp8_e4m3", measured on the default model's fp8 graph)."""
    import onnx

    from mahia.plugins_trt.rtx import COMPUTE_CAPABILITIES

    model = onnx.load(str(onnx_path), load_external_data=False)
    fp8 = onnx.TensorProto.FLOAT8E4M3FN
    if any(i.data_type == fp8 for i in model.graph.initializer):
        return tuple(c for c in COMPUTE_CAPABILITIES if c not in ("SM80", "SM86"))
    return COMPUTE_CAPABILITIES


def rtx_check(onnx_path: Path, shapes: Shapes, engine_path: Path | None = None) -> dict[str, object]:
    """TensorRT-RTX's parse, plugin coverage and CPU build of the graph (the engine written when a path is given)
    for its compute capabilities, as the manifest records it: ok, summary, parsed, built, plugin layers, engine
    bytes, failures, seconds."""
    from importlib import metadata

    from mahia.plugins_trt.rtx import build_with_rtx

    report = build_with_rtx(onnx_path, shapes, engine_path, compute_capabilities(onnx_path))
    return {"ok": report.ok, "summary": report.summary(), "parsed": report.parsed, "built": report.built,
            "plugin_layers": len(report.plugin_layers), "engine_bytes": report.engine_bytes,
            "failures": [str(f) for f in report.failures], "errors": list(report.errors[-5:]),
            "compute_capabilities": list(report.compute_capabilities), "seconds": round(report.seconds, 2),
            "tensorrt_rtx": metadata.version("tensorrt_rtx_cu13_bindings"),
            "engine": engine_path.name if engine_path and report.built else None,
            "engine_status": "built, not run here" if engine_path and report.built else None}


def require_tensorrt() -> object:
    """The `tensorrt` module (>= 10.9 with AOT plugins), or MissingPackageError: one line naming the package."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:  # the package, or its libnvinfer
        raise MissingPackageError(f"the engine format needs {TENSORRT_PACKAGE}: {exc}") from None
    if not hasattr(trt, "QuickPluginCreationRequest"):  # tensorrt/plugin/_export.py: AOT plugins from 10.9
        raise MissingPackageError(f"the engine format needs {TENSORRT_PACKAGE}; found tensorrt "
                                  f"{getattr(trt, '__version__', '?')}")
    return trt


def build_tensorrt_engine(onnx_path: Path, shapes: Shapes, timing_cache: Path,
                          optimization_level: int = BUILDER_OPTIMIZATION_LEVEL) -> tuple[bytes, bytes, dict]:
    """(engine bytes, timing cache bytes, notes) of TensorRT's strongly typed engine of the graph, built with the
    plugins registered; `timing_cache` is loaded if it exists (a missing one starts empty). Needs TensorRT."""
    trt = require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    import mahia.plugins_trt.qdp  # noqa: F401  (registers every plugin as an AOT QDP before the parser runs)

    profile = Profile()
    for name, (low, opt, high) in shapes.items():
        profile.add(name, tuple(low), tuple(opt), tuple(high))
    start = time.perf_counter()
    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)
    saved = timing_cache.with_name(f".{timing_cache.name}.saved")
    config = CreateConfig(profiles=[profile], load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
                          builder_optimization_level=optimization_level)
    engine = engine_bytes_from_network(network, config=config, save_timing_cache=str(saved))
    cache = saved.read_bytes()
    saved.unlink()
    return bytes(engine), cache, {"tensorrt": trt.__version__, "builder_optimization_level": optimization_level,
                                  "seconds": round(time.perf_counter() - start, 2), "strongly_typed": True}


def tensorrt_commands(trt_file: str, engine_file: str, timing_cache: str, shapes: Shapes, atol: float,
                      rtol: float) -> list[str]:
    """What a user runs, in the artifact directory on a machine with TensorRT >= 10.9, a GPU and mahia installed,
    to build the engine from this artifact's TensorRT graph (Polygraphy's Python API: `polygraphy convert
    --plugins` loads shared libraries only, and the plugins are Python QDPs) and to compare it with the eager
    outputs the export saved (an AOT-plugin engine needs no Python plugins to run)."""
    profile = "".join(f".add({name!r}, {tuple(low)}, {tuple(opt)}, {tuple(high)})"
                      for name, (low, opt, high) in shapes.items())
    build = "\n".join([
        "python - <<'EOF'",
        "import mahia.plugins_trt.qdp  # registers every plugin as an AOT QDP (TensorRT >= 10.9)",
        "from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path",
        f"network = network_from_onnx_path({trt_file!r}, strongly_typed=True)",
        f"config = CreateConfig(profiles=[Profile(){profile}], load_timing_cache={timing_cache!r}, "
        f"builder_optimization_level={BUILDER_OPTIMIZATION_LEVEL})",
        f"engine = engine_bytes_from_network(network, config=config, save_timing_cache={timing_cache!r})",
        f"open({engine_file!r}, 'wb').write(engine)",
        "EOF"])
    compare = (f"polygraphy run {engine_file} --model-type engine --trt --load-inputs inputs.json --load-outputs "
               f"eager_outputs.json --atol {atol!r} --rtol {rtol!r}")
    return [build, compare]
