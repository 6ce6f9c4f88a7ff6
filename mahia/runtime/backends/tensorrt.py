"""Backend "tensorrt": a TensorRT engine (`model.<precision>.engine`, built by `mahia-export --formats trt,engine`)
run by Polygraphy's TrtRunner on the GPU, the mahia plugins registered first (mahia.plugins_trt.qdp).

Needs TensorRT >= 10.9 and a GPU, which these machines do not have: this module has never run here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch import Tensor

from mahia.model import OUTPUT_NAMES
from mahia.runtime.backends.base import InputSpec, Runner


class TensorRTRunner(Runner):
    """An activated Polygraphy TrtRunner over the deserialized engine; inputs cast to the manifest's dtypes."""

    def __init__(self, path: Path, inputs: InputSpec) -> None:
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        import mahia.plugins_trt.qdp  # noqa: F401  (plugins registered before the engine is deserialized)

        super().__init__("tensorrt")
        self.runner = TrtRunner(EngineFromBytes(path.read_bytes()))
        self.runner.activate()
        self.dtypes = {name: np.dtype(spec["dtype"]) for name, spec in inputs.items()}

    def __call__(self, tensors: Mapping[str, Tensor]) -> np.ndarray:
        feed = {name: tensors[name].detach().cpu().numpy().astype(dtype, copy=False)
                for name, dtype in self.dtypes.items()}
        return np.asarray(self.runner.infer(feed)[OUTPUT_NAMES[0]], dtype=np.float32)

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None and runner.is_active:
            runner.deactivate()


def load(path: Path, inputs: InputSpec) -> Runner:
    """The runner of a TensorRT engine file."""
    return TensorRTRunner(path, inputs)
