"""The pipeline's stages before verification: load -> export -> lower -> build (precision).

Each stage is a function from one artifact to the next; pipeline.py chains them, times them and
records them in the manifest. The ONNX flavour is a table of custom-op translations: "portable"
lowers the `mahia::` ops to standard ONNX ops; a "tensorrt" flavour (plugin nodes in a custom domain
for the same three ops) plugs in beside it as another entry of ONNX_FLAVOURS.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir
import onnxscript.optimizer
import torch
from torch.export import Dim

from mahia.export import graph_passes, onnx_lowering
from mahia.export.config import DEFAULT_SEQ, DimRange, ModelSource, ShapeProfile
from mahia.model import INPUT_NAMES, OUTPUT_NAMES, MahiaX, ModelConfig, build_model, get_config, random_inputs
from mahia.model.checkpoint import load_checkpoint, text_tokens_of

# Each flavour: the custom_translation_table for a graph whose sequences are at most N tokens long.
ONNX_FLAVOURS: dict[str, Callable[[int], dict[Callable, Callable]]] = {"portable": onnx_lowering.portable_translations}


class ExportError(RuntimeError):
    """A stage could not produce its artifact; the message says which stage and why."""


@dataclass(frozen=True)
class LoadedModel:
    """The eager fp32 model, where it came from and an honest label of what it is."""

    model: MahiaX
    config: ModelConfig
    label: str
    trained: bool
    source: str
    weights_sha256: str
    text_tokens: int  # tokens per text it was trained on: what the task check feeds it


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every state-dict tensor (name, dtype, shape, bytes) in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_model(source: ModelSource) -> LoadedModel:
    """Stage 1: the eager model from a checkpoint, a named config, or the embedded default."""
    if source.checkpoint is not None:
        expected = get_config(source.config_name) if source.config_name else None
        model, metadata = load_checkpoint(source.checkpoint, expected)
        trained = metadata.get("trained", "").strip().lower() in ("1", "true", "yes")
        label = metadata.get("label") or f"checkpoint {Path(source.checkpoint).name}"
        origin = f"checkpoint {source.checkpoint}"
        text_tokens = text_tokens_of(model, metadata)
    elif source.config_name is not None:
        model = build_model(get_config(source.config_name), seed=source.seed).eval()
        label, trained = f"{source.config_name}, seed {source.seed}, untrained (random initialisation)", False
        origin = f"config {source.config_name}"
        text_tokens = model.config.max_seq_len
    else:
        from mahia.default import load_default_model

        default = load_default_model()
        model, label, trained, origin = default.model.eval(), default.label, default.trained, "embedded default"
        text_tokens = default.text_tokens
    return LoadedModel(model.eval(), model.config, label, trained, origin, weights_sha256(model), text_tokens)


def resolve_profile(config: ModelConfig, batch: DimRange, seq: DimRange | None) -> ShapeProfile:
    """The shape profile, with the default sequence range fitted to the model and every range checked."""
    if seq is None:
        top = min(DEFAULT_SEQ[2], config.max_seq_len)
        seq = DimRange("seq", DEFAULT_SEQ[0], min(DEFAULT_SEQ[1], top), top)
    if seq.max > config.max_seq_len:
        raise ValueError(f"seq range {seq}: max {seq.max} exceeds max_seq_len={config.max_seq_len} of config {config.name!r}")
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


def export_program(model: MahiaX, profile: ShapeProfile, dtype: torch.dtype = torch.float32) -> torch.export.ExportedProgram:
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
                  opset: int, flavour: str = "portable") -> onnx.ModelProto:
    """Stage 3: the ExportedProgram as ONNX (custom ops through the flavour's translation table).

    The exporter runs the onnxscript optimizer (constant folding, dead code, common subexpressions).
    Afterwards: per-node debug metadata (stack traces with absolute paths) is dropped so the bytes do
    not depend on where the code lives, and graph value_info is dropped because the exporter's DFT
    shapes are those of the traced length (ONNX Runtime then fails at other lengths; it re-infers).
    """
    if flavour not in ONNX_FLAVOURS:
        raise ExportError(f"unknown ONNX flavour {flavour!r}; built here: {', '.join(ONNX_FLAVOURS)}")
    if opset < 21:
        raise ExportError(f"opset {opset} is too old: the portable flavour needs opset >= 21")
    inputs = example_inputs(config, profile)
    with quiet_exporters():
        onnx_program = torch.onnx.export(program, (), kwargs=inputs, dynamo=True, opset_version=opset,
                                         dynamic_shapes=dynamic_shapes(profile), input_names=list(INPUT_NAMES),
                                         output_names=list(OUTPUT_NAMES), optimize=True, verbose=False,
                                         custom_translation_table=ONNX_FLAVOURS[flavour](max_tokens(config, profile)))
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
        del node.metadata_props[:]
    del model.metadata_props[:]
    model.producer_name, model.producer_version = "mahia", __import__("mahia").__version__
    model.doc_string = f"MAHIA-X {config.name}, {flavour} ONNX flavour"
    return model


def max_tokens(config: ModelConfig, profile: ShapeProfile) -> int:
    """The longest sequence the exported graph sees: the profile's text maximum plus the tabular tokens."""
    return profile.seq.max + config.num_tabular_tokens


def check_onnx(path: Path) -> None:
    """Full ONNX checker (with shape inference) on a saved model; raises ExportError naming the file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {str(exc).splitlines()[0]}") from None
