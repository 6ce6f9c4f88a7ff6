"""The function signatures TensorRT's Quickly Deployable Plugins require, built from a spec (pure Python: the
classes are passed in, so this is tested without TensorRT; mahia.plugins_trt.qdp passes tensorrt.plugin's).

Rules, from tensorrt/plugin/_validate.py and _plugin_class.py (TensorRT 11.4.0.106):
- register: tensor parameters annotated TensorDesc first, then the attributes (typed, no defaults; `outputs`,
  `stream`, `tactic` forbidden), return annotation TensorDesc or tuple[TensorDesc, ...]; TensorRT calls it with
  the attributes as keywords.
- aot_impl: (inputs..., attributes..., outputs, tactic) with a return annotation tuple[str | bytes, str | bytes,
  KernelLaunchParams, SymIntExprs]; TensorRT passes EVERY registered attribute positionally
  (`_, val = zip(*self.attrs.items())`), so every attribute is declared, in registration order.
- autotune: (inputs..., attributes..., outputs) -> list[AutoTuneCombination]; attribute values positionally.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from mahia.plugins_trt.specs import DTYPES, FLOAT, FLOAT_DTYPES, PluginSpec

_P = inspect.Parameter.POSITIONAL_OR_KEYWORD


def _params(spec: PluginSpec, tensor_desc: type) -> list[inspect.Parameter]:
    return ([inspect.Parameter(t.name, _P, annotation=tensor_desc) for t in spec.inputs]
            + [inspect.Parameter(a, _P, annotation=int) for a in spec.attrs])


def _outputs(spec: PluginSpec, tensor_desc: type) -> object:
    return tuple[(tensor_desc,) * len(spec.outputs)]


def register_signature(spec: PluginSpec, tensor_desc: type) -> inspect.Signature:
    """(inputs: TensorDesc..., attrs: int...) -> tuple[TensorDesc, ...]."""
    return inspect.Signature(_params(spec, tensor_desc), return_annotation=_outputs(spec, tensor_desc))


def aot_impl_signature(spec: PluginSpec, tensor_desc: type, launch_params: type, sym_exprs: type
                       ) -> inspect.Signature:
    """(inputs..., attrs..., outputs, tactic) -> tuple[str | bytes, str | bytes, KernelLaunchParams, SymIntExprs]."""
    params = _params(spec, tensor_desc) + [inspect.Parameter("outputs", _P, annotation=_outputs(spec, tensor_desc)),
                                           inspect.Parameter("tactic", _P, annotation=int)]
    return inspect.Signature(params, return_annotation=tuple[str | bytes, str | bytes, launch_params, sym_exprs])


def autotune_signature(spec: PluginSpec, tensor_desc: type, combination: type) -> inspect.Signature:
    """(inputs..., attrs..., outputs) -> list[AutoTuneCombination]."""
    params = _params(spec, tensor_desc) + [inspect.Parameter("outputs", _P, annotation=_outputs(spec, tensor_desc))]
    return inspect.Signature(params, return_annotation=list[combination])


def with_signature(signature: inspect.Signature, name: str, body: Callable[..., object]) -> Callable[..., object]:
    """A function with this signature (what inspect.signature reports) that calls body(**bound arguments)."""
    def function(*args: object, **kwargs: object) -> object:
        return body(**signature.bind(*args, **kwargs).arguments)

    function.__signature__ = signature
    function.__name__ = function.__qualname__ = name
    return function


def autotune_types(spec: PluginSpec) -> str:
    """The AutoTuneCombination type string: every "float" position depends on one choice of FP32|FP16|BF16
    ('|'), fixed positions have their one type."""
    names = "|".join(DTYPES[d].autotune for d in FLOAT_DTYPES)
    positions = [t.dtypes for t in spec.inputs] + [(o.dtype,) for o in spec.outputs]
    if any(len(options) != 1 for options in positions):
        raise ValueError(f"{spec.name}: an input allows several dtypes besides the float type; write its "
                         "AutoTuneCombination by hand")
    return ", ".join(names if options[0] == FLOAT else DTYPES[options[0]].autotune for options in positions)
