"""Long convolution at the lengths the model runs: the Toeplitz kernel's output blocks per program (NT), and
torch.fft at size 2L against a 7-smooth size.

    PYTHONPATH=$PWD python3 benchmarks/long_conv_tiles.py [--out DIR]

The model's sequence is the text plus the tabular tokens (5 for the reviews data), so `base` at 512 and 2048 words
convolves L = 517 and 2053, not the powers of two that benchmarks/long_conv_crossover.py times. bf16, 768 channels,
`do_bench_cudagraph` (the GPU work alone, what backend="cuda" pays); every config is checked against float64.
`mahia.kernels.triton.long_conv.gather_config` (the one-launch tiles) is set from these numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.testing

from mahia.kernels import reference
from mahia.kernels.reference.long_conv import fft_conv, fft_length
from mahia.kernels.triton import long_conv as kernel

LENGTHS = (133, 512, 517, 1029, 2048, 2053)
BATCHES = (1, 8, 32)
NTS = (1, 2, 4, 8, 16)


def main() -> None:
    """One line per (length, filter, batch): each NT's time, the current choice, and torch.fft's two sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("    L  filter     B  " + "  ".join(f"NT={nt:<2d} ms" for nt in NTS) + "   chosen  fft 2L / smooth ms  "
          "worst err")
    rows = []
    for length in LENGTHS:
        for causal in (True, False):
            for batch in BATCHES:
                x = torch.randn(batch, 768, length, device="cuda", dtype=torch.bfloat16)
                filt = torch.randn(768, length if causal else 2 * length - 1, device="cuda",
                                   dtype=torch.bfloat16) / length
                want = reference.long_conv(x.double(), filt.double(), causal)
                times, worst = {}, 0.0
                for nt in NTS:
                    cfg = kernel.tile_config(batch, length, nt)
                    fn = lambda: kernel.long_conv(x, filt, causal, cfg)  # noqa: E731
                    worst = max(worst, float((fn().double() - want).norm() / want.norm()))
                    times[nt] = triton.testing.do_bench_cudagraph(fn, rep=40)
                fft_2l = triton.testing.do_bench_cudagraph(lambda: fft_conv(x, filt, causal, 2 * length), rep=40)
                fft_smooth = triton.testing.do_bench_cudagraph(
                    lambda: fft_conv(x, filt, causal, fft_length(length)), rep=40)
                chosen = kernel.gather_config(batch, length)["NT"]
                rows.append({"length": length, "causal": causal, "batch": batch, "nt_ms": times,
                             "chosen_nt": chosen, "fft_2l_ms": fft_2l, "fft_smooth_ms": fft_smooth,
                             "fft_size": fft_length(length), "worst_rel_error": worst})
                print(f"{length:5d}  {'causal' if causal else 'two-sided':9s} {batch:2d}  "
                      + "  ".join(f"{times[nt]:8.4f}" for nt in NTS)
                      + f"   NT={chosen:<2d}  {fft_2l:8.4f} / {fft_smooth:8.4f}  {worst:.1e}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "long_conv_tiles.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
