"""Which kernels a forward spends its GPU time in: the eager bf16 model with the Triton ops, by kernel name.

    PYTHONPATH=$PWD python3 benchmarks/forward_kernels.py [--config base] [--shapes 8x512,32x2048] [--top 25]
        [--deployed]

--deployed profiles what backend="cuda" runs with CudaOptions(compile=True) instead: the deployable bf16 module
(ShiftedShortConv) compiled with torch.compile(dynamic=False), the kernels its CUDA graph replays.

mahia-bench's component table says which branch costs; this says which kernels inside it (a depthwise
convolution, an FFT, a GEMM, an elementwise copy), the level at which a fix is chosen. Random weights (seed 0),
random full-length inputs, `torch.profiler` device time averaged over 3 forwards after a warm-up.
"""

from __future__ import annotations

import argparse

import torch

from mahia.model import build_model, get_config
from mahia.model.inputs import random_inputs


def kernel_table(model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                 calls: int = 3) -> list[tuple[str, int, float]]:
    """(kernel name, launches per forward, device ms per forward) of every kernel, the costliest first."""
    with torch.inference_mode():
        model(**inputs)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                model(**inputs)
            torch.cuda.synchronize()
    rows = [(e.key, e.count // calls, e.device_time_total / 1e3 / calls) for e in prof.key_averages()
            if e.device_time_total > 0]
    return sorted(rows, key=lambda r: -r[2])


def main() -> None:
    """Print the top kernels per shape."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--shapes", default="8x512,32x2048")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--deployed", action="store_true", help="the compiled deployable module (backend cuda)")
    args = parser.parse_args()
    device = torch.device("cuda")
    config = get_config(args.config)
    if args.deployed:
        from mahia.runtime.backends.cuda import deployable_module

        model = torch.compile(deployable_module(build_model(config, 0), "bf16", device)[0], dynamic=False)
    else:
        model = build_model(config, 0).to(device=device, dtype=torch.bfloat16).eval()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, config {config.name}, bf16, Triton ops"
          f"{', deployed and compiled' if args.deployed else ', eager'}")
    for shape in args.shapes.split(","):
        batch, seq = (int(v) for v in shape.split("x"))
        inputs = {k: v.to(device) for k, v in random_inputs(config, batch, seq, torch.Generator().manual_seed(0),
                                                            full=True).items()}
        rows = kernel_table(model, inputs)
        total = sum(r[2] for r in rows)
        print(f"\n{shape}: {total:.3f} ms of kernel time per forward, {sum(r[1] for r in rows)} launches")
        print(f"{'ms':>8} {'%':>5} {'calls':>5}  kernel")
        for name, count, ms in rows[:args.top]:
            print(f"{ms:8.3f} {100 * ms / total:5.1f} {count:5d}  {name[:110]}")


if __name__ == "__main__":
    main()
