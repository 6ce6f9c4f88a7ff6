"""Backend "onnx": an ONNX graph on ONNX Runtime's CPU execution provider."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from mahia.model import OUTPUT_NAMES
from mahia.runtime.backends.base import InputSpec, Runner


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """ONNX Runtime's CPU threading. The defaults are ONNX Runtime's own (as `polygraphy run --onnxrt`): one
    intra-op thread per physical core, spinning between runs.

    A process that shares the machine with other busy ones (a serving replica beside its HTTP proxy) wants
    `intra_op_threads` = the CPUs it reserved and `spin_wait=False`: spinning threads take the cores the requests
    need on their way in (benchmarks/serve_load.py on 2 cores, batches of 16 filled for 30 ms: the model replica's
    CPU per request fell from 18.6 ms to 10.1-11.8 ms, mahia/serve/README.md "Load").
    """

    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    spin_wait: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.spin_wait, bool):
            raise TypeError(f"OnnxRuntimeOptions.spin_wait must be a bool, got {self.spin_wait!r}")
        if not isinstance(self.intra_op_threads, int) or isinstance(self.intra_op_threads, bool):
            raise TypeError(f"OnnxRuntimeOptions.intra_op_threads must be an int, got {self.intra_op_threads!r}")
        if self.intra_op_threads < 0:
            raise ValueError(f"OnnxRuntimeOptions.intra_op_threads must be >= 0 (0: ONNX Runtime's default), "
                             f"got {self.intra_op_threads}")


class OnnxRuntimeRunner(Runner):
    """An onnxruntime.InferenceSession over the graph file."""

    def __init__(self, path: Path, inputs: InputSpec, options: OnnxRuntimeOptions) -> None:
        import onnxruntime as ort  # the registry checked that it is installed

        super().__init__("onnx")
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        if not options.spin_wait:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        self.dtypes = {name: np.dtype(spec["dtype"]) for name, spec in inputs.items()}

    def __call__(self, tensors: Mapping[str, Tensor]) -> np.ndarray:
        feed = {name: tensors[name].detach().cpu().numpy().astype(dtype, copy=False)
                for name, dtype in self.dtypes.items()}
        return np.asarray(self.session.run(list(OUTPUT_NAMES), feed)[0], dtype=np.float32)


def load(path: Path, inputs: InputSpec, options: OnnxRuntimeOptions | None = None) -> Runner:
    """The runner of an ONNX graph file (ONNX Runtime's default threading unless `options` say otherwise)."""
    if options is None:
        options = OnnxRuntimeOptions()
    if not isinstance(options, OnnxRuntimeOptions):
        raise TypeError(f"backend 'onnx' takes OnnxRuntimeOptions, got {type(options).__name__}")
    return OnnxRuntimeRunner(path, inputs, options)
