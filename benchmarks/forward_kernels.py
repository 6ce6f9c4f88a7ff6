"""Which kernels a forward spends its GPU time in: the eager bf16 model with the Triton ops, by kernel name.

    PYTHONPATH=$PWD python3 benchmarks/forward_kernels.py [--config base] [--shapes 8x512,32x2048] [--top 25]
        [--deployed [--precision fp8 --data REVIEWS.parquet]] [--ops]

--deployed profiles what backend="cuda" runs with CudaOptions(compile=True) instead: the deployable bf16 module
(FusedMetaAttention, Float32Router, ...) compiled with torch.compile(dynamic=False), the kernels its CUDA graph
replays.
--precision fp8 profiles the fp8 deployment (FP8 GEMMs, FP8 experts) instead, its activation scales calibrated on
32 real reviews as mahia-bench calibrates them.
--ops adds the aten operators that launched GPU work, by input shapes (a compiled module's GEMMs and copies stay
aten calls; its fused Triton kernels do not appear there): which GEMM a kernel name belongs to.

mahia-bench's component table says which branch costs; this says which kernels inside it (a depthwise
convolution, an FFT, a GEMM, an elementwise copy), the level at which a fix is chosen. Random weights (seed 0),
random full-length inputs, `torch.profiler` device time averaged over 3 forwards after a warm-up.
"""

from __future__ import annotations

import argparse

import torch

from mahia.model import build_model, get_config
from mahia.model.inputs import random_inputs


def profiled(model: torch.nn.Module, inputs: dict[str, torch.Tensor], calls: int) -> torch.profiler.profile:
    """A profile (CPU ops with input shapes, CUDA kernels) of `calls` forwards after a warm-up."""
    with torch.inference_mode():
        model(**inputs)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA], record_shapes=True) as prof:
            for _ in range(calls):
                model(**inputs)
            torch.cuda.synchronize()
    return prof


def kernel_table(prof: torch.profiler.profile, calls: int) -> list[tuple[str, int, float]]:
    """(kernel name, launches per forward, device ms per forward) of every kernel, the costliest first.

    GPU-side user annotations are ranges, not kernels: Inductor's "## Call CompiledFxGraph ##" spans the compiled
    module's whole forward (28.4 of the 32.9 ms this table summed at 8 x 523 before they were left out)."""
    rows = [(e.key, e.count // calls, e.self_device_time_total / 1e3 / calls) for e in prof.key_averages()
            if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA
            and not e.is_user_annotation]
    return sorted(rows, key=lambda r: -r[2])


def op_table(prof: torch.profiler.profile, calls: int) -> list[tuple[str, str, int, float]]:
    """(aten op, input shapes, calls per forward, device ms per forward) of the aten ops that ran GPU work."""
    rows = [(e.key, str(e.input_shapes), e.count // calls, e.device_time_total / 1e3 / calls)
            for e in prof.key_averages(group_by_input_shape=True)
            if e.key.startswith("aten::") and e.device_time_total > 0
            and e.device_type == torch.autograd.DeviceType.CPU]
    return sorted(rows, key=lambda r: -r[3])


def main() -> None:
    """Print the top kernels per shape."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--shapes", default="8x512,32x2048")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--deployed", action="store_true", help="the compiled deployable module (backend cuda)")
    parser.add_argument("--ops", action="store_true", help="also the aten ops that ran GPU work, by input shapes")
    parser.add_argument("--precision", choices=("bf16", "fp8"), default="bf16", help="the deployment's (--deployed)")
    parser.add_argument("--data", default=None, help="reviews parquet file, for the fp8 calibration")
    args = parser.parse_args()
    device = torch.device("cuda")
    config = get_config(args.config)
    if args.deployed:
        from mahia.runtime.backends.cuda import add_filter_lengths, deployable_module

        model = build_model(config, 0).eval()
        scales = None
        if args.precision == "fp8":
            from mahia.bench.cli import calibrated_scales

            scales = calibrated_scales(model, 32, args.data)
        module = deployable_module(model, args.precision, device, scales)[0]
        # as DeployedModel does for its buckets: the filter taps of each shape's length, precomputed
        add_filter_lengths(module, [int(shape.split("x")[1]) + config.num_tabular_tokens
                                    for shape in args.shapes.split(",")])
        model = torch.compile(module, dynamic=False)
    else:
        model = build_model(config, 0).to(device=device, dtype=torch.bfloat16).eval()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, config {config.name}, "
          f"{args.precision if args.deployed else 'bf16'}, Triton ops"
          f"{', deployed and compiled' if args.deployed else ', eager'}")
    for shape in args.shapes.split(","):
        batch, seq = (int(v) for v in shape.split("x"))
        inputs = {k: v.to(device) for k, v in random_inputs(config, batch, seq, torch.Generator().manual_seed(0),
                                                            full=True).items()}
        calls = 3
        prof = profiled(model, inputs, calls)
        rows = kernel_table(prof, calls)
        total = sum(r[2] for r in rows)
        print(f"\n{shape}: {total:.3f} ms of kernel time per forward, {sum(r[1] for r in rows)} launches")
        print(f"{'ms':>8} {'%':>5} {'calls':>5}  kernel")
        for name, count, ms in rows[:args.top]:
            print(f"{ms:8.3f} {100 * ms / total:5.1f} {count:5d}  {name[:110]}")
        if args.ops:
            print(f"\n{shape}: aten ops with GPU work, by input shapes")
            print(f"{'ms':>8} {'calls':>5}  op  shapes")
            for name, shapes, count, ms in op_table(prof, calls)[:args.top]:
                print(f"{ms:8.3f} {count:5d}  {name}  {shapes[:140]}")


if __name__ == "__main__":
    main()
