"""Reference long convolution by FFT: causal (Hyena) or two-sided (Fourier filter)."""

from __future__ import annotations

import torch
from torch import Tensor


def fft_length(length: int) -> int:
    """The FFT size for a sequence of `length`: the smallest 2^a 3^b 5^c 7^d >= 2 * length.

    Any size >= 2L is exact (see long_conv). cuFFT runs sizes with other prime factors by Bluestein's algorithm:
    at L = 2053 (2048 words + 5 tabular tokens, 2L = 2 * 2053, a prime) its `regular_bluestein_fft` kernels took
    17.2 ms of a 164.7 ms forward of `base` at 32 x 2048 on the H200 (benchmarks/forward_kernels.py, 2026-12-01).
    A symbolic length (torch.export with a dynamic sequence) keeps 2L: the size must not specialise the graph.
    """
    n = 2 * length
    if not isinstance(n, int):
        return n
    while True:
        rest = n
        for prime in (2, 3, 5, 7):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return n
        n += 1


def long_conv(x: Tensor, filt: Tensor, causal: bool) -> Tensor:
    """Depthwise linear convolution of x [B, D, L] with a per-channel filter, by FFT of size n >= 2L.

    causal: filt is [D, L], y[b, d, t] = sum_{s <= t} filt[d, t - s] * x[b, d, s].
    two-sided: filt is [D, 2L - 1] over offsets -(L-1)..(L-1) (index o + L - 1),
    y[b, d, t] = sum_s filt[d, t - s + L - 1] * x[b, d, s].
    Zero padding to n >= 2L makes the circular FFT product equal the linear convolution at every output
    we keep (the wrapped terms land outside [start, start + L)). On a GPU n is fft_length(L), a size
    cuFFT factors into small radices; on the CPU n stays 2L, because the shipped default's training
    is checked bit for bit (mahia.train.reproduce) and another size rounds differently. Computed in
    float32 (float64 for float64 inputs): the FFT has no half-precision CPU kernel and loses too much in it.
    """
    if x.dim() != 3:
        raise ValueError(f"long_conv: x must be [B, D, L], got shape {tuple(x.shape)}")
    length = x.shape[-1]
    expected = length if causal else 2 * length - 1
    if filt.dim() != 2 or filt.shape[0] != x.shape[1] or filt.shape[1] != expected:
        raise ValueError(f"long_conv: filt must be [D={x.shape[1]}, {expected}] for "
                         f"{'causal' if causal else 'two-sided'} L={length}, got {tuple(filt.shape)}")
    return fft_conv(x, filt, causal, fft_length(length) if x.is_cuda else 2 * length)


def fft_conv(x: Tensor, filt: Tensor, causal: bool, n: int) -> Tensor:
    """long_conv's product at FFT size n (any n >= 2L gives the same result up to rounding)."""
    length = x.shape[-1]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    spectrum = torch.fft.rfft(x.to(work), n=n) * torch.fft.rfft(filt.to(work), n=n)
    full = torch.fft.irfft(spectrum, n=n)
    start = 0 if causal else length - 1
    return full[..., start:start + length].to(x.dtype)
