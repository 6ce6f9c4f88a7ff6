"""TensorRT >= 10.9 Quickly Deployable Plugins (`tensorrt.plugin`) for every plugin spec, ahead-of-time: importing
this module registers each spec as "mahia::<name>" (shape/dtype function, aot_impl, and autotune where the spec
has tactics), after which TensorRT's ONNX parser turns the graph's plugin nodes (domain "mahia", aot=1) into these
plugins and the built engine needs no Python at run time.

Thin on purpose: the shapes, launch grid and scalars come from the specs' formulas (mahia/plugins_trt/specs.py,
tested on ints and sympy), evaluated here on TensorRT's ShapeExprs with trtp.cdiv/max/min; the PTX is the plugin-
ready PTX of mahia.kernels.aot for the target GPU (mahia.plugins_trt.aot: MAHIA_TRT_ARCH or the current device).
It cannot run without TensorRT, which these machines cannot install.
"""

# No `from __future__ import annotations`: TensorRT validates these functions' annotations as classes through
# inspect.signature (the signatures are built by mahia.plugins_trt.qdp_schema with real classes).
import builtins

try:
    import tensorrt as trt
    import tensorrt.plugin as trtp
except ImportError as exc:  # the package, or its libnvinfer
    raise ImportError(f"mahia.plugins_trt.qdp needs TensorRT >= 10.9 (pip package `tensorrt`, module "
                      f"tensorrt.plugin): {exc}") from exc
if not hasattr(trt, "QuickPluginCreationRequest"):  # tensorrt/plugin/_export.py: AOT plugins exist from 10.9
    raise ImportError(f"mahia.plugins_trt.qdp needs TensorRT >= 10.9 with AOT plugins; found {trt.__version__}")

from mahia.plugins_trt import PLUGINS  # noqa: E402
from mahia.plugins_trt.aot import binary_request, compile_binary, target_arch  # noqa: E402
from mahia.plugins_trt.qdp_schema import (  # noqa: E402
    aot_impl_signature,
    autotune_signature,
    autotune_types,
    register_signature,
    with_signature,
)
from mahia.plugins_trt.sizes import Algebra  # noqa: E402
from mahia.plugins_trt.specs import DOMAIN, DTYPES, PluginSpec, bind, launch_formula, output_dtypes, output_shapes  # noqa: E402,E501

_TRT_NAMES = {d.trt: name for name, d in DTYPES.items()}


def _either(trt_op, python_op):
    """A size operation: Python's on two ints (trtp's refuse two ints), trtp's otherwise."""
    def apply(a, b):
        if isinstance(a, int) and isinstance(b, int):
            return python_op(a, b)
        return trt_op(a, b)
    return apply


SHAPE_EXPRS = Algebra("tensorrt", _either(trtp.cdiv, lambda a, b: -(-a // b)), _either(trtp.max, builtins.max),
                      _either(trtp.min, builtins.min))


def _dtype_name(dtype) -> str:
    return _TRT_NAMES[dtype.name]


def _shape(desc):
    """A TensorDesc's dims: ints where TensorRT knows them at build time, ShapeExprs otherwise."""
    return [e.constant_value() if e.is_constant else e for e in desc.shape_expr]


def _sizes(spec: PluginSpec, inputs, attrs, tactic: int = 0):
    return bind(spec, [_shape(d) for d in inputs], {a: int(v) for a, v in attrs.items()},
                [_dtype_name(d.dtype) for d in inputs], SHAPE_EXPRS, tactic)


def _register(spec: PluginSpec) -> None:
    plugin_id = f"{DOMAIN}::{spec.name}"
    input_names = [t.name for t in spec.inputs]

    def describe(**arguments):
        inputs = [arguments[name] for name in input_names]
        dtypes = [getattr(trt.DataType, DTYPES[d].trt) for d in output_dtypes(spec, [_dtype_name(i.dtype)
                                                                                     for i in inputs])]
        if any(e.is_fake for i in inputs for e in i.shape_expr):  # the dtype-only call: shapes are placeholders
            fake = inputs[0].shape_expr[0]
            return tuple(trtp.from_shape_expr((fake,) * len(o.dims), dtype=d) for o, d in zip(spec.outputs, dtypes,
                                                                                              strict=True))
        sizes = _sizes(spec, inputs, {a: arguments[a] for a in spec.attrs})
        return tuple(trtp.from_shape_expr(tuple(shape), dtype=d) for shape, d in zip(output_shapes(sizes), dtypes,
                                                                                   strict=True))

    def aot_impl(outputs, tactic, **arguments):
        inputs = [arguments[name] for name in input_names]
        sizes = _sizes(spec, inputs, {a: arguments[a] for a in spec.attrs}, tactic)
        formula = launch_formula(sizes, SHAPE_EXPRS)
        binary = compile_binary(binary_request(sizes, formula, [_dtype_name(i.dtype) for i in inputs], target_arch()))
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = formula.grid
        params.block_x = formula.block[0]
        params.shared_mem = binary.shared_bytes
        scalars = trtp.SymIntExprs.from_tuple(tuple(trtp.SymInt32(value) for _, value in formula.scalars))
        return binary.entry, binary.ptx, params, scalars

    def autotune(outputs, **arguments):
        return [trtp.AutoTuneCombination(autotune_types(spec), "LINEAR", list(range(1, len(spec.tactics) + 1)))]

    trtp.register(plugin_id)(with_signature(register_signature(spec, trtp.TensorDesc), f"{spec.name}_describe",
                                            describe))
    trtp.aot_impl(plugin_id)(with_signature(
        aot_impl_signature(spec, trtp.TensorDesc, trtp.KernelLaunchParams, trtp.SymIntExprs), f"{spec.name}_aot_impl",
        aot_impl))
    if spec.tactics:  # several tile configs: TensorRT times each tactic and keeps the fastest
        trtp.autotune(plugin_id)(with_signature(
            autotune_signature(spec, trtp.TensorDesc, trtp.AutoTuneCombination), f"{spec.name}_autotune", autotune))


for _spec in PLUGINS.values():
    _register(_spec)
