"""The one contract every backend meets: a loader `load(path, inputs) -> Runner`, and a Runner that maps
validated input tensors to logits. Heavy engines are imported by the loader, never at import time."""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from torch import Tensor

InputSpec = Mapping[str, Mapping[str, Any]]  # the manifest's "inputs": name -> {"dtype", "shape"}


class BackendUnavailableError(ImportError):
    """A backend's engine is not installed; the message names the package to install."""


def require(package: str, backend: str) -> ModuleType:
    """Import an engine package for `backend`, or raise BackendUnavailableError naming it."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != package.split(".")[0]:
            raise  # the package is there but one of its own imports failed: that error says more
        raise BackendUnavailableError(f"backend {backend!r} needs the Python package {package!r}, which is not "
                                      f"installed: pip install {package}") from None


class Runner(abc.ABC):
    """One loaded graph: `runner(tensors)` returns the logits [batch, num_classes] as float32.

    The inputs have passed `mahia.model.validate_inputs` and the manifest's ranges; the runner only casts
    them to the dtypes of its input spec.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend

    @abc.abstractmethod
    def __call__(self, tensors: Mapping[str, Tensor]) -> np.ndarray:
        """Logits for one batch."""
