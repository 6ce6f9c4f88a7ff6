"""Backend "onnx": an ONNX graph on ONNX Runtime's CPU execution provider."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch import Tensor

from mahia.model import OUTPUT_NAMES
from mahia.runtime.backends.base import InputSpec, Runner


class OnnxRuntimeRunner(Runner):
    """An onnxruntime.InferenceSession over the graph file (default session options, as `polygraphy run --onnxrt`)."""

    def __init__(self, path: Path, inputs: InputSpec) -> None:
        import onnxruntime as ort  # the registry checked that it is installed

        super().__init__("onnx")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.dtypes = {name: np.dtype(spec["dtype"]) for name, spec in inputs.items()}

    def __call__(self, tensors: Mapping[str, Tensor]) -> np.ndarray:
        feed = {name: tensors[name].detach().cpu().numpy().astype(dtype, copy=False)
                for name, dtype in self.dtypes.items()}
        return np.asarray(self.session.run(list(OUTPUT_NAMES), feed)[0], dtype=np.float32)


def load(path: Path, inputs: InputSpec) -> Runner:
    """The runner of an ONNX graph file."""
    return OnnxRuntimeRunner(path, inputs)
