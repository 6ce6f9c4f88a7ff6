"""TensorRT-RTX (1.7) as the real ONNX parser and builder of the plugin graphs, on a machine without a GPU.

TensorRT-RTX has no Quickly Deployable Plugins (`tensorrt_rtx.plugin` does not exist in 1.7), so each spec gets
a Python IPluginV3 adapter here: output dtypes from the spec's rule, output shapes from the spec's formulas on
the builder's IExprBuilder (the same formulas as the QDP plugins), LINEAR formats with the spec's dtypes, and a
creator per plugin in namespace "mahia". The adapters serve parse and build only (`enqueue` refuses): an RTX
engine of them cannot run, and RTX engines run on compute capability 8.0, 8.6, 8.9 and 12.x (not the H200).

`build_with_rtx` parses and builds in a CHILD process: the parser dlopens `libtensorrt_rtx.so`, which the wheel
ships only as `libtensorrt_rtx.so.1`, searching LD_LIBRARY_PATH as read at process start (a symlink plus a
preload in-process does not help; without it the process aborts right after the first plugin is created), so the
child starts with LD_LIBRARY_PATH on a temporary directory holding that symlink. An abort becomes a report.
The report names every node the parser rejected and every plugin node that did not become a PLUGIN_V3 layer
(a model-local function of the same name would otherwise be imported silently).

    python -m mahia.plugins_trt.rtx REQUEST.json    (the child; writes the report next to the request)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RTX_PACKAGES = "tensorrt-rtx-cu13-libs==1.7.1.116 and tensorrt-rtx-cu13-bindings==1.7.1.116 (extra `trt-rtx`)"
# Where RTX engines run (an H200, 9.0, is not among them); the default build targets.
COMPUTE_CAPABILITIES = ("SM80", "SM86", "SM89", "SM120")

Shape = Sequence[int]


@dataclass(frozen=True)
class NodeFailure:
    """A node the parse or the coverage check failed: ONNX node index (-1 unknown), name, op_type, reason."""

    node: int
    name: str
    op: str
    error: str

    def __str__(self) -> str:
        return f"node {self.node} {self.name!r} ({self.op}): {self.error}"


@dataclass(frozen=True)
class RtxReport:
    """What TensorRT-RTX made of a graph."""

    parsed: bool
    built: bool
    engine_bytes: int | None
    failures: tuple[NodeFailure, ...]
    plugin_layers: tuple[str, ...]  # node names that became PLUGIN_V3 layers
    errors: tuple[str, ...]  # the builder's error messages, and a crashed child's last output
    seconds: float
    returncode: int
    compute_capabilities: tuple[str, ...] = field(default=COMPUTE_CAPABILITIES)

    @property
    def ok(self) -> bool:
        """Parsed, every plugin node a PLUGIN_V3 layer, and built."""
        return self.parsed and self.built and not self.failures

    def summary(self) -> str:
        """One line (failures named)."""
        if self.ok:
            return (f"TensorRT-RTX parsed and built the graph ({len(self.plugin_layers)} plugin layers, "
                    f"{self.engine_bytes} B engine, {self.seconds:.1f} s)")
        what = "; ".join(map(str, self.failures)) or "; ".join(self.errors[-3:]) or f"exit {self.returncode}"
        stage = "parse" if not self.parsed else "plugin coverage" if self.failures else "build"
        return f"TensorRT-RTX {stage} failed: {what}"


def rtx_available() -> bool:
    """True when the TensorRT-RTX wheels are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("tensorrt_rtx_bindings", "tensorrt_rtx_libs"))


def _libs_dir() -> Path:
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"TensorRT-RTX is not installed: pip install {RTX_PACKAGES}")
    return Path(next(iter(spec.submodule_search_locations)))


