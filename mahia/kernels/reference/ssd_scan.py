"""Reference Mamba-2 SSD scan in the chunked (matmul) form, for any sequence length."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_sum(a: Tensor) -> Tensor:
    """out[..., i, j] = a[..., j+1] + ... + a[..., i] for i >= j, and -inf above the diagonal.

    Built as a masked cumulative sum (not a difference of cumsums) so it stays exact for long
    chunks; exp() of it is the causal decay matrix of one chunk.
    """
    t = a.shape[-1]
    a = a[..., None].expand(*a.shape, t)
    below = torch.ones(t, t, dtype=torch.bool, device=a.device).tril(-1)
    sums = a.masked_fill(~below, 0).cumsum(dim=-2)
    on_or_below = torch.ones(t, t, dtype=torch.bool, device=a.device).tril(0)
    return sums.masked_fill(~on_or_below, float("-inf"))


def ssd_scan(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk_size: int) -> Tensor:
    """y = SSM(x) with state h_t = exp(dt_t a) h_{t-1} + dt_t b_t x_t^T, y_t = h_t c_t.

    Shapes: x [B, L, H, P], dt [B, L, H] (positive), a [H] (negative), b and c [B, L, N] (one group
    shared by all heads), result [B, L, H, P]. L is padded to a multiple of chunk_size with dt = 0,
    which neither decays nor feeds the state, so the padding changes no output. Computed in float32
    (float64 for float64 inputs).
    """
    batch, length, heads, head_dim = x.shape
    if dt.shape != (batch, length, heads) or a.shape != (heads,):
        raise ValueError(f"ssd_scan: expected dt [{batch}, {length}, {heads}] and a [{heads}], "
                         f"got {tuple(dt.shape)} and {tuple(a.shape)}")
    if b.shape[:2] != (batch, length) or c.shape != b.shape:
        raise ValueError(f"ssd_scan: expected b and c [{batch}, {length}, N], "
                         f"got {tuple(b.shape)} and {tuple(c.shape)}")
    if chunk_size < 1:
        raise ValueError(f"ssd_scan: chunk_size must be >= 1, got {chunk_size}")
    out_dtype = x.dtype
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    pad = (-length) % chunk_size
    x, dt, b, c = (t.to(work) for t in (x, dt, b, c))
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        b = F.pad(b, (0, 0, 0, pad))
        c = F.pad(c, (0, 0, 0, pad))
    chunks = (length + pad) // chunk_size
    state = b.shape[-1]
    xs = (x * dt[..., None]).reshape(batch, chunks, chunk_size, heads, head_dim)
    a_dt = (dt * a.to(work)).reshape(batch, chunks, chunk_size, heads).permute(0, 3, 1, 2)  # b h c l
    b = b.reshape(batch, chunks, chunk_size, state)
    c = c.reshape(batch, chunks, chunk_size, state)
    a_cumsum = a_dt.cumsum(dim=-1)

    # 1. Outputs from inputs of the same chunk: a masked (causal, decayed) attention-like matmul.
    decay = torch.exp(segment_sum(a_dt))  # b h c l s
    scores = torch.einsum("bcln,bcsn->bcls", c, b)
    y_diag = torch.einsum("bcls,bhcls,bcshp->bclhp", scores, decay, xs)

    # 2. Each chunk's final state, as if it started from zero.
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum)  # b h c l
    states = torch.einsum("bcln,bhcl,bclhp->bchpn", b, decay_to_end, xs)

    # 3. Pass states across chunks: state entering chunk z is the decayed sum of earlier chunk states.
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    chunk_decay = torch.exp(segment_sum(F.pad(a_cumsum[..., -1], (1, 0))))  # b h c+1 c+1
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)[:, :-1]

    # 4. Outputs from the state entering each chunk.
    y_off = torch.einsum("bcln,bchpn,bhcl->bclhp", c, states, torch.exp(a_cumsum))
    y = (y_diag + y_off).reshape(batch, chunks * chunk_size, heads, head_dim)
    return y[:, :length].to(out_dtype)
