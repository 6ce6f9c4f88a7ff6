"""The ONNX flavour registry: how the `mahia::` custom ops are written in an ONNX graph.

A flavour is a module of op translations (onnxscript functions, like onnx_lowering.py for "portable")
plus one `register(Flavour(...))` entry here, and a `Format` entry (formats.py) that writes its graphs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mahia.export import onnx_lowering

TranslationTable = dict[Callable, Callable]


@dataclass(frozen=True)
class Flavour:
    """One way of lowering the custom ops into ONNX."""

    name: str
    translations: Callable[[int], TranslationTable]  # torch.onnx custom_translation_table for graphs of <= N tokens
    lowering_notes: Callable[[int], dict[str, str]]  # the lowering choices made for N tokens, for manifest and report
    min_opset: int
    verify_backends: tuple[str, ...]  # mahia.runtime backends that parity and the task check run its graphs on
    description: str  # what the custom ops become, for the report
    polygraphy_runner: str | None  # the `polygraphy run` flag that re-checks its graphs without MAHIA, if any


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


register(Flavour("portable", onnx_lowering.portable_translations,
                 lambda max_tokens: {"long_conv": onnx_lowering.long_conv_lowering(max_tokens).__name__},
                 min_opset=onnx_lowering.OPSET, verify_backends=("onnx",),
                 description="custom ops lowered to standard ONNX ops", polygraphy_runner="--onnxrt"))
