"""The deployed module under torch.compile's modes: which mode backend "cuda" should compile with.

    PYTHONPATH=$PWD python3 benchmarks/compile_modes.py [--config base] [--shape 8x523]
        [--modes default,max-autotune-no-cudagraphs]

For each mode, in one process: the deployable bf16 module of `base` (random weights, seed 0; the bucket's filter taps
precomputed, as DeployedModel does) is compiled with torch.compile(dynamic=False, mode=...), warmed up twice on a
side stream, captured in one CUDA graph and replayed: compile seconds (with the warm-up) and the replay's median of
300 (CUDA events, each replay synchronised). The last line gives each mode's logits against the first mode's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mahia import kernels
from mahia.model import build_model, get_config
from mahia.model.inputs import random_inputs
from mahia.runtime.backends.cuda import add_filter_lengths, deployable_module

from common import relative_error

REPLAYS = 300


def replay_ms(graph: torch.cuda.CUDAGraph) -> list[float]:
    """Milliseconds of each of REPLAYS replays after 20 unmeasured ones."""
    for _ in range(20):
        graph.replay()
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def main() -> None:
    """Print each mode's compile time and replay latency."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--shape", default="8x523", help="batch x text tokens (a bucket of backend cuda)")
    parser.add_argument("--modes", default="default,max-autotune-no-cudagraphs")
    args = parser.parse_args()
    batch, seq = (int(v) for v in args.shape.split("x"))
    config = get_config(args.config)
    module = deployable_module(build_model(config, 0).eval(), "bf16", torch.device("cuda"))[0]
    add_filter_lengths(module, [seq + config.num_tabular_tokens])
    inputs = {name: value.cuda() for name, value in
              random_inputs(config, batch, seq, torch.Generator().manual_seed(0), full=True).items()}
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, config {config.name}, bf16, {args.shape}")
    logits = {}
    for mode in args.modes.split(","):
        torch._dynamo.reset()
        start = time.perf_counter()
        call = torch.compile(module, dynamic=False, mode=None if mode == "default" else mode)
        with torch.inference_mode(), kernels.use_reference_ops(False):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    call(**inputs)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = call(**inputs)
            times = replay_ms(graph)
        logits[mode] = out.float().clone()
        print(f"{mode}: compile and warm-up {compile_s:.1f} s, replay p50 {statistics.median(times):.4f} ms, "
              f"min {min(times):.4f} ms", flush=True)
    first, *rest = logits
    for mode in rest:
        print(f"{mode} against {first}: rel L2 {relative_error(logits[mode], logits[first]):.2e}")


if __name__ == "__main__":
    main()
