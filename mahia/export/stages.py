"""The pipeline's stages before the precision's build: load -> export -> lower.

Each stage is a function from one artifact to the next; pipeline.py chains them, times them and
records them in the manifest. How the `mahia::` custom ops are written in ONNX is the flavour's
(flavours.py): "portable" lowers all four (long_conv, ssd_scan, moe_ffn, gate_combine) to standard
ONNX ops; a "tensorrt" flavour with plugin nodes plugs in beside it as another registry entry.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator

import onnx
import onnx_ir
import onnxscript.optimizer
import torch
from torch.export import Dim

from mahia.default import LoadedModel
from mahia.default import load_model as load_source
from mahia.export import graph_passes
from mahia.export.config import DEFAULT_SEQ, DimRange, ShapeProfile
from mahia.export.errors import ExportError
from mahia.export.flavours import LoweringSizes, get_flavour
from mahia.export.fp16 import CLASS_HIERARCHY_KEY
from mahia.model import INPUT_NAMES, OUTPUT_NAMES, MahiaX, ModelConfig, ModelSource, get_config, random_inputs

# What lower_to_onnx does after the exporter, as the manifest records it.
OPTIMIZER = ("onnxscript (torch.onnx optimize=True), then graph_passes.share_equal_shapes and a second onnxscript "
             "pass (constant folding without size limits, CSE)")


def load_model(source: ModelSource, expected_config: str | None = None) -> LoadedModel:
    """Stage 1: the eager model from a checkpoint (which must have `expected_config` when it is named), a named
    config, or the embedded default."""
    return load_source(source, get_config(expected_config) if expected_config else None)


def resolve_profile(config: ModelConfig, batch: DimRange, seq: DimRange | None) -> ShapeProfile:
    """The shape profile, with the default sequence range fitted to the model and every range checked."""
    if seq is None:
        top = min(DEFAULT_SEQ[2], config.max_seq_len)
        seq = DimRange("seq", DEFAULT_SEQ[0], min(DEFAULT_SEQ[1], top), top)
    if seq.max > config.max_seq_len:
        raise ValueError(f"seq range {seq}: max {seq.max} exceeds max_seq_len={config.max_seq_len} "
                         f"of config {config.name!r}")
    return ShapeProfile(batch, seq)


def dynamic_shapes(profile: ShapeProfile) -> dict[str, dict[int, Dim]]:
    """torch.export dynamic shapes: batch on every input, sequence on the token inputs."""
    batch = Dim("batch", min=profile.batch.min, max=profile.batch.max)
    seq = Dim("seq", min=profile.seq.min, max=profile.seq.max)
    return {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq},
            "numeric": {0: batch}, "categorical": {0: batch}}


def example_inputs(config: ModelConfig, profile: ShapeProfile) -> dict[str, torch.Tensor]:
    """Inputs to trace with (values do not matter for tracing; the generator keeps them reproducible)."""
    batch, seq = profile.example_point()
    return random_inputs(config, batch, seq, torch.Generator().manual_seed(0))


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence the exporters' progress prints and warnings (their errors still propagate)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_program(model: MahiaX, profile: ShapeProfile,
                   dtype: torch.dtype = torch.float32) -> torch.export.ExportedProgram:
    """Stage 2: torch.export with dynamic batch and sequence; the custom ops stay single nodes.

    For another dtype a cast copy is exported: the model passed in stays fp32, it is the reference.
    """
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype).eval()
    inputs = example_inputs(model.config, profile)
    with quiet_exporters():
        return torch.export.export(model, (), kwargs=inputs, dynamic_shapes=dynamic_shapes(profile), strict=False)


# Elements up to which constant subgraphs are folded after export (the optimizer's default is 8192).
FOLD_LIMIT = 1 << 31


def lower_to_onnx(program: torch.export.ExportedProgram, config: ModelConfig, profile: ShapeProfile,
                  opset: int, flavour_name: str = "portable") -> onnx.ModelProto:
    """Stage 3: the ExportedProgram as ONNX (custom ops through the flavour's translation table).

    The exporter runs the onnxscript optimizer (constant folding, dead code, common subexpressions).
    Afterwards: per-node debug metadata (stack traces with absolute paths) is dropped so the bytes do
    not depend on where the code lives, except each node's module classes (CLASS_HIERARCHY_KEY), which
    the fp16 build reads; and graph value_info is dropped because the exporter's DFT shapes are those of
    the traced length (ONNX Runtime then fails at other lengths; it re-infers).
    """
    try:
        flavour = get_flavour(flavour_name)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if opset < flavour.min_opset:
        raise ExportError(f"opset {opset} is too old: the {flavour.name} flavour needs opset >= {flavour.min_opset}")
    inputs = example_inputs(config, profile)
    with quiet_exporters():
        onnx_program = torch.onnx.export(program, (), kwargs=inputs, dynamo=True, opset_version=opset,
                                         dynamic_shapes=dynamic_shapes(profile), input_names=list(INPUT_NAMES),
                                         output_names=list(OUTPUT_NAMES), optimize=True, verbose=False,
                                         custom_translation_table=flavour.translations(lowering_sizes(config, profile)))
    # Sizes read from equal symbolic dims become one value, so the optimizer's common-subexpression pass
    # builds what depends on them once (the long convolutions' twiddle matrices, which took 23 % of the int8
    # graph's kernel time at 8 x 384 when each call built its own).
    # Its constant folding, without size limits, folds each expert's weight slice (Gather + Transpose of
    # the batched [E, ...] expert weights in the sparse MoE lowering) into an initializer: ORT then runs
    # plain MatMuls on constant weights, and the quantizers see (and quantize) them.
    graph_passes.share_equal_shapes(onnx_program.model.graph)
    onnxscript.optimizer.optimize(onnx_program.model, input_size_limit=FOLD_LIMIT, output_size_limit=FOLD_LIMIT)
    model = onnx_ir.serde.serialize_model(onnx_program.model)
    del model.graph.value_info[:]
    for node in model.graph.node:
        kept = [(p.key, p.value) for p in node.metadata_props if p.key == CLASS_HIERARCHY_KEY]
        del node.metadata_props[:]
        for key, value in kept:
            node.metadata_props.add(key=key, value=value)
    del model.metadata_props[:]
    model.producer_name, model.producer_version = "mahia", __import__("mahia").__version__
    model.doc_string = f"MAHIA-X {config.name}, {flavour.name} ONNX flavour"
    if flavour.finish is not None:
        try:
            flavour.finish(model)
        except ValueError as exc:
            raise ExportError(f"the {flavour.name} lowering: {exc}") from None
    return model


def max_tokens(config: ModelConfig, profile: ShapeProfile) -> int:
    """The longest sequence the exported graph sees: the profile's text maximum plus the tabular tokens."""
    return profile.seq.max + config.num_tabular_tokens


def lowering_sizes(config: ModelConfig, profile: ShapeProfile) -> LoweringSizes:
    """What the flavours' lowerings depend on: the longest sequence, the opt point's tokens (batch x (sequence +
    tabular tokens)), the experts and top-k."""
    opt_tokens = profile.batch.opt * (profile.seq.opt + config.num_tabular_tokens)
    return LoweringSizes(max_tokens(config, profile), opt_tokens, config.num_experts, config.top_k)
