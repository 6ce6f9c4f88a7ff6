"""Range collection from the eager model: forward hooks on every Linear/Conv1d input, and the inputs
of the three custom ops (MoE expert inputs and hidden activations per expert, SSD scan inputs, long
convolution inputs) seen through a dispatch mode, so nothing has to be re-implemented to observe them.

Values at padded positions are dropped (they are masked out downstream, and would only widen the
ranges): the token mask is the one the embedding returns, which covers the tabular tokens too. Names
are eager names: `<module path>:input` for module inputs, `<module path>/<op>:<arg>` for custom-op
tensors; `mahia.calibration.onnx_names` maps them onto the ONNX graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from mahia.calibration.data import CalibrationData, CalibrationError
from mahia.calibration.statistics import MethodConfig, RangeStatistics
from mahia.kernels.reference import route_tokens
from mahia.model.embedding import InputEmbedding

CUSTOM_OPS = {"long_conv", "ssd_scan", "moe_ffn"}


@dataclass(frozen=True)
class EagerRanges:
    """Statistics of every observed eager tensor, with the data they came from."""

    statistics: RangeStatistics
    samples: int
    data_hash: str

    def amax(self, name: str, config: MethodConfig) -> float:
        """amax of one eager tensor under a method."""
        if name not in self.statistics.abs_max:
            raise CalibrationError(f"no eager range for tensor {name!r}")
        return self.statistics.amax(name, config)

    def names(self) -> list[str]:
        """Every observed eager tensor name."""
        return self.statistics.names()


class _Observer(TorchDispatchMode):
    """Sees each mahia:: op call and records its inputs under the calling module's path."""

    def __init__(self, record: _Recorder) -> None:
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func.namespace == "mahia" and func._opname in CUSTOM_OPS:
            self.record.custom_op(func._opname, args)
        return func(*args, **kwargs)


class _Recorder:
    """Holds the current batch's mask and module path; turns captured tensors into real-token values."""

    def __init__(self, statistics: RangeStatistics) -> None:
        self.statistics = statistics
        self.mask: Tensor | None = None
        self.path: list[str] = []

    def tokens(self, t: Tensor, channel_first: bool = False) -> Tensor:
        """Values of t at real (unpadded) positions; tensors without a token layout are kept whole."""
        mask = self.mask
        t = t.detach()
        if mask is None:
            return t
        batch, length = mask.shape
        if channel_first and t.dim() == 3 and t.shape[0] == batch and t.shape[2] == length:
            return t.transpose(1, 2)[mask]
        if t.dim() >= 3 and tuple(t.shape[:2]) == (batch, length):
            return t[mask]
        if t.dim() == 2 and length > 1 and t.shape[0] == batch * length:
            return t[mask.reshape(-1)]
        return t

    def add(self, name: str, t: Tensor) -> None:
        self.statistics.add(name, t.float().numpy())

    def module_input(self, name: str, module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor) and args[0].is_floating_point():
            self.add(f"{name}:input", self.tokens(args[0], channel_first=isinstance(module, nn.Conv1d)))

    def custom_op(self, op: str, args: tuple) -> None:
        where = f"{self.path[-1] if self.path else ''}/{op}"
        if op == "long_conv":
            self.add(f"{where}:x", self.tokens(args[0], channel_first=True))
        elif op == "ssd_scan":
            x, dt, _, b, c = args[:5]
            for arg, t in (("x", x), ("dt", dt), ("b", b), ("c", c)):
                self.add(f"{where}:{arg}", self.tokens(t))
        else:
            self._moe(where, *args)

    def _moe(self, where: str, x: Tensor, logits: Tensor, mask: Tensor, w1: Tensor, w2: Tensor,
             top_k: int, capacity_factor: float) -> None:
        """Per expert: the inputs of its routed tokens and its SwiGLU hidden activation (w2's input)."""
        x = x.detach()
        self.add(f"{where}:x", x[mask.bool()])
        _, experts, keep = route_tokens(logits.detach(), mask, top_k, capacity_factor)
        for e in range(w1.shape[0]):
            token = torch.nonzero(((experts == e) & keep).any(dim=-1)).flatten()
            if token.numel() == 0:
                continue
            routed = x[token]
            gate, up = (routed @ w1[e].detach().t()).chunk(2, dim=-1)
            self.add(f"{where}:expert{e}.input", routed)
            self.add(f"{where}:expert{e}.hidden", F.silu(gate) * up)


@contextmanager
def _hooks(model: nn.Module, recorder: _Recorder) -> Iterator[None]:
    handles = []

    def enter(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            recorder.path.append(name)
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                recorder.module_input(name, module, args)
        return hook

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        recorder.path.pop()
        if isinstance(module, InputEmbedding):
            # The model's token mask covers the tabular tokens placed before the text: use that one.
            recorder.mask = output[1].bool()

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def collect_ranges(model: nn.Module, data: CalibrationData, methods: tuple[str, ...] = ("max",),
                   num_bins: int = 2048) -> EagerRanges:
    """Run the eager model over the calibration batches once and accumulate every observed tensor's statistics."""
    if model.training:
        raise CalibrationError("collect_ranges needs the model in eval() mode (dropless MoE routing, as exported)")
    statistics = RangeStatistics(methods, num_bins=num_bins)
    recorder = _Recorder(statistics)
    with torch.no_grad(), _hooks(model, recorder), _Observer(recorder):
        for batch in data.batches:
            recorder.mask = None
            model(**batch)
    if not statistics.names():
        raise CalibrationError("no tensor was observed: the model has no Linear/Conv1d modules or mahia:: ops")
    return EagerRanges(statistics, data.samples, data.content_hash)

