"""FSDP2 gradients against the single-GPU trainer's: the MoE kernels and custom ops under sharding and autograd.

    python benchmarks/fsdp_grad_match.py --out single.safetensors                           # one GPU, no FSDP
    torchrun --nproc-per-node 2 benchmarks/fsdp_grad_match.py --out fsdp.safetensors       # FSDP2 on 2 GPUs
    python benchmarks/fsdp_grad_match.py --compare single.safetensors fsdp.safetensors

Both runs are mahia-train's train_step on the same seeded model and the same global batches (random word ids
with random right padding, so masked-token means matter), `--steps` steps in a row. After each step the
(clipped) gradient of every parameter is kept: on one GPU from the plain model (fp32 parameters under bf16
autocast, as `mahia-train --device cuda` runs), under torchrun gathered from the FSDP2 shards (bf16
parameters, fp32 reductions, the Triton MoE kernel). --compare passes when at every step the relative L2
error of the whole gradient and the relative loss difference are within bf16 tolerance (--tolerance).

MoE capacity is per rank (mahia.train.distributed), so by default the config's capacity_factor is raised to
num_experts / top_k, where no assignment can overflow: otherwise each rank drops other assignments than one
GPU does, a difference of semantics rather than of arithmetic (--capacity-factor keeps another value).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from mahia.model import CONFIGS, random_inputs
from mahia.train import TrainConfig
from mahia.train.trainer import _Run  # the trainer's own run: its start (sharding) and train_step

from common import relative_error


def record(args: argparse.Namespace) -> None:
    """Run the steps; rank 0 (or the one process) writes each step's loss and gradients."""
    named = CONFIGS[args.config]
    capacity = args.capacity_factor if args.capacity_factor is not None else named.num_experts / named.top_k
    CONFIGS[args.config] = named.replace(capacity_factor=capacity)  # this process only
    config = TrainConfig(model=args.config, batch_size=args.batch, max_text_tokens=args.seq, device=args.device,
                         data_path=args.data, train_rows=args.batch, eval_rows=64, lr=args.lr, warmup_steps=1,
                         baseline=False)
    run = _Run.start(config, Path("/tmp/fsdp_grad_match"), Console(stderr=True))
    generator = torch.Generator().manual_seed(1)
    tensors: dict[str, torch.Tensor] = {}
    for step in range(1, args.steps + 1):
        inputs = random_inputs(run.model_config, args.batch, args.seq, generator)
        labels = torch.randint(0, run.model_config.num_classes, (args.batch,), generator=generator)
        tensors[f"step{step}.loss"] = torch.tensor(run.train_step(inputs, labels, total_steps=100))
        for name, param in run.model.named_parameters():
            grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad  # all ranks gather
            tensors[f"step{step}.grad.{name}"] = grad.float().cpu().contiguous()
    if run.parallel is None or run.parallel.is_main:
        save_file(tensors, args.out)
        print(f"{args.out}: {args.steps} steps of {args.config}, "
              f"{run.parallel.world_size if run.parallel else 1} process(es)")
    if run.parallel is not None:
        run.parallel.close()


def compare(single_path: str, fsdp_path: str, tolerance: float) -> bool:
    """Print, per step, the loss difference and the gradient's relative L2 error (whole and worst tensor)."""
    single, fsdp = load_file(single_path), load_file(fsdp_path)
    if single.keys() != fsdp.keys():
        raise SystemExit(f"{single_path} and {fsdp_path} hold different tensors")
    steps = sorted({int(key.split(".")[0][4:]) for key in single})
    passed = True
    print("step  loss (1 GPU)  loss (FSDP)  rel. diff  grad rel. L2 (all)  worst tensor")
    for step in steps:
        names = sorted(k for k in single if k.startswith(f"step{step}.grad."))
        whole = relative_error(torch.cat([fsdp[k].flatten() for k in names]),
                               torch.cat([single[k].flatten() for k in names]))
        worst = max(names, key=lambda k: relative_error(fsdp[k], single[k]) if single[k].norm() > 0 else 0.0)
        a, b = float(single[f"step{step}.loss"]), float(fsdp[f"step{step}.loss"])
        loss_diff = abs(a - b) / abs(a)
        ok = whole <= tolerance and loss_diff <= tolerance
        passed &= ok
        print(f"{step:4d}  {a:12.6f}  {b:11.6f}  {loss_diff:9.2e}  {whole:18.2e}  "
              f"{relative_error(fsdp[worst], single[worst]):.2e} ({worst.split('.grad.')[1]}){'' if ok else '  FAIL'}")
    print(f"{'PASS' if passed else 'FAIL'}: tolerance {tolerance:g} on the whole gradient and the loss at every step")
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    parser.add_argument("--seq", type=int, default=96, help="longest text (tokens); rows are right-padded")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--capacity-factor", type=float, default=None,
                        help="MoE capacity in training (default: num_experts / top_k, nothing dropped)")
    parser.add_argument("--data", default=None, help="reviews parquet file (the trainer's start loads it)")
    parser.add_argument("--out", default=None, help="record: write the losses and gradients here")
    parser.add_argument("--compare", nargs=2, metavar=("SINGLE", "FSDP"), default=None)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to check the script (gloo, float32)")
    # bf16 keeps 8 significant bits (2^-8 = 3.9e-3 relative per rounding) and the gradient goes through many
    # roundings; a wrong reduction or loss share is off by a factor (an O(1) relative error).
    parser.add_argument("--tolerance", type=float, default=3e-2)
    args = parser.parse_args()
    if args.compare:
        sys.exit(0 if compare(*args.compare, args.tolerance) else 1)
    if args.out is None:
        parser.error("give --out (record) or --compare SINGLE FSDP")
    record(args)


if __name__ == "__main__":
    main()
