"""Backend "onnx-plugins": a TensorRT-flavour ONNX graph on ONNX Runtime (CPU) with every plugin node run by the
reference of its own kernel launch (mahia.plugins_trt.ort): the wiring check of the TensorRT graph, through the same
Runner contract as the other backends, so parity and the task check run it like any deployment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from mahia.runtime.backends.base import InputSpec, Runner
from mahia.runtime.backends.onnxrt import OnnxRuntimeRunner


class PluginWiringRunner(OnnxRuntimeRunner):
    """A WiringSession (onnxruntime-extensions Python ops for the plugin nodes) over the graph file; feeds and
    outputs as the plain ONNX Runtime runner's."""

    def __init__(self, path: Path, inputs: InputSpec) -> None:
        from mahia.plugins_trt.ort import wiring_session

        Runner.__init__(self, "onnx-plugins")
        # One ONNX Runtime thread: its second thread only waits while the Python plugin ops run, and took CPU from
        # them (the default model's TensorRT graph at 16 x 64: 1.2-1.6 s per run with ORT's default threads,
        # 0.7 s with one, on a loaded 2-core VM).
        self.session = wiring_session(onnx.load(str(path)), {"intra_op_num_threads": 1})
        self.dtypes = {name: np.dtype(spec["dtype"]) for name, spec in inputs.items()}


def load(path: Path, inputs: InputSpec) -> Runner:
    """The runner of a TensorRT-flavour ONNX graph file."""
    return PluginWiringRunner(path, inputs)
