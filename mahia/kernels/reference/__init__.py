"""Pure-PyTorch references of the hot ops: the ground truth every kernel and lowering is held to."""

from mahia.kernels.reference.gate_combine import gate_combine
from mahia.kernels.reference.long_conv import long_conv
from mahia.kernels.reference.meta_attention import hyena_short_conv, meta_attention_combine, ssd_gated_norm
from mahia.kernels.reference.moe_ffn import moe_ffn, route_tokens
from mahia.kernels.reference.moe_ffn_fp8 import dequantize_experts_fp8, moe_ffn_fp8, quantize_experts_fp8
from mahia.kernels.reference.ssd_scan import ssd_scan

__all__ = ["dequantize_experts_fp8", "gate_combine", "hyena_short_conv", "long_conv", "meta_attention_combine",
           "moe_ffn", "moe_ffn_fp8", "quantize_experts_fp8", "route_tokens", "ssd_gated_norm", "ssd_scan"]
