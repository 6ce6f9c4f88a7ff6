"""The Toeplitz long-conv kernel's two ways to read its filter tiles, over tile configs, at the model's lengths.

    PYTHONPATH=$PWD python3 benchmarks/long_conv_gather.py [--lengths 2064,528] [--batches 32,8,1] [--out DIR]

Each K x K Toeplitz tile H[i, j] = filt[c + i - j] is read either with one 2-byte load per element (no row of the
tile starts at an aligned address: "gather") or as 16-byte vectors from eight copies of the reversed filter, copy
r shifted by r taps, built by a first launch (SHIFTED_COPIES: "copies", the build timed with it). For each length,
filter and batch: `choose_config`'s pick, the three fastest configs of each way (K = 64; output blocks and batch
rows per program, 4 or 8 warps, 2 or 4 stages) and torch.fft (the reference). bf16, 768 channels,
`do_bench_cudagraph` (the GPU work alone, what backend="cuda" pays); every output checked against float64.
`mahia.kernels.triton.long_conv.choose_config` is set from these numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.testing

from mahia.kernels import reference
from mahia.kernels.triton import long_conv as kernel


def sweep_configs(batch: int, length: int, shifted_copies: bool) -> list[dict[str, int]]:
    """(output blocks, batch rows) per program by batch, each with 4 or 8 warps and 2 or 4 stages."""
    shapes = [(2, 32), (4, 16), (4, 32), (8, 16), (8, 32), (16, 8)] if batch >= 8 else [(8, 1), (16, 1), (32, 1)]
    configs = []
    for nt, rows in shapes:
        cfg = kernel.tile_config(batch, length, nt, shifted_copies)
        cfg["BLOCK_N"] = max(16, nt * min(rows, triton.next_power_of_2(batch)))
        configs += [{**cfg, "num_warps": warps, "num_stages": stages} for warps in (4, 8) for stages in (2, 4)]
    return list({tuple(sorted(c.items())): c for c in configs}.values())  # small batches repeat (NT, BLOCK_N)


def main() -> None:
    """One block per (length, filter, batch): the chosen config's time, each way's best three, torch.fft."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2064,528")
    parser.add_argument("--batches", default="32,8,1")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    rows = []
    for length in (int(v) for v in args.lengths.split(",")):
        for causal in (True, False):
            for batch in (int(v) for v in args.batches.split(",")):
                x = torch.randn(batch, 768, length, device="cuda", dtype=torch.bfloat16)
                filt = torch.randn(768, length if causal else 2 * length - 1, device="cuda",
                                   dtype=torch.bfloat16) / length
                want = reference.long_conv(x.double(), filt.double(), causal)

                def timed(cfg: dict[str, int]) -> dict[str, object]:
                    fn = lambda: kernel.long_conv(x, filt, causal, cfg)  # noqa: E731
                    err = float((fn().double() - want).norm() / want.norm())
                    return {"config": cfg, "ms": triton.testing.do_bench_cudagraph(fn, rep=40), "rel_error": err}

                chosen = timed(kernel.choose_config(batch, length))
                fft_ms = triton.testing.do_bench_cudagraph(lambda: reference.long_conv(x, filt, causal), rep=40)
                row = {"length": length, "causal": causal, "batch": batch, "chosen": chosen, "fft_ms": fft_ms}
                print(f"{length:5d} {'causal' if causal else 'two-sided':9s} batch {batch:2d}: chosen "
                      f"{chosen['ms']:.4f} ms {chosen['config']}, torch.fft {fft_ms:.4f} ms "
                      f"(err {chosen['rel_error']:.1e})", flush=True)
                for way, copies in (("gather", False), ("copies", True)):
                    results = []
                    for cfg in sweep_configs(batch, length, copies):
                        try:
                            results.append(timed(cfg))
                        except triton.runtime.errors.OutOfResources:
                            continue
                    row[way] = results
                    for r in sorted(results, key=lambda r: r["ms"])[:3]:
                        print(f"    {way:6s} {r['ms']:.4f} ms {r['config']} (err {r['rel_error']:.1e})", flush=True)
                rows.append(row)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "long_conv_gather.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
