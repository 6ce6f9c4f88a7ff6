"""The backend registry: one `Backend` record per way of running an artifact's graph.

A backend is a module under `mahia.runtime.backends` with `load(path, inputs) -> Runner` (base.py's
contract; `load(path, inputs, options)` too where it takes options) plus one `register(Backend(...))` line
below; its engine is imported when a graph is loaded, so an engine that is not installed costs nothing until
it is asked for, and then fails with one line naming the package (as Polygraphy's backends do). A backend
without a format ("cuda") runs the whole artifact rather than one graph file: its module has
`load_artifact(directory, manifest, options) -> Runner` instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mahia.artifact import Manifest
from mahia.runtime.backends.base import BackendUnavailableError, InputSpec, Runner, require


@dataclass(frozen=True)
class Backend:
    """How one kind of graph file is run."""

    name: str  # what `mahia.runtime.load(..., backend=...)` takes
    format: str | None  # the artifact format it runs (a key of the manifest's "graphs"); None: the whole artifact
    module: str  # the module whose `load(path, inputs)` (or `load_artifact`, without a format) returns its Runner
    packages: tuple[str, ...]  # Python packages its engine needs (checked before the module loads)
    engine: str  # what runs the graph, as parity reports name it (Polygraphy's runner names: onnxrt, ...)
    description: str
    # whether its graph loader takes `options` (its own frozen dataclass); a backend without a format gets them
    # through load_artifact, which checks their type itself
    takes_options: bool = False

    def require_packages(self) -> None:
        """BackendUnavailableError naming the first engine package that is not installed."""
        for package in self.packages:
            require(package, self.name)

    def load(self, path: Path, inputs: InputSpec, options: Any = None) -> Runner:
        """The runner of the graph file at `path`; BackendUnavailableError when an engine package is missing,
        ValueError for options given to a backend that takes none."""
        self.require_packages()
        if options is None:
            return importlib.import_module(self.module).load(path, inputs)
        if not self.takes_options:
            raise ValueError(f"backend {self.name!r} takes no options")
        return importlib.import_module(self.module).load(path, inputs, options)

    def load_artifact(self, directory: Path, manifest: Manifest, options: Any = None) -> Runner:
        """The runner of a whole verified artifact (backends without a format); BackendUnavailableError as `load`."""
        self.require_packages()
        return importlib.import_module(self.module).load_artifact(directory, manifest, options)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add a backend (names are unique)."""
    if backend.name in _REGISTRY:
        raise ValueError(f"backend {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def backends() -> Mapping[str, Backend]:
    """Every registered backend, by name, in registration order."""
    return MappingProxyType(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The named backend, or a ValueError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(_REGISTRY)}") from None


register(Backend("onnx", "onnx", "mahia.runtime.backends.onnxrt", ("onnxruntime",), "onnxrt",
                 "ONNX Runtime, CPU execution provider (OnnxRuntimeOptions: threads)", takes_options=True))
register(Backend("pt2", "pt2", "mahia.runtime.backends.pt2", ("torch",), "pt2",
                 "torch.export program reloaded with torch.export.load, eager on the CPU"))
register(Backend("onnx-plugins", "trt", "mahia.runtime.backends.onnx_plugins",
                 ("onnxruntime", "onnxruntime_extensions"), "onnxrt-plugins",
                 "TensorRT-flavour ONNX on ONNX Runtime, plugin nodes run by their launch references"))
register(Backend("tensorrt", "engine", "mahia.runtime.backends.tensorrt", ("tensorrt",), "trt",
                 "TensorRT engine with the mahia AOT plugins (TensorRT >= 10.9, GPU)"))
register(Backend("cuda", None, "mahia.runtime.backends.cuda", ("torch", "triton"), "cuda",
                 "the model rebuilt from the artifact on a CUDA GPU: Triton kernels, FP8 GEMMs for fp8, CUDA graphs "
                 "per shape bucket (CudaOptions)"))

__all__ = ["Backend", "BackendUnavailableError", "InputSpec", "Runner", "backends", "get_backend", "register",
           "require"]
