"""`mahia::ssd_scan`'s tile configs at the shapes the `base` model deploys: which `ssd_scan.CONFIG`.

    PYTHONPATH=$PWD python3 benchmarks/ssd_tiles.py [--shapes 1x139,8x523,32x2059] [--out DIR]

The committed CONFIG was chosen on an H100 at the `large` config's sizes (16 heads, B 8, L 4096; benchmarks/
kernels.py --sweep). `base` runs 12 heads of 64 channels, state 128, chunks of 256, at the bench's aligned buckets
(1 x 139, 8 x 523, 32 x 2059 tokens). bf16, `do_bench_cudagraph` (the GPU work alone, what backend "cuda" replays);
each variant changes the committed CONFIG in one place or two, and its output is compared with the committed one's.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

from mahia.kernels.triton import plan as plans
from mahia.kernels.triton import ssd_scan as kernel

HEADS, HEAD_DIM, STATE, CHUNK = 12, 64, 128, 256
VARIANTS = [{}, {"output": {"BLOCK_L": 128}}, {"output": {"BLOCK_L": 32}}, {"output": {"num_warps": 8}},
            {"output": {"BLOCK_L": 128, "num_warps": 8}}, {"output": {"num_stages": 3}},
            {"output": {"BLOCK_N": 128}}, {"output": {"BLOCK_N": 32}}, {"output": {"BLOCK_L": 32, "num_stages": 3}},
            {"states": {"BLOCK_N": 32}}, {"states": {"BLOCK_N": 128}}, {"states": {"BLOCK_Q": 128}},
            {"states": {"num_warps": 8, "BLOCK_N": 128}}, {"states": {"BLOCK_P": 32, "BLOCK_N": 32}},
            {"cb": {"BLOCK": 128}}, {"cb": {"BLOCK_N": 128}}]


def inputs(batch: int, length: int) -> tuple[torch.Tensor, ...]:
    """x, dt > 0, a < 0, b, c in the model's ranges, bf16 on the GPU."""
    x = torch.randn(batch, length, HEADS, HEAD_DIM, device="cuda").bfloat16()
    dt = F.softplus(torch.randn(batch, length, HEADS, device="cuda") - 3.0).bfloat16()
    a = -torch.exp(torch.linspace(0.0, math.log(16.0), HEADS, device="cuda"))
    b = (torch.randn(batch, length, STATE, device="cuda") * STATE ** -0.5).bfloat16()
    c = (torch.randn(batch, length, STATE, device="cuda") * STATE ** -0.5).bfloat16()
    return x, dt, a, b, c


def main() -> None:
    """One line per (shape, variant): ms and the distance from the committed config's output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1x139,8x523,32x2059")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    committed = copy.deepcopy(kernel.CONFIG)
    results = []
    for shape in args.shapes.split(","):
        batch, length = (int(v) for v in shape.split("x"))
        tensors = inputs(batch, length)
        want = None
        for change in VARIANTS:
            for part, values in change.items():
                kernel.CONFIG[part].update(values)
            plans._CACHE.clear()  # plans are cached by their arguments, which do not include CONFIG
            try:
                fn = lambda: kernel.ssd_scan(*tensors, CHUNK)  # noqa: E731
                out = fn().float()
                ms = float(triton.testing.do_bench_cudagraph(fn, rep=30))
                want = out if want is None else want
                diff = float((out - want).norm() / want.norm())
                results.append({"shape": shape, "change": change, "ms": ms, "rel_diff": diff})
                print(f"{shape:>8} {ms:8.4f} ms diff {diff:.1e}  {json.dumps(change)}", flush=True)
            except Exception as exc:  # a variant past the shared memory limit: say so, go on
                print(f"{shape:>8} {json.dumps(change)} FAILED: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
            for part in kernel.CONFIG:
                kernel.CONFIG[part].clear()
                kernel.CONFIG[part].update(committed[part])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ssd_tiles.json").write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                                             "results": results}, indent=1))


if __name__ == "__main__":
    main()
