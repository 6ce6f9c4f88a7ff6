"""Backend "pt2": a torch.export program (.pt2) reloaded with torch.export.load, run eagerly on the CPU."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mahia.runtime.backends.base import InputSpec, Runner


class ExportedProgramRunner(Runner):
    """The program's module under inference_mode; outputs cast to float32 (a bf16 program returns bf16)."""

    def __init__(self, path: Path, inputs: InputSpec) -> None:
        super().__init__("pt2")
        with warnings.catch_warnings():  # torch.export.load warns about weight grouping on CPU-only programs
            warnings.simplefilter("ignore")
            self.module = torch.export.load(str(path)).module()
        self.dtypes = {name: getattr(torch, spec["dtype"]) for name, spec in inputs.items()}

    def __call__(self, tensors: Mapping[str, Tensor]) -> np.ndarray:
        with torch.inference_mode():
            logits = self.module(**{name: tensors[name].to(self.dtypes[name]) for name in self.dtypes})
        return logits.float().numpy()


def load(path: Path, inputs: InputSpec) -> Runner:
    """The runner of a .pt2 file."""
    return ExportedProgramRunner(path, inputs)
