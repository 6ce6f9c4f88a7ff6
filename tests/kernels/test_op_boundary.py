"""torch.export of the whole model keeps each hot op as one node, with dynamic batch and sequence."""

from __future__ import annotations

from collections import Counter

import torch
from torch.export import Dim, export

from mahia.model import INPUT_NAMES, build_model, get_config, random_inputs
from tests.conftest import relative_error


def test_export_keeps_custom_ops_as_single_nodes_with_dynamic_shapes(generator: torch.Generator) -> None:
    config = get_config("tiny")
    model = build_model(config, seed=0).eval()
    inputs = random_inputs(config, 4, 33, generator)
    batch, seq = Dim("batch", min=1, max=64), Dim("seq", min=1, max=config.max_seq_len)
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq},
              "numeric": {0: batch}, "categorical": {0: batch}}
    program = export(model, tuple(inputs[n] for n in INPUT_NAMES), dynamic_shapes=shapes)

    ops = Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function" and "mahia" in str(n.target))
    layers = config.n_layers
    assert ops == {"mahia.long_conv.default": 2 * layers, "mahia.ssd_scan.default": layers,
                   "mahia.moe_ffn.default": layers, "mahia.gate_combine.default": layers}
    assert not any("fft" in str(n.target) for n in program.graph.nodes), "every FFT must stay inside mahia::long_conv"

    for b, length in [(1, 1), (3, 37), (17, 129)]:
        unseen = random_inputs(config, b, length, generator)
        with torch.no_grad():
            expected = model(**unseen)
        assert relative_error(program.module()(*(unseen[n] for n in INPUT_NAMES)), expected) < 1e-6