def build_with_rtx(onnx_path: str | Path, profile: Mapping[str, tuple[Shape, Shape, Shape]],
                   engine_path: str | Path | None = None,
                   compute_capabilities: Sequence[str] = COMPUTE_CAPABILITIES, timeout: float = 600.0) -> RtxReport:
    """Parse `onnx_path` with every plugin registered, check that each plugin node (domain "mahia") became a
    PLUGIN_V3 layer, and build with `profile` (input name -> (min, opt, max) shape) for the given compute
    capabilities (names of tensorrt_rtx.ComputeCapability); writes the engine to `engine_path` when given (atomic)."""
    libs = _libs_dir()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mahia-rtx-") as work:
        link = Path(work) / "libtensorrt_rtx.so"
        link.symlink_to(libs / "libtensorrt_rtx.so.1")
        request = {"onnx": str(Path(onnx_path).resolve()),
                   "profile": {k: [list(s) for s in v] for k, v in profile.items()},
                   "engine": str(Path(engine_path).resolve()) if engine_path else None,
                   "compute_capabilities": list(compute_capabilities), "report": str(Path(work) / "report.json")}
        (Path(work) / "request.json").write_text(json.dumps(request))
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the mahia package
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [work, os.environ.get("LD_LIBRARY_PATH")])),
                   PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        try:
            proc = subprocess.run([sys.executable, "-m", "mahia.plugins_trt.rtx", str(Path(work) / "request.json")],
                                  env=env, capture_output=True, text=True, timeout=timeout)
            code, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-20:]
        except subprocess.TimeoutExpired:
            code, tail = -9, [f"TensorRT-RTX child did not finish in {timeout:.0f} s"]
        report_file = Path(work) / "report.json"
        if report_file.exists():
            data = json.loads(report_file.read_text())
            failures = tuple(NodeFailure(**f) for f in data.pop("failures"))
            errors = tuple(data.pop("errors")) + (tuple(tail) if code != 0 else ())
            return RtxReport(failures=failures, errors=errors, seconds=time.perf_counter() - start, returncode=code,
                             **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    return RtxReport(False, False, None, (), (), tuple(tail), time.perf_counter() - start, code,
                     tuple(compute_capabilities))


# --- the child ---------------------------------------------------------------------------------------------

def _adapters(trt: object) -> dict[str, object]:
    """A creator per plugin spec (classes built on the imported tensorrt_rtx_bindings module)."""
    import numpy as np

    from mahia.plugins_trt import PLUGINS
    from mahia.plugins_trt.sizes import Backend, Expr, expr_algebra
    from mahia.plugins_trt.specs import (
        DOMAIN,
        DTYPES,
        PLUGIN_VERSION,
        allowed_dtypes,
        bind,
        output_dtypes,
        output_shapes,
    )

    names = {getattr(trt.DataType, d.trt): name for name, d in DTYPES.items()}
    ops = trt.DimensionOperation
    operations = {"add": ops.SUM, "sub": ops.SUB, "mul": ops.PROD, "floordiv": ops.FLOOR_DIV, "cdiv": ops.CEIL_DIV,
                  "max": ops.MAX, "min": ops.MIN}

    class ExprBuilder(Backend):
        def __init__(self, builder: object):
            self.builder = builder

        def binary(self, op: str, a: object, b: object) -> object:
            return self.builder.operation(operations[op], a, b)

        def constant(self, value: int) -> object:
            return self.builder.constant(value)

    class Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, spec: object, attrs: dict[str, int], node: str):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.spec, self.attrs, self.node, self.tactic = spec, attrs, node, 0
            self.plugin_name, self.plugin_namespace, self.plugin_version = spec.name, DOMAIN, PLUGIN_VERSION
            self.num_outputs = len(spec.outputs)

        def get_capability_interface(self, type: object) -> object:
            return self

        def get_output_data_types(self, input_types: list) -> list:
            dtypes = output_dtypes(self.spec, [names[t] for t in input_types])
            return [getattr(trt.DataType, DTYPES[d].trt) for d in dtypes]

        def get_output_shapes(self, inputs: list, shape_inputs: list, builder: object) -> list:
            backend = ExprBuilder(builder)
            shapes = [[d.get_constant_value() if d.is_constant() else Expr(d, backend) for d in dims]
                      for dims in inputs]
            sizes = bind(self.spec, shapes, self.attrs, alg=expr_algebra("tensorrt-rtx", backend))
            result = []
            for shape in output_shapes(sizes):
                dims = trt.DimsExprs(len(shape))
                for i, value in enumerate(shape):
                    dims[i] = value.node if isinstance(value, Expr) else builder.constant(value)
                result.append(dims)
            return result

        def supports_format_combination(self, pos: int, in_out: list, num_inputs: int) -> bool:
            desc = in_out[pos].desc
            known = [names.get(in_out[i].desc.type) for i in range(pos)]
            return desc.format == trt.TensorFormat.LINEAR and names.get(desc.type) in allowed_dtypes(self.spec, pos,
                                                                                                     known)

        def configure_plugin(self, inputs: list, outputs: list) -> None:
            pass

        def on_shape_change(self, inputs: list, outputs: list) -> None:
            pass

        def get_workspace_size(self, inputs: list, outputs: list) -> int:
            return 0

        def get_valid_tactics(self) -> list[int]:
            return list(range(1, len(self.spec.tactics) + 1))

        def set_tactic(self, tactic: int) -> None:
            self.tactic = tactic

        def get_fields_to_serialize(self) -> object:
            return trt.PluginFieldCollection([trt.PluginField(a, np.array([v], np.int32), trt.PluginFieldType.INT32)
                                              for a, v in self.attrs.items()])

        def enqueue(self, *args: object) -> None:
            raise RuntimeError(f"{self.spec.name}: the TensorRT-RTX adapters parse and build only; the kernels run "
                               "as TensorRT 11 AOT plugins (mahia.plugins_trt.qdp)")

        def attach_to_context(self, context: object) -> object:
            return self.clone()

        def clone(self) -> object:
            twin = Plugin(self.spec, dict(self.attrs), self.node)
            twin.tactic = self.tactic
            return twin

    class Creator(trt.IPluginCreatorV3One):
        def __init__(self, spec: object):
            trt.IPluginCreatorV3One.__init__(self)
            self.spec = spec
            self.name, self.plugin_namespace, self.plugin_version = spec.name, DOMAIN, PLUGIN_VERSION
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(a, np.array([], np.int32), trt.PluginFieldType.INT32) for a in spec.attrs])

        def create_plugin(self, name: str, fields: object, phase: object) -> object:
            attrs = {f.name: int(np.asarray(f.data).reshape(-1)[0]) for f in fields}
            missing = [a for a in self.spec.attrs if a not in attrs]
            if missing:
                raise ValueError(f"plugin node {name!r} ({self.spec.name}) lacks the INT attributes {missing}")
            return Plugin(self.spec, attrs, name)

    return {name: Creator(spec) for name, spec in PLUGINS.items()}


