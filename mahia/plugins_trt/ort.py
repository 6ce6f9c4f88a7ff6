"""ONNX Runtime execution of a graph's plugin nodes, for the wiring check: each node runs the reference of ITS
launch (mahia/plugins_trt/<op>.py, torch on the CPU), producing exactly the intermediate its kernel writes, so a
node wired to the wrong tensors or given a wrong attribute breaks the graph's numbers or stops it with an error
naming the plugin and the input.

How: onnxruntime-extensions Python custom ops. Their domain is fixed to "ai.onnx.contrib" and float16 inputs abort
the process ("Type float16 not supported by python customops api", onnxruntime-extensions 0.15.2), so ONNX
Runtime runs an in-memory copy of the graph in which every plugin node is in that domain and sees float32: a Cast
to float32 on each input of the plugin's float type (and FP8 weights), a CastLike back to the float type's dtype
on each such output. The graph itself (domain "mahia") is left as it is; node inputs, outputs and attributes are
unchanged, so the wiring under test is the graph's. Undeclared attributes (plugin_namespace, plugin_version,
aot) are ignored by the custom ops; a missing INT attribute fails session creation.

A Python exception inside such an op terminates the process (onnxruntime-extensions 0.15.2: "terminate called
after throwing an instance of 'pybind11::error_already_set'"), so the ops never raise: a node whose reference
refuses its inputs records why (the copy gives each plugin node its name and its session's token as two extra
STRING attributes) and returns empty outputs, and `WiringSession.run` raises WiringError naming that node.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from mahia.plugins_trt import PLUGINS
from mahia.plugins_trt.specs import DOMAIN, FLOAT, PluginSpec, bind

ORT_EXT_PACKAGE = "onnxruntime-extensions==0.15.2 (extra `ort-ext`)"
CONTRIB = "ai.onnx.contrib"  # the only domain of onnxruntime-extensions' Python ops
_NUMPY = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_REGISTERED = False
NODE_ATTRIBUTE, SESSION_ATTRIBUTE = "mahia_node", "mahia_session"  # added in the copy only
_ERRORS: dict[str, list[tuple[str, str]]] = {}  # session token -> (node, error) in run order
_LOCK = threading.Lock()
_TOKENS = itertools.count()


class WiringError(RuntimeError):
    """A plugin node's reference refused its inputs (wrong wiring, shape or attribute)."""


def _through_float32(options: tuple[str, ...]) -> bool:
    """Inputs the plugin's float type (or FP8) may take reach the Python op as float32."""
    return any(o == FLOAT or o.startswith("float8") for o in options)


def _custom_op(spec: PluginSpec, extensions: object) -> None:
    """Register the plugin's launch reference as a Python op (op_type = the plugin's name)."""
    kinds = extensions.PyCustomOpDef
    types = {"float32": kinds.dt_float, "int32": kinds.dt_int32, "bool": kinds.dt_bool}

    def kind(options: tuple[str, ...]) -> int:
        return kinds.dt_float if _through_float32(options) else types[options[0]]

    out_types = ["float32" if o.dtype == FLOAT else o.dtype for o in spec.outputs]

    def run(*arrays: np.ndarray, **attrs: object) -> object:
        node, token = attrs.pop(NODE_ATTRIBUTE), attrs.pop(SESSION_ATTRIBUTE)
        try:
            tensors = {t.name: torch.from_numpy(np.ascontiguousarray(a))
                       for t, a in zip(spec.inputs, arrays, strict=True)}
            sizes = bind(spec, [tuple(a.shape) for a in arrays], {k: int(v) for k, v in attrs.items()})
            with torch.no_grad():
                outputs = spec.reference(sizes, tensors)
            results = tuple(outputs[o.name].numpy().astype(_NUMPY[t], copy=False)
                            for o, t in zip(spec.outputs, out_types, strict=True))
        except Exception as exc:  # noqa: BLE001 - raising here would terminate the process (module docstring)
            with _LOCK:
                _ERRORS.setdefault(token, []).append((node, f"{type(exc).__name__}: {exc}"))
            results = tuple(np.zeros((0,) * len(o.dims), _NUMPY[t]) for o, t in zip(spec.outputs, out_types,
                                                                                    strict=True))
        return results if len(results) > 1 else results[0]

    attrs = {a: kinds.dt_int64 for a in spec.attrs}
    attrs |= {NODE_ATTRIBUTE: kinds.dt_string, SESSION_ATTRIBUTE: kinds.dt_string}
    extensions.onnx_op(op_type=spec.name, inputs=[kind(t.dtypes) for t in spec.inputs],
                       outputs=[types[t] for t in out_types], attrs=attrs)(run)


def _register() -> object:
    """Import onnxruntime-extensions and register every plugin once per process."""
    global _REGISTERED
    try:
        import onnxruntime_extensions as extensions
    except ImportError as exc:
        raise ImportError(f"the plugin wiring check needs {ORT_EXT_PACKAGE}: {exc}") from exc
    if not _REGISTERED:
        for spec in PLUGINS.values():
            _custom_op(spec, extensions)
        _REGISTERED = True
    return extensions


