"""What the Toeplitz long-conv kernel waits on: the filter gather, measured against a vectorised load.

    PYTHONPATH=$PWD python3 benchmarks/long_conv_gather.py [--out DIR]

The kernel builds each K x K Toeplitz tile H[i, j] = filt[c + i - j] with one 2-byte load per element, since no
row of the tile starts at an aligned address. Three ways to get the tile, otherwise the same kernel:
- "gather": the shipped kernel's element loads;
- "copies": eight copies of the reversed filter, copy r shifted by r elements, so that every row of the tile is a
  16-byte-aligned run in one of them (vector loads; the copies cost a pass over 8x the filter first, included);
- "dense": one of two contiguous K x K blocks by lag (wrong taps): a bound on what any way of getting the tile can
  save.
With --sweep, "copies" is timed over tile configs too (K, output blocks and batch rows per program, warps, stages).
bf16, 768 channels (--channels), `do_bench_cudagraph`; "gather" and "copies" are checked against float64.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.language as tl
import triton.testing

from mahia.kernels import reference
from mahia.kernels.triton import long_conv as kernel
from mahia.kernels.triton.launch import mma_dtype

WAYS = ("gather", "copies", "dense")
COPIES = tl.constexpr(8)  # bf16 elements in a 16-byte vector


@triton.jit
def toeplitz_variant_kernel(x_ptr, filt_ptr, copies_ptr, out_ptr, batch, length, filt_len, filt_shift,
                            stride_xb, stride_xd, stride_fd, copy_len, copy_pad,
                            WAY: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_K: tl.constexpr, NT: tl.constexpr,
                            BLOCK_N: tl.constexpr, MMA: tl.constexpr):
    d = tl.program_id(0)
    t1_first = tl.program_id(1) * NT
    b_first = tl.program_id(2) * (BLOCK_N // NT)
    num_blocks = tl.cdiv(length, BLOCK_K)
    rows = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, BLOCK_N)
    col_b = b_first + cols // NT
    col_t1 = t1_first + cols % NT
    col_ok = col_b < batch
    x_base = x_ptr + d * stride_xd + col_b * stride_xb
    f_base = filt_ptr + d * stride_fd
    c_base = copies_ptr + d * (COPIES * copy_len)
    if CAUSAL:
        lag_lo = 0
    else:
        lag_lo = t1_first - num_blocks + 1
    lag_hi = tl.minimum(t1_first + NT, num_blocks)
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for delta in range(lag_lo, lag_hi):
        if WAY == 0:
            f_idx = delta * BLOCK_K + rows[:, None] - rows[None, :] + filt_shift
            tile = tl.load(f_base + f_idx, mask=(f_idx >= 0) & (f_idx < filt_len), other=0.0)
        elif WAY == 1:
            # filt[c + i - j] = reversed[filt_len - 1 - c - i + j]: row i is a run starting at p_i; copy r holds
            # reversed[m + r - copy_pad] at m, so the run starts at the multiple of 8 p_i - r in copy p_i % 8.
            p = filt_len - 1 - delta * BLOCK_K - filt_shift + copy_pad - rows
            r = p % COPIES
            start = tl.multiple_of(r * copy_len + p - r, COPIES)
            tile = tl.load(c_base + start[:, None] + rows[None, :])
        else:
            tile = tl.load(copies_ptr + (delta % 2) * BLOCK_K * BLOCK_K + rows[:, None] * BLOCK_K + rows[None, :])
        src = (col_t1 - delta) * BLOCK_K
        s = src[None, :] + rows[:, None]
        xs = tl.load(x_base[None, :] + s, mask=col_ok[None, :] & (s >= 0) & (s < length), other=0.0)
        acc = tl.dot(tile.to(MMA), xs.to(MMA), acc)
    t = col_t1[None, :] * BLOCK_K + rows[:, None]
    tl.store(out_ptr + d * stride_xd + col_b[None, :] * stride_xb + t, acc.to(out_ptr.dtype.element_ty),
             mask=col_ok[None, :] & (t < length))


def shifted_copies(filt: torch.Tensor, block_k: int) -> tuple[torch.Tensor, int, int]:
    """[D, 8, copy_len]: copy r at m holds reversed filt at m + r - pad (zero outside), pad = block_k + 8."""
    copies = COPIES.value
    pad = block_k + copies
    filt_len = filt.shape[-1]
    copy_len = triton.cdiv(filt_len + 2 * pad, copies) * copies
    padded = torch.nn.functional.pad(filt.flip(-1), (pad, copy_len + copies - filt_len - pad))
    return padded.unfold(-1, copy_len, 1)[:, :copies].contiguous(), copy_len, pad


def sweep_configs(batch: int) -> list[dict[str, int]]:
    """K in {64, 128}; (output blocks, batch rows) per program; 4 or 8 warps; 2 or 4 stages."""
    shapes = [(2, 32), (4, 16), (4, 32), (8, 16), (8, 32), (16, 8)] if batch >= 8 else [(8, 1), (16, 1), (32, 1)]
    return [{"BLOCK_K": k, "NT": nt, "BLOCK_N": max(16, nt * min(rows, triton.next_power_of_2(batch))),
             "num_warps": w, "num_stages": st}
            for k in (64, 128) for nt, rows in shapes for w in (4, 8) for st in (2, 4)]


def run(way: str, x: torch.Tensor, filt: torch.Tensor, causal: bool,
        cfg: dict[str, int] | None = None) -> torch.Tensor:
    """One call of the variant kernel, the shipped kernel's tiles unless cfg (the copies built inside, as a call
    would)."""
    batch, channels, length = x.shape
    cfg = cfg or kernel.choose_config(batch, length)
    filt_len = filt.shape[-1]
    if way == "copies":
        copies, copy_len, copy_pad = shifted_copies(filt, cfg["BLOCK_K"])
    else:  # "dense" reads one K x K block of this buffer
        copies, copy_len, copy_pad = torch.randn(2 * cfg["BLOCK_K"] ** 2, dtype=x.dtype, device=x.device), 0, 0
    out = torch.empty_like(x)
    grid = (channels, triton.cdiv(triton.cdiv(length, cfg["BLOCK_K"]), cfg["NT"]),
            triton.cdiv(batch, cfg["BLOCK_N"] // cfg["NT"]))
    toeplitz_variant_kernel[grid](
        x, filt, copies, out, batch, length, filt_len, 0 if causal else length - 1, channels * length, length,
        filt_len, copy_len, copy_pad, WAY=WAYS.index(way), CAUSAL=causal, BLOCK_K=cfg["BLOCK_K"], NT=cfg["NT"],
        BLOCK_N=cfg["BLOCK_N"], MMA=mma_dtype("bf16", toeplitz_variant_kernel), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
    return out


def main() -> None:
    """One line per (length, filter, batch): each way's time and error, the shipped kernel's time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,2048,2064")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--sweep", action="store_true", help="also time 'copies' over tile configs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bench = triton.testing.do_bench_cudagraph if device == "cuda" else (lambda fn, rep: float("nan"))
    rows = []
    print("    L  filter     B  " + "  ".join(f"{w:>8s} ms" for w in WAYS) + "  shipped ms  gather err  copies err")
    for length in (int(v) for v in args.lengths.split(",")):
        for causal in (True, False):
            for batch in (int(v) for v in args.batches.split(",")):
                x = torch.randn(batch, args.channels, length, device=device, dtype=torch.bfloat16)
                filt = torch.randn(args.channels, length if causal else 2 * length - 1, device=device,
                                   dtype=torch.bfloat16) / length
                want = reference.long_conv(x.double(), filt.double(), causal)
                errors = {way: float((run(way, x, filt, causal).double() - want).norm() / want.norm())
                          for way in ("gather", "copies")}
                times = {way: bench(lambda: run(way, x, filt, causal), rep=40) for way in WAYS}
                shipped = bench(lambda: kernel.long_conv(x, filt, causal), rep=40)
                row = {"length": length, "causal": causal, "batch": batch, "ms": times, "shipped_ms": shipped,
                       "rel_error": errors}
                print(f"{length:5d}  {'causal' if causal else 'two-sided':9s} {batch:2d}  "
                      + "  ".join(f"{times[w]:11.4f}" for w in WAYS)
                      + f"  {shipped:10.4f}  {errors['gather']:10.1e}  {errors['copies']:10.1e}", flush=True)
                if args.sweep:
                    row["sweep"] = []
                    for cfg in sweep_configs(batch):
                        try:
                            run("copies", x, filt, causal, cfg)
                        except triton.runtime.errors.OutOfResources:  # K = 128 with 4 stages: over 227 KiB
                            continue
                        err = float((run("copies", x, filt, causal, cfg).double() - want).norm() / want.norm())
                        ms = bench(lambda: run("copies", x, filt, causal, cfg), rep=40)
                        row["sweep"].append({"config": cfg, "ms": ms, "rel_error": err})
                    best = sorted(row["sweep"], key=lambda r: r["ms"])[:3]
                    for r in best:
                        print(f"      copies {r['config']}: {r['ms']:.4f} ms (err {r['rel_error']:.1e})", flush=True)
                rows.append(row)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "long_conv_gather.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
