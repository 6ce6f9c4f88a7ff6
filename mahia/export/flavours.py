"""The ONNX flavour registry: how the `mahia::` custom ops are written in an ONNX graph.

A flavour is a module of op translations (onnxscript functions, like onnx_lowering.py for "portable")
plus one `register(Flavour(...))` entry here, and a `Format` entry (formats.py) that writes its graphs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import onnx

from mahia.export import onnx_lowering, trt_graphs, trt_lowering

if TYPE_CHECKING:
    from mahia.export.precisions import BuildContext, Built

TranslationTable = dict[Callable, Callable]


@dataclass(frozen=True)
class LoweringSizes:
    """What a lowering may depend on besides the program: the graph's longest sequence and the profile's opt point
    in tokens (tabular tokens included), and the model's expert count and top-k."""

    max_tokens: int
    opt_tokens: int
    num_experts: int
    top_k: int


# A flavour's graph of one precision, from its own fp32 graph and the precision's portable build (None when no
# portable graph was built): (precision name, fp32 graph, build context, portable build) -> (graph, notes).
DeriveFunction = Callable[[str, onnx.ModelProto, "BuildContext", "Built | None"],
                          tuple[onnx.ModelProto, dict[str, Any]]]


@dataclass(frozen=True)
class Flavour:
    """One way of lowering the custom ops into ONNX."""

    name: str
    translations: Callable[[LoweringSizes], TranslationTable]  # torch.onnx custom_translation_table
    lowering_notes: Callable[[LoweringSizes], dict[str, str]]  # the lowering choices made, for manifest and report
    min_opset: int
    verify_backends: tuple[str, ...]  # mahia.runtime backends that parity and the task check run its graphs on
    description: str  # what the custom ops become, for the report
    polygraphy_runner: str | None  # the `polygraphy run` flag that re-checks its graphs without MAHIA, if any
    finish: Callable[[onnx.ModelProto], object] | None = None  # a last pass over the lowered graph (checks, order)
    # None: the precision's build writes this flavour's graphs (portable); else how they are made from its fp32 graph
    derive: DeriveFunction | None = None


_REGISTRY: dict[str, Flavour] = {}


def register(flavour: Flavour) -> Flavour:
    """Add a flavour (names are unique)."""
    if flavour.name in _REGISTRY:
        raise ValueError(f"ONNX flavour {flavour.name!r} is already registered")
    _REGISTRY[flavour.name] = flavour
    return flavour


def flavours() -> Mapping[str, Flavour]:
    """Every registered flavour, by name."""
    return MappingProxyType(_REGISTRY)


def get_flavour(name: str) -> Flavour:
    """The named flavour, or a ValueError listing the ones built here."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown ONNX flavour {name!r}; built here: {', '.join(_REGISTRY)}") from None


register(Flavour("portable", lambda sizes: onnx_lowering.portable_translations(sizes.max_tokens),
                 lambda sizes: {"long_conv": onnx_lowering.long_conv_lowering(sizes.max_tokens).__name__},
                 min_opset=onnx_lowering.OPSET, verify_backends=("onnx",),
                 description="custom ops lowered to standard ONNX ops", polygraphy_runner="--onnxrt"))
register(Flavour("tensorrt", lambda sizes: trt_lowering.tensorrt_translations(sizes.opt_tokens),
                 lambda sizes: trt_lowering.lowering_notes(sizes.opt_tokens, sizes.num_experts, sizes.top_k),
                 min_opset=trt_lowering.OPSET, verify_backends=("onnx-plugins",),
                 description="custom ops as TensorRT plugin nodes (domain mahia, mahia.plugins_trt)",
                 polygraphy_runner=None, finish=trt_lowering.finish_plugin_nodes, derive=trt_graphs.tensorrt_graph))