def wiring_model(model: onnx.ModelProto, token: str = "") -> onnx.ModelProto:
    """The in-memory copy ONNX Runtime runs: plugin nodes (domain "mahia") in domain ai.onnx.contrib with float32
    I/O through Cast / CastLike, and their name and the session `token` as attributes (see the module docstring).
    Raises ValueError naming an unknown plugin or a node with the wrong number of inputs or outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = []
    for node in copy.graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        spec = PLUGINS.get(node.op_type)
        if spec is None:
            raise ValueError(f"plugin node {node.name!r}: no plugin {node.op_type!r} (known: {', '.join(PLUGINS)})")
        if len(node.input) != len(spec.inputs) or len(node.output) != len(spec.outputs):
            raise ValueError(f"plugin node {node.name!r} ({spec.name}): {len(node.input)} inputs and "
                             f"{len(node.output)} outputs, expected ({', '.join(t.name for t in spec.inputs)}) -> "
                             f"({', '.join(o.name for o in spec.outputs)})")
        inputs, after = [], []
        for tensor, value in zip(spec.inputs, node.input, strict=True):
            if _through_float32(tensor.dtypes):
                nodes.append(helper.make_node("Cast", [value], [f"{node.name}/{tensor.name}:f32"], to=TensorProto.FLOAT,
                                              name=f"{node.name}/cast_{tensor.name}"))
                value = f"{node.name}/{tensor.name}:f32"
            inputs.append(value)
        outputs = list(node.output)
        for i, out in enumerate(spec.outputs):
            if out.dtype == FLOAT:
                outputs[i] = f"{node.name}/{out.name}:f32"
                after.append(helper.make_node("CastLike", [outputs[i], node.input[spec.float_input]], [node.output[i]],
                                              name=f"{node.name}/castlike_{out.name}"))
        plugin = helper.make_node(node.op_type, inputs, outputs, name=node.name, domain=CONTRIB)
        plugin.attribute.extend(node.attribute)
        plugin.attribute.extend([helper.make_attribute(NODE_ATTRIBUTE, node.name),
                                 helper.make_attribute(SESSION_ATTRIBUTE, token)])
        nodes += [plugin, *after]
    copy.graph.ClearField("node")
    copy.graph.node.extend(nodes)
    opsets = [o for o in copy.opset_import if o.domain != DOMAIN]
    copy.ClearField("opset_import")
    copy.opset_import.extend([*opsets, helper.make_opsetid(CONTRIB, 1)])
    return copy


class WiringSession:
    """An onnxruntime.InferenceSession over the wiring copy of a graph (every other attribute is the session's):
    `run` raises WiringError naming the first plugin node whose reference refused its inputs."""

    def __init__(self, session: object, token: str):
        self.session, self.token = session, token

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray],
            run_options: object = None) -> list[np.ndarray]:
        """InferenceSession.run, then the plugin nodes' verdict."""
        with _LOCK:
            _ERRORS[self.token] = []
        failure = None
        # The references run on one torch thread: torch's pool competing with ONNX Runtime's made the tiny
        # model's TensorRT-flavour graph at 3 x 37 take 2.5-3.7 s per run on a loaded 2-core VM, 0.19-0.25 s
        # with one torch thread (WiringSession.run timed three times each way).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            outputs = self.session.run(output_names, input_feed, run_options)
        except Exception as exc:  # noqa: BLE001 - a node's recorded error explains it better, if there is one
            failure = exc
        finally:
            torch.set_num_threads(threads)
        with _LOCK:
            errors = _ERRORS.pop(self.token, [])
        if errors:
            node, error = errors[0]
            later = f" ({len(errors) - 1} plugin nodes after it failed on its empty outputs)" if len(errors) > 1 else ""
            raise WiringError(f"plugin node {node!r}: {error}{later}") from failure
        if failure is not None:
            raise failure
        return outputs

    def __getattr__(self, name: str) -> object:
        return getattr(self.__dict__["session"], name)


def wiring_session(model: onnx.ModelProto, options: Mapping[str, object] | None = None) -> WiringSession:
    """A session (onnxruntime.InferenceSession's interface, CPU) running `model` with its plugin nodes executed by
    their launch references. `options`: SessionOptions attributes to set (e.g. intra_op_num_threads)."""
    import onnxruntime

    extensions = _register()
    session_options = onnxruntime.SessionOptions()
    for key, value in (options or {}).items():
        setattr(session_options, key, value)
    session_options.register_custom_ops_library(extensions.get_library_path())
    token = f"wiring-{next(_TOKENS)}"
    session = onnxruntime.InferenceSession(wiring_model(model, token).SerializeToString(), session_options,
                                           providers=["CPUExecutionProvider"])
    return WiringSession(session, token)
