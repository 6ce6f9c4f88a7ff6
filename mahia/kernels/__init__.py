"""The model's hot ops as `torch.library` custom ops (`mahia::long_conv`, `mahia::ssd_scan`,
`mahia::moe_ffn`), with pure-PyTorch references and device kernels of the same signatures."""

from mahia.kernels.ops import long_conv, moe_ffn, ssd_scan

__all__ = ["long_conv", "moe_ffn", "ssd_scan"]
