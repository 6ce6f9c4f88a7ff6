"""Reference long convolution by FFT: causal (Hyena) or two-sided (Fourier filter)."""

from __future__ import annotations

import torch
from torch import Tensor


def long_conv(x: Tensor, filt: Tensor, causal: bool) -> Tensor:
    """Depthwise linear convolution of x [B, D, L] with a per-channel filter, by FFT of size 2L.

    causal: filt is [D, L], y[b, d, t] = sum_{s <= t} filt[d, t - s] * x[b, d, s].
    two-sided: filt is [D, 2L - 1] over offsets -(L-1)..(L-1) (index o + L - 1),
    y[b, d, t] = sum_s filt[d, t - s + L - 1] * x[b, d, s].
    Zero padding to 2L makes the circular FFT product equal the linear convolution at every output
    we keep (the wrapped terms land outside [start, start + L)). Computed in float32 (float64 for
    float64 inputs): the FFT has no half-precision CPU kernel and loses too much in it.
    """
    if x.dim() != 3:
        raise ValueError(f"long_conv: x must be [B, D, L], got shape {tuple(x.shape)}")
    length = x.shape[-1]
    expected = length if causal else 2 * length - 1
    if filt.dim() != 2 or filt.shape[0] != x.shape[1] or filt.shape[1] != expected:
        raise ValueError(f"long_conv: filt must be [D={x.shape[1]}, {expected}] for "
                         f"{'causal' if causal else 'two-sided'} L={length}, got {tuple(filt.shape)}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    n = 2 * length
    spectrum = torch.fft.rfft(x.to(work), n=n) * torch.fft.rfft(filt.to(work), n=n)
    full = torch.fft.irfft(spectrum, n=n)
    start = 0 if causal else length - 1
    return full[..., start:start + length].to(x.dtype)
