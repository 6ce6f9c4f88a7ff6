"""Long convolution on the GPU: the Toeplitz kernel against torch.fft (the reference), eager and in CUDA-graph replay.

    python3 benchmarks/long_conv_crossover.py [--out DIR]

bf16, batch 8, 768 channels (the `base` config's width), causal and two-sided filters, L = 128 ... 8192.
Eager times (`triton.testing.do_bench`) include each launch's host cost (the launch plan is cached after the
first call); graph times (`do_bench_cudagraph`) are the GPU work alone, what a CUDA-graph deployment pays.
`mahia.kernels.triton.long_conv.choose_algorithm` is set from these numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton.testing

from mahia.kernels import reference
from mahia.kernels.triton import long_conv as kernel

LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)


def main() -> None:
    """Print one row per (length, filter) and write results.json to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("    L  filter     toeplitz eager / graph ms   torch.fft eager / graph ms   fft/toeplitz eager / graph  err")
    for length in LENGTHS:
        for causal in (True, False):
            x = torch.randn(8, 768, length, device="cuda", dtype=torch.bfloat16)
            filt = torch.randn(768, length if causal else 2 * length - 1, device="cuda", dtype=torch.bfloat16) / length
            ours = lambda: kernel.long_conv(x, filt, causal)  # noqa: E731
            fft = lambda: reference.long_conv(x, filt, causal)  # noqa: E731
            want = reference.long_conv(x.double(), filt.double(), causal)
            err = float((ours().double() - want).norm() / want.norm())
            times = {}
            for name, fn in (("toeplitz", ours), ("fft", fft)):
                fn()
                torch.cuda.synchronize()
                times[name] = (triton.testing.do_bench(fn, rep=100), triton.testing.do_bench_cudagraph(fn, rep=100))
            row = {"length": length, "causal": causal, "toeplitz_ms": times["toeplitz"], "fft_ms": times["fft"],
                   "rel_error": err}
            rows.append(row)
            (te, tg), (fe, fg) = times["toeplitz"], times["fft"]
            print(f"{length:5d}  {'causal' if causal else 'two-sided':9s}  {te:10.4f} / {tg:8.4f}        "
                  f"{fe:10.4f} / {fg:8.4f}        {fe / te:6.2f}x / {fg / tg:6.2f}x     {err:.1e}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "long_conv_crossover.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
