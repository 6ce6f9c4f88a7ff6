"""The model's hot ops as `torch.library` custom ops (`mahia::long_conv`, `mahia::ssd_scan`,
`mahia::moe_ffn`, `mahia::moe_ffn_fp8`, `mahia::gate_combine`), with pure-PyTorch references and device kernels
of the same signatures; and three that only backend "cuda" runs, fusing the meta-attention's elementwise ends
(`mahia::hyena_short_conv`, `mahia::meta_attention_combine`, `mahia::ssd_gated_norm`).

`use_reference_ops()` makes CUDA tensors run the references instead of the Triton kernels (see mahia.kernels.ops)."""

from mahia.kernels.ops import (
    gate_combine,
    hyena_short_conv,
    long_conv,
    meta_attention_combine,
    moe_ffn,
    moe_ffn_fp8,
    reference_ops_enabled,
    ssd_gated_norm,
    ssd_scan,
    use_reference_ops,
)

__all__ = ["gate_combine", "hyena_short_conv", "long_conv", "meta_attention_combine", "moe_ffn", "moe_ffn_fp8",
           "reference_ops_enabled", "ssd_gated_norm", "ssd_scan", "use_reference_ops"]
