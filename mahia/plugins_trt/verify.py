"""Checking plugin chains numerically: example inputs of an op, its chain run by the per-launch references, the op's
own reference (mahia.kernels.reference), and the comparison of an output with a reference over the elements its
kernel writes. Used by the tests (Triton interpreter), the ONNX Runtime wiring check and the GPU launch check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from mahia.kernels import reference
from mahia.plugins_trt.specs import Chain, walk

# Relative L2 error bounds per float type of a plugin's outputs against a float64 reference (output rounding
# dominates: bfloat16 ~4e-3, float16 ~5e-4 per element, over chains of a few roundings).
TOLERANCE = {"float32": 2e-5, "float16": 3e-3, "bfloat16": 2e-2, "float64": 1e-12}


def example_inputs(op: str, shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str],
                   generator: torch.Generator, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Random inputs of an op with the model's value ranges: SSD dt > 0 and a < 0, MoE masks with padding and
    router logits without ties, FP8 expert weights quantized with their per-channel scales, long filters scaled
    by 1/sqrt(L)."""
    def randn(name: str, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shapes[name], generator=generator) * scale

    if op == "gate_combine":
        raw = {"branches": randn("branches"), "logits": randn("logits", 2.0)}
    elif op == "long_conv":
        raw = {"x": randn("x"), "filt": randn("filt", shapes["x"][-1] ** -0.5)}
    elif op == "ssd_scan":
        raw = {"x": randn("x"), "dt": F.softplus(randn("dt") - 2.0), "a": -torch.exp(randn("a", 0.5)),
               "b": randn("b", 0.5), "c": randn("c", 0.5)}
    else:
        tokens, d_model = shapes["x"]
        hidden = shapes["w2"][2]
        logits = _untied(randn("router_logits"), getattr(torch, dtypes["router_logits"]), generator)
        raw = {"x": randn("x"), "router_logits": logits,
               "mask": torch.rand(tokens, generator=generator) > 0.2,
               "w1": randn("w1", d_model ** -0.5), "w2": randn("w2", hidden ** -0.5)}
        if op == "moe_ffn_fp8":
            (raw["w1"], raw["w1_scale"]), (raw["w2"], raw["w2_scale"]) = (
                reference.quantize_experts_fp8(raw["w1"]), reference.quantize_experts_fp8(raw["w2"]))
    return {name: value.to(getattr(torch, dtypes[name])).to(device) for name, value in raw.items()}


def _untied(logits: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Router logits whose rows have no two equal values once rounded to dtype: at a tie the kernels route to the
    lowest expert and the op reference's torch.topk promises no order, both valid routings with different
    results (in bfloat16 about 3% of 8-expert rows tie)."""
    for _ in range(100):
        ordered = logits.to(dtype).sort(dim=-1).values
        tied = (ordered[..., 1:] == ordered[..., :-1]).any(dim=-1)
        if not tied.any():
            return logits
        logits[tied] = torch.randn(int(tied.sum()), logits.shape[-1], generator=generator)
    raise RuntimeError("router logits: ties left after 100 draws")


def op_reference(op: str, inputs: Mapping[str, torch.Tensor], attributes: Mapping[str, int],
                 chunk_size: int | None = None) -> torch.Tensor:
    """The op's own reference (mahia.kernels.reference) on these inputs, dropless for the MoE."""
    t = inputs
    if op == "gate_combine":
        return reference.gate_combine(t["branches"], t["logits"])
    if op == "long_conv":
        return reference.long_conv(t["x"], t["filt"], bool(attributes["causal"]))
    if op == "ssd_scan":
        return reference.ssd_scan(t["x"], t["dt"], t["a"], t["b"], t["c"], chunk_size or attributes["chunk"])
    if op == "moe_ffn":
        return reference.moe_ffn(t["x"], t["router_logits"], t["mask"], t["w1"], t["w2"], attributes["top_k"], 0.0)
    return reference.moe_ffn_fp8(t["x"], t["router_logits"], t["mask"], t["w1"], t["w1_scale"], t["w2"],
                                 t["w2_scale"], attributes["top_k"], 0.0)


def run_references(chain: Chain, inputs: Mapping[str, torch.Tensor], attributes: Mapping[str, int],
                   tactics: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the chain (inputs, intermediates, output) computed by the per-launch references."""
    tensors = dict(inputs)
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in inputs.items()}
    float64 = {name: "float32" if d == "float64" else d for name, d in dtypes.items()}  # specs know float32
    for node in walk(chain, shapes, float64, attributes, tactics):
        outputs = node.spec.reference(node.sizes, {t.name: tensors[t.name] for t in node.spec.inputs})
        tensors.update(outputs)
    return tensors


def written_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 over the elements the reference writes (not NaN); inf when the output is
    not finite there."""
    written = ~torch.isnan(ref.double())
    out, ref = out.double()[written], ref.double()[written]
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))
