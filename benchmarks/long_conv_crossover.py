"""Long convolution on the GPU: the Toeplitz kernel against torch.fft (the reference), and the op that chooses.

    python3 benchmarks/long_conv_crossover.py [--batches 1,8,32] [--lengths 128,...] [--out DIR]

bf16, 768 channels (the `base` config's width), causal and two-sided filters. For each batch and length: the
Toeplitz kernel (padded to 16 inside, as the op runs it), torch.fft at the reference's FFT size (7-smooth >= 2L on
the GPU), and `mahia.kernels.ops.long_conv`, which calls one of them by `choose_algorithm`; the ratio the issue's
goal reads is torch.fft / op. Eager times (`triton.testing.do_bench`) include each launch's host cost; graph times
(`do_bench_cudagraph`) are the GPU work alone, what a CUDA-graph deployment pays. Every kernel output's rel.
error against float64 is reported. `mahia.kernels.triton.long_conv.choose_algorithm` is set from these numbers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
import triton.testing

from mahia.kernels import ops, reference
from mahia.kernels.triton import long_conv as kernel

# powers of two, the model's lengths (words + 5 tabular tokens) and the two-sided lengths between 2048 and 4096
LENGTHS = "128,133,256,512,517,1024,2048,2053,2304,2560,3072,4096,8192"


def three_ways(x: torch.Tensor, filt: torch.Tensor, causal: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """The kernel, torch.fft and the op that chooses between them, on the same inputs."""
    return {"toeplitz": lambda: kernel.long_conv(x, filt, causal), "fft": lambda: reference.long_conv(x, filt, causal),
            "op": lambda: ops.long_conv(x, filt, causal)}


def main() -> None:
    """Print one row per (batch, length, filter) and write long_conv_crossover.json to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8")
    parser.add_argument("--lengths", default=LENGTHS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; ms as eager / "
          "graph replay")
    print("batch      L  filter     toeplitz            torch.fft           op (choice)                fft/op graph"
          "   err")
    for batch in (int(b) for b in args.batches.split(",")):
        for length in (int(n) for n in args.lengths.split(",")):
            for causal in (True, False):
                x = torch.randn(batch, 768, length, device="cuda", dtype=torch.bfloat16)
                filt = torch.randn(768, length if causal else 2 * length - 1, device="cuda",
                                   dtype=torch.bfloat16) / length
                calls = three_ways(x, filt, causal)
                want = reference.long_conv(x.double(), filt.double(), causal)
                err = float((calls["toeplitz"]().double() - want).norm() / want.norm())
                times = {}
                for name, fn in calls.items():
                    fn()
                    torch.cuda.synchronize()
                    times[name] = (triton.testing.do_bench(fn, rep=50), triton.testing.do_bench_cudagraph(fn, rep=50))
                choice = kernel.choose_algorithm(length, causal, batch)
                rows.append({"batch": batch, "length": length, "causal": causal, "choice": choice,
                             **{f"{name}_ms": t for name, t in times.items()}, "rel_error": err})
                cells = "  ".join(f"{e:8.4f} / {g:7.4f}" for e, g in times.values())
                print(f"{batch:5d}  {length:5d}  {'causal' if causal else 'two-sided':9s}  {cells} ({choice:8s})  "
                      f"{times['fft'][1] / times['op'][1]:6.2f}x  {err:.1e}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "long_conv_crossover.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
