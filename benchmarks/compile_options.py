"""Which Inductor options and module swaps backend "cuda" runs the deployable module with: its forward time in
CUDA-graph replay and its compile time, per variant, at the bench's aligned buckets.

    PYTHONPATH=$PWD python3 benchmarks/compile_options.py [--config base] [--shapes 8x523,32x2059]
        [--options default,coordinate_descent,max_autotune_pointwise,nd_tiling,uncompiled]

The deployable bf16 module (random weights, seed 0; `mahia.runtime.backends.cuda.deployable_module`) compiled with
torch.compile(dynamic=False, options=...) after `torch._dynamo.reset()`, or uncompiled; each shape's first call is
its compile time; then `do_bench_cudagraph` (what the deployment replays). Outputs are compared with the first
variant's.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import triton.testing

from mahia.model import build_model, get_config
from mahia.model.inputs import random_inputs
from mahia.runtime.backends.cuda import add_filter_lengths, deployable_module

# name: Inductor options (None: the module runs uncompiled)
VARIANTS = {
    "default": {},
    "coordinate_descent": {"coordinate_descent_tuning": True},
    "max_autotune_pointwise": {"max_autotune_pointwise": True, "coordinate_descent_tuning": True},
    "nd_tiling": {"triton.prefer_nd_tiling": True},
    "uncompiled": None,
}


def main() -> None:
    """One line per (option set, shape): compile seconds, replay ms, distance from the default's logits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--shapes", default="8x523,32x2059")
    parser.add_argument("--options", default="default,coordinate_descent")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = get_config(args.config)
    module = deployable_module(build_model(config, 0), "bf16", "cuda")[0]
    feeds = {}
    for shape in args.shapes.split(","):
        batch, seq = (int(v) for v in shape.split("x"))
        add_filter_lengths(module, [seq + config.num_tabular_tokens])  # as DeployedModel does for its buckets
        feeds[shape] = {k: v.cuda() for k, v in random_inputs(config, batch, seq, torch.Generator().manual_seed(0),
                                                               full=True).items()}
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, config {config.name}, bf16", flush=True)
    results, reference = [], {}
    for name in args.options.split(","):
        torch._dynamo.reset()
        variant, options = copy.deepcopy(module), VARIANTS[name]
        compiled = variant if options is None else torch.compile(variant, dynamic=False, options=options)
        for shape, inputs in feeds.items():
            with torch.inference_mode():
                start = time.perf_counter()
                logits = compiled(**inputs).float()
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - start
                ms = float(triton.testing.do_bench_cudagraph(lambda: compiled(**inputs), rep=100))
            reference.setdefault(shape, logits)
            diff = float((logits - reference[shape]).norm() / reference[shape].norm())
            results.append({"options": name, "shape": shape, "compile_s": compile_s, "ms": ms, "rel_diff": diff})
            print(f"{name:>24} {shape:>8} compile {compile_s:6.1f} s  replay {ms:8.3f} ms  diff {diff:.1e}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compile_options.json").write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                                                   "results": results}, indent=1))


if __name__ == "__main__":
    main()
