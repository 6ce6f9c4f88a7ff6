"""The FP8 deployment of the eager model: dense projections as FP8 GEMMs (`torch._scaled_mm`, E4M3 activations
with the calibrated per-tensor scale, E4M3 weights with one scale per output channel) and the experts through
`mahia::moe_ffn_fp8` (E4M3 weights, per-channel scales; E4M3 activations too where calibration.json has the
experts' ranges, as every fp8 artifact's does: the input's over all tokens, each expert's hidden rows', the
tensors the FP8 ONNX export puts its Q/DQ pairs on).

Which layers: the same rule the FP8 ONNX export follows (mahia.calibration.onnx_names.KEEP_FLOAT_PATTERN:
routers, gates, the fabric, the implicit filters and the head stay in the activation dtype), for every
nn.Linear that has a calibrated input range `<module path>:input` (calibration.json's eager tensors) and whose
input width is a multiple of 16 (what the FP8 tensor-core GEMM takes; output widths are zero-padded to 16).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mahia import kernels
from mahia.calibration.onnx_names import KEEP_FLOAT_PATTERN
from mahia.calibration.table import CalibrationTable
from mahia.kernels.reference import quantize_experts_fp8
from mahia.kernels.reference.moe_ffn_fp8 import E4M3_MAX
from mahia.model import MahiaX
from mahia.model.moe import MixtureOfExperts

FP8 = torch.float8_e4m3fn
GEMM_MULTIPLE = 16  # torch._scaled_mm: both matrix widths multiples of 16
MOE_ACTIVATION_PATTERN = r"/moe_ffn:(x|expert\d+\.hidden)$"  # the experts' calibrated activations


def scales_from_ranges(amax: Mapping[str, float]) -> dict[str, float]:
    """{name: activation scale (amax / 448)} of the calibrated eager tensors ({eager name: amax},
    mahia.calibration.ranges) the FP8 deployment quantises: every module input, by its module path (its eager
    name is `<module path>:input`), and the experts' input and hidden rows (`<moe path>/moe_ffn:x`,
    `<moe path>/moe_ffn:expert<e>.hidden`), by their eager names."""
    return {name.removesuffix(":input"): max(value, 1e-12) / E4M3_MAX for name, value in amax.items()
            if name.endswith(":input") or re.search(MOE_ACTIVATION_PATTERN, name)}


def activation_scales(table: CalibrationTable) -> dict[str, float]:
    """The activation scales of an FP8 calibration table (calibration.json's eager tensors)."""
    if table.dtype != "float8e4m3fn":
        raise ValueError(f"calibration table of dtype {table.dtype!r}: the FP8 deployment needs a float8e4m3fn table")
    return scales_from_ranges({name: entry.amax for name, entry in table.eager_tensors.items()})


class Fp8Linear(nn.Module):
    """y = x W^T + b with x quantised to E4M3 by a fixed (calibrated) scale and W stored in E4M3 per output channel."""

    def __init__(self, linear: nn.Linear, input_scale: float, dtype: torch.dtype) -> None:
        super().__init__()
        out_features, in_features = linear.weight.shape
        if in_features % GEMM_MULTIPLE:
            raise ValueError(f"Fp8Linear: input width {in_features} is not a multiple of {GEMM_MULTIPLE}")
        self.in_features, self.out_features = in_features, out_features
        padded = -(-out_features // GEMM_MULTIPLE) * GEMM_MULTIPLE
        weight = torch.zeros(padded, in_features, dtype=torch.float32, device=linear.weight.device)
        weight[:out_features] = linear.weight.detach().float()
        weight_fp8, weight_scale = quantize_experts_fp8(weight)  # one scale per row = output channel
        self.register_buffer("weight", weight_fp8)
        self.register_buffer("weight_scale", weight_scale[None, :].contiguous())  # [1, N]: row-wise scaling
        self.register_buffer("input_scale", torch.tensor([[float(input_scale)]]))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype))
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_features] -> [..., out_features] in the activation dtype."""
        flat = x.reshape(-1, self.in_features)
        # contiguous: the FP8 GEMM takes a row-major activation, and x may be a transposed layout's view (the
        # compiled deployment's inlined gate sum at batch 1 was: cuBLASLt refused it, H200, 2026-12-01)
        quantized = (flat.float() / self.input_scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8).contiguous()
        # Row-wise scaling (the per-channel weight scales) takes a per-row activation scale: the one calibrated
        # scale, repeated.
        scale_a = self.input_scale.expand(flat.shape[0], 1).contiguous()
        y = torch._scaled_mm(quantized, self.weight.t(), scale_a=scale_a, scale_b=self.weight_scale,
                             out_dtype=self.dtype)[:, :self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class Fp8MixtureOfExperts(nn.Module):
    """MixtureOfExperts at inference with E4M3 expert weights and `mahia::moe_ffn_fp8`; its router in the activation
    dtype here, in float32 once `deployable_module` has made it a Float32Router.

    With `x_scale` (the input's E4M3 scale) and `hidden_scales` (one per expert), the activations are E4M3 too and
    both expert GEMMs run on FP8 tensor cores; without, the weights are widened to the activation dtype in the
    kernels (the products run in bf16)."""

    def __init__(self, moe: MixtureOfExperts, dtype: torch.dtype, x_scale: float | None = None,
                 hidden_scales: Sequence[float] | None = None) -> None:
        super().__init__()
        self.top_k = moe.top_k
        self.router = copy.deepcopy(moe.router).to(dtype)
        for name in ("w1", "w2"):
            weight, scale = quantize_experts_fp8(getattr(moe, name).detach().float())
            self.register_buffer(name, weight)
            self.register_buffer(f"{name}_scale", scale)
        if (x_scale is None) != (hidden_scales is None):
            raise ValueError("Fp8MixtureOfExperts: give both x_scale and hidden_scales (FP8 activations) or neither")
        if hidden_scales is not None and len(hidden_scales) != moe.w1.shape[0]:
            raise ValueError(f"Fp8MixtureOfExperts: {len(hidden_scales)} hidden scales for {moe.w1.shape[0]} experts")
        self.register_buffer("x_scale", None if x_scale is None else torch.tensor([float(x_scale)]))
        self.register_buffer("hidden_scale", None if hidden_scales is None else
                             torch.tensor([float(s) for s in hidden_scales]))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, L, D], mask [B, L] -> (y [B, L, D], router_logits [B*L, E]); dropless."""
        flat = x.reshape(-1, x.shape[-1])
        logits = self.router(flat)
        y = kernels.moe_ffn_fp8(flat, logits, mask.reshape(-1).bool(), self.w1, self.w1_scale, self.w2,
                                self.w2_scale, self.top_k, 0.0, self.x_scale, self.hidden_scale)
        return y.reshape(x.shape), logits


def moe_activation_scales(scales: Mapping[str, float], path: str,
                          num_experts: int) -> tuple[float, list[float]] | tuple[None, None]:
    """(input scale, hidden scale per expert) of the MoE at `path` from the deployment's scales, or (None, None)
    where they do not hold all of them."""
    names = [f"{path}/moe_ffn:x"] + [f"{path}/moe_ffn:expert{e}.hidden" for e in range(num_experts)]
    if not all(name in scales for name in names):
        return None, None
    return scales[names[0]], [scales[name] for name in names[1:]]


def fp8_linear_layers(model: nn.Module, scales: Mapping[str, float]) -> list[str]:
    """Paths of the Linear layers the FP8 deployment runs as FP8 GEMMs (see the module docstring)."""
    return [path for path, module in model.named_modules()
            if isinstance(module, nn.Linear) and path in scales and not re.search(KEEP_FLOAT_PATTERN, path)
            and module.in_features % GEMM_MULTIPLE == 0]


def to_fp8(model: MahiaX, scales: Mapping[str, float], device: torch.device | str,
           dtype: torch.dtype = torch.bfloat16) -> tuple[MahiaX, list[str]]:
    """A copy of the fp32 `model` on `device`: activations in `dtype`, FP8 GEMMs and experts where the rule says;
    returns it with the paths of the FP8 Linear layers. Weights are quantised from the fp32 originals."""
    layers = fp8_linear_layers(model, scales)
    deployed = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    for path in layers:
        deployed.set_submodule(path, Fp8Linear(model.get_submodule(path), scales[path], dtype).to(device))
    for path, module in model.named_modules():
        if isinstance(module, MixtureOfExperts):
            x_scale, hidden_scales = moe_activation_scales(scales, path, module.w1.shape[0])
            deployed.set_submodule(path, Fp8MixtureOfExperts(module, dtype, x_scale, hidden_scales).to(device))
    return deployed, layers