def _child(request_path: str) -> int:
    """Parse, check plugin coverage, build; write the report JSON. Returns the exit code."""
    import onnx
    import tensorrt_rtx_bindings as trt

    from mahia.plugins_trt import PLUGINS
    from mahia.plugins_trt.specs import DOMAIN

    request = json.loads(Path(request_path).read_text())
    report = {"parsed": False, "built": False, "engine_bytes": None, "failures": [], "plugin_layers": [],
              "errors": [], "compute_capabilities": request["compute_capabilities"]}

    def finish(code: int) -> int:
        Path(request["report"]).write_text(json.dumps(report))
        return code

    class Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: object, message: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(message)

    logger = Log()
    registry = trt.get_plugin_registry()
    creators = _adapters(trt)  # kept alive for the whole parse and build
    for creator in creators.values():
        registry.register_creator(creator, DOMAIN)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # strongly typed (always, in TensorRT-RTX)
    parser = trt.OnnxParser(network, logger)
    report["parsed"] = bool(parser.parse_from_file(request["onnx"]))
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        report["failures"].append({"node": error.node(), "name": error.node_name(), "op": error.node_operator(),
                                   "error": error.desc()})
    if not report["parsed"]:
        report["errors"] = logger.errors
        return finish(1)

    layers = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        layers[layer.name] = layer.type
    graph = onnx.load(request["onnx"], load_external_data=False).graph
    for index, node in enumerate(graph.node):
        if node.domain != DOMAIN and node.op_type not in PLUGINS:
            continue
        if layers.get(node.name) == trt.LayerType.PLUGIN_V3:
            report["plugin_layers"].append(node.name)
        else:
            found = f"a {layers[node.name].name} layer" if node.name in layers else "no layer of that name"
            report["failures"].append({"node": index, "name": node.name, "op": node.op_type,
                                       "error": f"not a PLUGIN_V3 layer ({found}): no registered plugin took it"})

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in request["profile"].items():
        profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
    config.add_optimization_profile(profile)
    config.num_compute_capabilities = len(request["compute_capabilities"])
    for i, name in enumerate(request["compute_capabilities"]):
        config.set_compute_capability(getattr(trt.ComputeCapability, name), i)
    blob = builder.build_serialized_network(network, config)
    report["errors"] = logger.errors
    if blob is None:
        return finish(1)
    report["built"], report["engine_bytes"] = True, int(blob.nbytes)
    if request["engine"]:
        target = Path(request["engine"])
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_bytes(bytes(blob))
        partial.replace(target)
    return finish(0 if not report["failures"] else 1)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
