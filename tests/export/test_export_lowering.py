"""The portable ONNX lowerings of the mahia:: ops, run by ONNX Runtime, against the float64 references."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
from torch.export import Dim

from mahia.export import onnx_lowering
from mahia.export.onnx_lowering import MATMUL_DFT_MAX_LENGTH, OPSET, long_conv_lowering, portable_translations
from mahia.export.stages import quiet_exporters
from mahia.kernels import reference
from tests.conftest import relative_error


def _session(module: torch.nn.Module, args: tuple, dynamic_shapes: tuple,
             max_length: int = MATMUL_DFT_MAX_LENGTH) -> ort.InferenceSession:
    with quiet_exporters():
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, dynamic_shapes=dynamic_shapes,
                                    custom_translation_table=portable_translations(max_length), optimize=True)
    model = program.model_proto
    del model.graph.value_info[:]  # as the pipeline does: the exporter's DFT shapes are the traced ones
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, *arrays: torch.Tensor) -> torch.Tensor:
    feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), arrays)}
    return torch.from_numpy(session.run(None, feed)[0])


class LongConv(torch.nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, x: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
        return torch.ops.mahia.long_conv(x, filt, self.causal)


def test_long_conv_lowering_follows_the_longest_sequence() -> None:
    assert long_conv_lowering(MATMUL_DFT_MAX_LENGTH) is onnx_lowering.long_conv_matmul
    assert long_conv_lowering(MATMUL_DFT_MAX_LENGTH + 1) is onnx_lowering.long_conv_dft


@pytest.mark.parametrize("max_length", [MATMUL_DFT_MAX_LENGTH, MATMUL_DFT_MAX_LENGTH + 1], ids=["matmul", "dft"])
@pytest.mark.parametrize("causal", [True, False])
def test_long_conv_lowering_matches_reference_at_unseen_lengths(causal: bool, max_length: int,
                                                                generator: torch.Generator) -> None:
    length = Dim("length", min=2, max=300)
    batch = Dim("batch", min=1, max=8)
    filt_dims = {1: length} if causal else {1: 2 * length - 1}
    x, filt = torch.randn(2, 4, 17, generator=generator), torch.randn(4, 17 if causal else 33, generator=generator)
    session = _session(LongConv(causal), (x, filt), ({0: batch, 2: length}, filt_dims), max_length)
    for b, n in ((1, 2), (3, 37), (2, 256), (5, 300)):  # 256: 2L is a power of two; 300: it is not
        x = torch.randn(b, 4, n, generator=generator)
        filt = torch.randn(4, n if causal else 2 * n - 1, generator=generator)
        assert relative_error(_run(session, x, filt), reference.long_conv(x.double(), filt.double(), causal)) < 1e-5


class SSD(torch.nn.Module):
    def forward(self, x, dt, a, b, c):
        return torch.ops.mahia.ssd_scan(x, dt, a, b, c, 16)


def test_ssd_scan_lowering_matches_reference_across_chunk_boundaries(generator: torch.Generator) -> None:
    heads, head_dim, state = 3, 5, 4

    def inputs(batch: int, length: int) -> tuple[torch.Tensor, ...]:
        x = torch.randn(batch, length, heads, head_dim, generator=generator)
        dt = torch.nn.functional.softplus(torch.randn(batch, length, heads, generator=generator)) * 0.3
        a = -torch.rand(heads, generator=generator) * 4 - 0.5
        b, c = (torch.randn(batch, length, state, generator=generator) for _ in range(2))
        return x, dt, a, b, c

    batch, length = Dim("batch", min=1, max=8), Dim("length", min=1, max=200)
    seq3 = {0: batch, 1: length}
    session = _session(SSD(), inputs(2, 21), (seq3, seq3, None, seq3, seq3))
    for b, n in ((1, 1), (3, 37), (2, 16), (1, 200)):  # shorter than a chunk, ragged, exact, many chunks
        args = inputs(b, n)
        want = reference.ssd_scan(*(t.double() for t in args), 16)
        assert relative_error(_run(session, *args), want) < 1e-5


class MoE(torch.nn.Module):
    def __init__(self, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k

    def forward(self, x, logits, mask, w1, w2):
        return torch.ops.mahia.moe_ffn(x, logits, mask, w1, w2, self.top_k, 0.0)


@pytest.mark.parametrize("top_k", [2, 4])  # 4 = num_experts: every expert used
def test_moe_lowering_is_exact_for_dropless_routing(top_k: int, generator: torch.Generator) -> None:
    experts, d_model, hidden = 4, 8, 12
    w1 = torch.randn(experts, 2 * hidden, d_model, generator=generator) * d_model ** -0.5
    w2 = torch.randn(experts, d_model, hidden, generator=generator) * hidden ** -0.5

    def inputs(tokens: int) -> tuple[torch.Tensor, ...]:
        mask = torch.rand(tokens, generator=generator) > 0.3
        mask[0] = True
        return (torch.randn(tokens, d_model, generator=generator), torch.randn(tokens, experts, generator=generator),
                mask, w1, w2)

    tokens = Dim("tokens", min=1, max=512)
    session = _session(MoE(top_k), inputs(9), ({0: tokens}, {0: tokens}, {0: tokens}, None, None))
    for n in (1, 37, 512):
        args = inputs(n)
        want = reference.moe_ffn(*(t.double() if t.is_floating_point() else t for t in args), top_k, 0.0)
        got = _run(session, *args)
        assert relative_error(got, want) < 1e-5
        assert torch.all(got[~args[2]] == 0), "masked tokens must get exactly zero"


def test_moe_lowering_refuses_capacity_limited_routing() -> None:
    w1, w2 = torch.randn(2, 8, 4), torch.randn(2, 4, 4)

    class Training(torch.nn.Module):
        def forward(self, x, logits, mask):
            return torch.ops.mahia.moe_ffn(x, logits, mask, w1, w2, 1, 1.25)

    args = (torch.randn(5, 4), torch.randn(5, 2), torch.ones(5, dtype=torch.bool))
    with pytest.raises(Exception, match="dropless only"):
        _session(Training(), args, None)


class GateCombine(torch.nn.Module):
    def forward(self, branches, gate_logits):
        return torch.ops.mahia.gate_combine(branches, gate_logits)


def test_gate_combine_lowering_matches_reference(generator: torch.Generator) -> None:
    batch, length = Dim("batch", min=1, max=8), Dim("length", min=1, max=300)
    session = _session(GateCombine(), (torch.randn(2, 9, 6, 3), torch.randn(2, 9, 3)),
                       ({0: batch, 1: length}, {0: batch, 1: length}))
    for b, n in ((1, 1), (3, 37)):
        branches, logits = torch.randn(b, n, 6, 3, generator=generator), torch.randn(b, n, 3, generator=generator)
        want = reference.gate_combine(branches.double(), logits.double())
        assert relative_error(_run(session, branches, logits), want) < 1e-6
